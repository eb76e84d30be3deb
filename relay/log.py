"""Logging set-up: plain (journald-aware) or JSON lines, written off the event loop."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_listener: logging.handlers.QueueListener | None = None


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
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", fmt: str = "plain",
                      environ: Mapping[str, str] | None = None) -> None:
    """Route every record through a queue to stderr, so a slow stderr never blocks the loop."""
    global _listener
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif env.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(q))
    root.setLevel(level.upper())
    if _listener is not None:
        _listener.stop()
    _listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)


class AccessLogger(AbstractAccessLogger):
    """One line per request; health checks and metrics scrapes at DEBUG only."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        self.logger.log(level, "%s %s %d %.1fms request_id=%s", request.method, request.path,
                        response.status, time * 1000,
                        response.headers.get("X-Request-Id", "-"))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG) or self.logger.isEnabledFor(logging.INFO)
