"""The frames between web workers and the ingest writer, and the workers' side of the link."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from relay.core.errors import BadRequestError, StoreUnavailableError
from relay.intake import wire
from relay.intake.inbox import Inbound
from relay.intake.link import IngestLink
from tests.conftest import RelayFactory
from tests.support.webhooks import PATH, counts

INBOUND = Inbound("evt_ü1", "subscription.renewed", 1_800_000_000_123, 1_800_000_000,
                  '{"User-Agent":"Attesto"}', b'{"eventId":"evt_\xc3\xbc1"}' + bytes(range(256)))


def test_request_and_answer_round_trip_whatever_the_reads_cut() -> None:
    stream = (wire.request(7, INBOUND) + wire.answer(wire.Answer(7, wire.STALE))
              + wire.request(2**64 - 1, INBOUND)
              + wire.answer(wire.Answer(9, wire.FAILED, "disk full ✗")))
    rng = random.Random(3)
    for _ in range(50):
        frames, feed, at = [], wire.Frames(), 0
        while at < len(stream):
            step = rng.randint(1, 40)
            frames += feed.feed(stream[at:at + step])
            at += step
        assert len(frames) == 4
        assert wire.read_request(frames[0]) == (7, INBOUND)
        assert wire.read_answer(frames[1]) == wire.Answer(7, wire.STALE)
        assert wire.read_request(frames[2]) == (2**64 - 1, INBOUND)
        assert wire.read_answer(frames[3]) == wire.Answer(9, wire.FAILED, "disk full ✗")


@pytest.mark.parametrize("frame", [b"", b"\x00" * 5, wire.request(1, INBOUND)[4:-1],
                                   wire.request(1, INBOUND)[4:] + b"x"])
def test_a_request_that_does_not_add_up_is_refused(frame: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.read_request(frame)


def test_bad_answers_and_huge_frames_are_refused() -> None:
    with pytest.raises(wire.WireError):
        wire.read_answer(wire.answer(wire.Answer(1, wire.ACCEPTED))[4:] + b"x")
    with pytest.raises(wire.WireError):
        wire.read_answer(b"\x00" * 8 + b"\x09" + b"\x00\x00")  # status 9
    with pytest.raises(wire.WireError):
        wire.Frames().feed((wire.MAX_FRAME + 1).to_bytes(4, "big"))


class _FakeWriter:
    """A writer that answers each request with `reply(request_id)` (bytes), or hangs up
    when that is None."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.server: asyncio.AbstractServer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, path: Path) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = wire.Frames()
        try:
            while data := await reader.read(65536):
                for frame in frames.feed(data):
                    rid, _ = wire.read_request(frame)
                    out = self.reply(rid)
                    if out is None:
                        return
                    writer.write(out)
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _fake_writer(path: Path, reply: Any) -> _FakeWriter:
    fake = _FakeWriter(reply)
    await fake.start(path)
    return fake


async def test_link_answers_and_wakes_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    statuses = {1: wire.ACCEPTED, 2: wire.DUPLICATE, 3: wire.STALE}
    server = await _fake_writer(path, lambda rid: wire.answer(wire.Answer(rid, statuses[rid])))
    woken = []
    link = IngestLink(str(path), lambda: woken.append(1))
    try:
        outcomes = await asyncio.gather(*(link.ingest(INBOUND) for _ in range(3)))
    finally:
        await link.close()
        await server.close()
    assert [(o.duplicate, o.stale) for o in outcomes] == [(False, False), (True, False),
                                                          (False, True)]
    assert woken  # rows were committed for it: the outbox looks at once


async def test_link_turns_a_rejection_into_400(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    error = {"code": "invalid_envelope", "message": '`source` must be "apple" or "google"',
             "details": {"field": "source"}}
    server = await _fake_writer(path, lambda rid: wire.answer(wire.Answer(
        rid, wire.REJECTED, json.dumps(error))))
    link = IngestLink(str(path), lambda: None)
    try:
        with pytest.raises(BadRequestError) as err:
            await link.ingest(INBOUND)
    finally:
        await link.close()
        await server.close()
    assert err.value.status == 400
    assert (err.value.code, err.value.message, err.value.details) == (
        error["code"], error["message"], error["details"])


@pytest.mark.parametrize("reply", [
    lambda rid: wire.answer(wire.Answer(rid, wire.FAILED, "disk I/O error")),
    lambda rid: None,  # the writer died with the delivery in flight
])
async def test_link_failures_are_store_unavailable(tmp_path: Path, reply: Any) -> None:
    path = tmp_path / "w.sock"
    server = await _fake_writer(path, reply)
    link = IngestLink(str(path), lambda: None)
    try:
        with pytest.raises(StoreUnavailableError):
            await link.ingest(INBOUND)
    finally:
        await link.close()
        await server.close()


async def test_webhook_answers_503_and_stores_nothing_when_the_writer_is_away(
        tmp_path: Path, relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.attesto.simulator import AttestoSimulator

    monkeypatch.setenv(wire.SOCKET_ENV, str(tmp_path / "nobody-listens.sock"))
    sim = AttestoSimulator(webhook_secret="whsec-writer-test-0123456789")
    client = await relay_factory(webhook_secrets=("whsec-writer-test-0123456789",))
    body = sim.apple_webhook("SUBSCRIBED", sim.add_apple(
        original_transaction_id="o1", transaction_id="t1", product_id="premium",
        expires_ms=1_900_000_000_000, purchase_ms=1_800_000_000_000))
    resp = await client.post(PATH, data=body, headers=sim.headers_for(body))
    assert resp.status == 503 and resp.headers["Retry-After"] == "30"
    assert (await resp.json())["error"]["code"] == "store_unavailable"
    assert (await counts(client))["inbox"] == 0
