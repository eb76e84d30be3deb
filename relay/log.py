"""Logging set-up: plain (journald-aware) or JSON lines, written off the event loop.

Every record is one line: the plain formatter escapes control characters in the message
(`escape_controls`), so a caller-supplied value (a path, a user id, a header) can never
start a line of its own, nor set a journald priority with a leading `<N>`; a traceback
follows on lines indented by two spaces. JSON lines escape them by construction.

Logger names appear in every line, so they are fixed names (`relay.outbox`,
`relay.repoll`, ...) that predate the package layout, not module paths.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Set by a handler whose 2xx is its own record (the webhook receiver: the inbox row is the
# audit trail): its access line is at DEBUG. Errors and rejections still log at INFO.
ROUTINE_KEY = web.RequestKey("access_routine", bool)
BATCH = 64  # records per write() and flush: bounds how long one batch holds the GIL
LINGER_S = 0.02  # after a write, let records gather: fewer wake-ups, each one a GIL handoff
# Worker processes share one stderr pipe (journald's stream): a write() of at most
# PIPE_BUF bytes reaches it whole, a longer one may interleave with another worker's.
WRITE_MAX_BYTES = 4096
_IMMUTABLE = (str, int, float, bool, type(None))
_writer: LogWriter | None = None
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\n`, `\\x1b`,
    `\\u2028`): one logged value can never make a second log line or move a terminal."""
    return _CONTROLS.sub(_escaped, text)


class _Enqueue(logging.handlers.QueueHandler):
    """Hand records to the writer thread as they are: formatting happens there, not on
    the event loop. A record whose args could still change is frozen first (its message
    made now), and an exception is made text now (its traceback objects stay here)."""

    _exceptions = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        args = record.args
        if record.exc_info or (args and not (isinstance(args, tuple)
                                             and all(isinstance(a, _IMMUTABLE) for a in args))):
            frozen = copy.copy(record)
            frozen.msg, frozen.args = record.getMessage(), None
            if record.exc_info:
                frozen.exc_text = self._exceptions.formatException(record.exc_info)
                frozen.exc_info = None
            return frozen
        return record


class LogWriter:
    """One thread that formats queued records and writes them to a stream in batches of
    up to BATCH lines, one write and one flush each. Once the queue is drained it
    lingers LINGER_S so the next records gather (a line is out within ~20 ms); while
    records keep coming faster it does not sleep, so the queue never grows."""

    def __init__(self, stream: Any, formatter: logging.Formatter) -> None:
        self.queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._stream = stream
        self._formatter = formatter
        self._stopping = threading.Event()  # cuts a linger short
        self._thread = threading.Thread(target=self._run, name="relay-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            records = [self.queue.get()]
            while len(records) < BATCH:
                try:
                    records.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            for record in records:
                if record is None:
                    self._write(lines)
                    return
                try:
                    lines.append(self._formatter.format(record) + "\n")
                except Exception:  # a bad record must not stop the log
                    lines.append(f"unformattable log record from {record.name}: "
                                 f"{record.msg!r}\n")
            self._write(lines)
            if len(records) < BATCH:  # drained: let the next lines gather; else keep up
                self._stopping.wait(LINGER_S)

    def _write(self, lines: list[str]) -> None:
        try:
            for chunk in _chunks(lines, WRITE_MAX_BYTES):
                self._stream.write(chunk)
                self._stream.flush()
        except (OSError, ValueError):  # stderr gone (closed pipe): nothing left to tell
            pass

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._stopping.set()
            self._thread.join(5)


def _chunks(lines: list[str], limit: int) -> list[str]:
    """Whole lines joined into pieces of at most `limit` UTF-8 bytes (a longer line alone)."""
    chunks: list[str] = []
    piece: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode("utf-8", "surrogateescape"))
        if piece and size + n > limit:
            chunks.append("".join(piece))
            piece, size = [], 0
        piece.append(line)
        size += n
    if piece:
        chunks.append("".join(piece))
    return chunks


class LineFormatter(logging.Formatter):
    """The plain format: the message escaped (`escape_controls`), so a record is one
    line; a traceback or stack follows with each of its lines indented by two spaces."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extra = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            extra.append(record.exc_text)
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for text in extra:
            line += "".join("\n  " + escape_controls(part) for part in text.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` ids."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", fmt: str = "plain",
                      environ: Mapping[str, str] | None = None) -> None:
    """Route every record through a queue to a writer thread (stderr), so neither the
    formatting nor a slow stderr costs the event loop."""
    global _writer
    env = os.environ if environ is None else environ
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif env.get("JOURNAL_STREAM"):
        formatter = LineFormatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if _writer is not None:
        _writer.stop()
    _writer = LogWriter(sys.stderr, formatter)
    root.addHandler(_Enqueue(_writer.queue))
    root.setLevel(level.upper())
    # APScheduler logs two INFO lines per job run (every tick: ~35,000 a day); relay logs
    # what its jobs did. Its warnings and errors still show; everything at debug level.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    # No format here uses the caller's file and line, thread or process: do not collect
    # them for every record (the logging HOWTO's "Optimization" switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    atexit.register(_writer.stop)


class AccessLogger(AbstractAccessLogger):
    """One line per request; health checks, metrics scrapes and routine 2xx (`ROUTINE_KEY`)
    at DEBUG only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        quiet = request.path in QUIET_PATHS or (
            response.status < 300 and request.get(ROUTINE_KEY, False))
        level = logging.DEBUG if quiet else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(level, "%s %s %d %.1fms request_id=%s", request.method, request.path,
                        response.status, time * 1000,
                        response.headers.get("X-Request-Id", "-"))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG) or self.logger.isEnabledFor(logging.INFO)
