"""A web worker's side of the ingest writer (`[server] ingest_writer = true`).

`IngestLink.ingest(inbound)` sends the checked delivery to the writer process and returns
once the writer has committed it, or raises: `BadRequestError` for an envelope the writer
found malformed (400), `StoreUnavailableError` when it could not store it (503: Attesto
delivers again). One Unix connection, made on first use and again after
it breaks; frames queued in one loop iteration go out in one write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from relay.core.errors import BadRequestError, StoreUnavailableError
from relay.intake import wire
from relay.intake.inbox import Inbound, Outcome

log = logging.getLogger("relay.ingest_link")


def _unavailable(detail: str) -> StoreUnavailableError:
    log.error("webhook not stored: %s", detail)
    return StoreUnavailableError("the delivery could not be stored; retry later",
                                 retry_after_s=30)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: IngestLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.frames = wire.Frames()
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            answers = [wire.read_answer(f) for f in self.frames.feed(data)]
        except wire.WireError as exc:
            log.error("ingest writer sent a bad frame: %s", exc)
            if self.transport is not None:
                self.transport.close()
            return
        self.link.answered(answers)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.link.lost(self, exc)

    def send(self, frame: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(frame)

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None:
            self.transport.write(b"".join(out))


class IngestLink:
    """The connection to the ingest writer, and the deliveries waiting for its answer."""

    def __init__(self, socket_path: str, on_commit: Callable[[], None]) -> None:
        self.socket_path = socket_path
        self._on_commit = on_commit  # the outbox looks for the new events at once
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[tuple[asyncio.Transport, _Protocol]] | None = None
        self._pending: dict[int, asyncio.Future[wire.Answer]] = {}
        self._next_id = 0

    async def ingest(self, inbound: Inbound) -> Outcome:
        protocol = await self._connected()
        self._next_id += 1
        rid = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        protocol.send(wire.request(rid, inbound))
        answer = await future
        if answer.status == wire.REJECTED:
            error = json.loads(answer.error)
            raise BadRequestError(error["message"], code=error["code"],
                                  details=error.get("details"))
        if answer.status == wire.FAILED:
            raise _unavailable(f"event_id={inbound.event_id}: the ingest writer: "
                               f"{answer.error}")
        return Outcome(duplicate=answer.status == wire.DUPLICATE,
                       stale=answer.status == wire.STALE)

    async def _connected(self) -> _Protocol:
        if self._protocol is not None:
            return self._protocol
        connecting = self._connecting
        if connecting is None:  # one connection, however many deliveries race for it
            loop = asyncio.get_running_loop()
            connecting = self._connecting = asyncio.ensure_future(
                loop.create_unix_connection(lambda: _Protocol(self), self.socket_path))
        try:
            _, protocol = await asyncio.shield(connecting)
        except OSError as exc:
            self._connecting = None
            raise _unavailable(f"the ingest writer cannot be reached: {exc}") from None
        self._protocol = protocol
        return protocol

    def answered(self, answers: list[wire.Answer]) -> None:
        committed = False
        for answer in answers:
            future = self._pending.pop(answer.request_id, None)
            if future is not None and not future.done():
                future.set_result(answer)
                committed = committed or answer.status in (wire.ACCEPTED, wire.STALE)
        if committed:
            self._on_commit()

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if self._protocol is protocol or self._protocol is None:
            self._protocol = None
            self._connecting = None
        pending, self._pending = self._pending, {}
        if pending:
            log.error("lost the ingest writer with %d deliveries waiting: %s", len(pending),
                      exc or "connection closed")
        for future in pending.values():
            if not future.done():
                future.set_exception(StoreUnavailableError(
                    "the delivery could not be stored; retry later", retry_after_s=30))

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
