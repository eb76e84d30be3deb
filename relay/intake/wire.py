"""The frames between the web workers and the ingest writer (`[server] ingest_writer`).

A request carries one authenticated delivery as the inbox stores it; an answer says what
its commit did. Each frame is a 4-byte length and a fixed header, then the variable
fields as raw bytes: no pickle, nothing but these two shapes can be read. `Frames`
splits a byte stream into whole frames, however the reads cut it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from relay.core.frozen import slot_init
from relay.intake.inbox import Inbound

SOCKET_ENV = "RELAY_INGEST_SOCKET"  # the writer's Unix socket, set by the supervisor
_LENGTH = struct.Struct("!I")
# request id, received_ms, signature_t, then the lengths of event_id, event_type, headers, body
_REQUEST = struct.Struct("!QqqHHII")
# request id, status, then the length of the error message
_ANSWER = struct.Struct("!QBH")
MAX_FRAME = 64 << 20

# REJECTED: the envelope is malformed (the error is the 400's JSON: code, message, details)
ACCEPTED, DUPLICATE, STALE, FAILED, REJECTED = 0, 1, 2, 3, 4


@slot_init
@dataclass(frozen=True, slots=True)
class Answer:
    request_id: int
    status: int  # ACCEPTED, DUPLICATE, STALE, FAILED or REJECTED
    error: str = ""  # FAILED: why, for the log; REJECTED: the 400 for the caller, as JSON


class WireError(Exception):
    """A frame that is not one of ours: the connection is dropped."""


def request(request_id: int, i: Inbound) -> bytes:
    event_id, event_type, headers = (s.encode() for s in (i.event_id, i.event_type, i.headers))
    head = _REQUEST.pack(request_id, i.received_ms, i.signature_t, len(event_id),
                         len(event_type), len(headers), len(i.body))
    size = len(head) + len(event_id) + len(event_type) + len(headers) + len(i.body)
    return b"".join((_LENGTH.pack(size), head, event_id, event_type, headers, i.body))


def read_request(frame: bytes) -> tuple[int, Inbound]:
    try:
        rid, received_ms, t, n_id, n_type, n_headers, n_body = _REQUEST.unpack_from(frame)
    except struct.error as exc:
        raise WireError(f"short request frame: {exc}") from None
    at = _REQUEST.size
    if at + n_id + n_type + n_headers + n_body != len(frame):
        raise WireError("request frame lengths do not add up")
    fields = []
    for n in (n_id, n_type, n_headers):
        fields.append(frame[at:at + n].decode())
        at += n
    return rid, Inbound(fields[0], fields[1], received_ms, t, fields[2], frame[at:])


def answer(a: Answer) -> bytes:
    error = a.error.encode()[:60000]
    return _LENGTH.pack(_ANSWER.size + len(error)) + _ANSWER.pack(
        a.request_id, a.status, len(error)) + error


def read_answer(frame: bytes) -> Answer:
    try:
        rid, status, n_error = _ANSWER.unpack_from(frame)
    except struct.error as exc:
        raise WireError(f"short answer frame: {exc}") from None
    if _ANSWER.size + n_error != len(frame) or status > REJECTED:
        raise WireError("malformed answer frame")
    return Answer(rid, status, frame[_ANSWER.size:].decode("utf-8", "replace"))


class Frames:
    """Feed bytes as they arrive; get back every frame they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        at = 0
        while len(buf) - at >= _LENGTH.size:
            (n,) = _LENGTH.unpack_from(buf, at)
            if n > MAX_FRAME:
                raise WireError(f"frame of {n} bytes")
            if len(buf) - at - _LENGTH.size < n:
                break
            frames.append(bytes(buf[at + _LENGTH.size:at + _LENGTH.size + n]))
            at += _LENGTH.size + n
        del buf[:at]
        return frames
