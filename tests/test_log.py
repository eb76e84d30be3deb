"""Logging formats: journald (no timestamp), plain, JSON lines; health checks stay quiet."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Response

from relay.log import AccessLogger

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ("import logging,sys; from relay.log import configure_logging; "
           "configure_logging('info', sys.argv[1]); "
           "logging.getLogger('relay.x').info('hello %s', 'world', extra={'event_id': 'evt_1'})")


def run(fmt: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", SNIPPET, fmt], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), **env}, timeout=30)
    return out.stderr.strip()


def test_journald_format_has_no_timestamp() -> None:
    assert run("plain", {"JOURNAL_STREAM": "8:123"}) == "INFO relay.x: hello world"


def test_plain_format_has_a_timestamp() -> None:
    line = run("plain", {})
    assert line.endswith("INFO relay.x: hello world") and line[:4].isdigit()


def test_json_lines_carry_the_ids() -> None:
    doc = json.loads(run("json", {}))
    assert doc["message"] == "hello world" and doc["event_id"] == "evt_1"
    assert doc["level"] == "info" and doc["logger"] == "relay.x"


def test_access_log_is_quiet_for_health(caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("test.access")
    access = AccessLogger(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(make_mocked_request("GET", "/healthz"), Response(), 0.001)
        access.log(make_mocked_request("GET", "/v1/events"), Response(), 0.001)
    assert [r.getMessage().split()[1] for r in caplog.records] == ["/v1/events"]
