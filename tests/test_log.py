"""Logging formats: journald (no timestamp), plain, JSON lines; health checks stay quiet."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Response

from relay.log import ROUTINE_KEY, AccessLogger

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


APSCHEDULER = ("import logging,sys; from relay.log import configure_logging; "
               "configure_logging(sys.argv[1], 'plain'); "
               "logging.getLogger('apscheduler.executors.default').info('Running job tick'); "
               "logging.getLogger('apscheduler.scheduler').warning('Run time was missed')")


def test_apscheduler_job_lines_only_at_debug() -> None:
    def lines(level: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", APSCHEDULER, level], capture_output=True,
                             text=True, env={"PYTHONPATH": str(ROOT), "JOURNAL_STREAM": "8:1"},
                             timeout=30)
        return out.stderr.splitlines()

    assert lines("info") == ["WARNING apscheduler.scheduler: Run time was missed"]
    assert lines("debug") == ["INFO apscheduler.executors.default: Running job tick",
                              "WARNING apscheduler.scheduler: Run time was missed"]


def test_access_log_is_quiet_for_health(caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("test.access")
    access = AccessLogger(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(make_mocked_request("GET", "/healthz"), Response(), 0.001)
        access.log(make_mocked_request("GET", "/v1/events"), Response(), 0.001)
    assert [r.getMessage().split()[1] for r in caplog.records] == ["/v1/events"]


def test_access_log_is_quiet_for_a_routine_2xx_only(caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("test.access")
    access = AccessLogger(logger, "")
    with caplog.at_level(logging.INFO, logger="test.access"):
        for status in (202, 200, 401, 503):
            request = make_mocked_request("POST", f"/hook/{status}")
            request[ROUTINE_KEY] = True
            access.log(request, Response(status=status), 0.001)
        access.log(make_mocked_request("POST", "/hook/plain"), Response(status=202), 0.001)
    assert [r.getMessage().split()[1] for r in caplog.records] == [
        "/hook/401", "/hook/503", "/hook/plain"]


class _Stream:
    """Holds its first write until `release` is set, so the records pile up behind it."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.release = threading.Event()

    def write(self, text: str) -> None:
        self.release.wait(10)
        self.writes.append(text)

    def flush(self) -> None:
        pass


def test_writer_keeps_order_batches_and_freezes_mutable_args() -> None:
    from relay.log import LogWriter, _Enqueue

    stream = _Stream()
    writer = LogWriter(stream, logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger("test.writer")
    logger.addHandler(_Enqueue(writer.queue))  # type: ignore[arg-type]
    ids = ["a"]
    logger.info("ids %s", ids)
    ids.append("b")  # changed after the call: the line shows the value at the call
    for i in range(600):
        logger.info("line %d", i)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed %s", "x")
    stream.release.set()
    writer.stop()
    text = "".join(stream.writes)
    lines = text.splitlines()
    assert lines[0] == "INFO ids ['a']"
    assert lines[1:601] == [f"INFO line {i}" for i in range(600)]
    assert lines[601] == "ERROR failed x" and "ValueError: boom" in text
    assert len(stream.writes) <= 12  # the piled-up records went out 64 to a write


def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    """Workers share stderr: each write() must be small enough to reach the pipe whole,
    and made of whole lines, so lines of two workers never interleave."""
    from relay.log import WRITE_MAX_BYTES, LogWriter, _Enqueue

    stream = _Stream()
    writer = LogWriter(stream, logging.Formatter("%(message)s"))
    logger = logging.Logger("test.chunks")
    logger.addHandler(_Enqueue(writer.queue))  # type: ignore[arg-type]
    sent = [f"line {i} " + "é" * (i % 90) for i in range(300)] + ["x" * 5000]
    for line in sent:
        logger.info("%s", line)
    stream.release.set()
    writer.stop()
    assert "".join(stream.writes).splitlines() == sent
    assert len(stream.writes) > 3  # 64-line batches of ~100-250 bytes had to be cut
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= WRITE_MAX_BYTES or text.count("\n") == 1


# ---- every logged value escaped (issue 16 item 4) ----------------------------------------

INJECT = ("import logging,sys; from relay.log import configure_logging; "
          "configure_logging('info', sys.argv[1]); log = logging.getLogger('relay.x'); "
          "log.info('path=%s user=%r', '/a\\n<0>forged', 'u\\r\\n<1>x'); "
          "exec('try:\\n raise ValueError(\"bad\\\\n<0>from an exception\")\\n"
          "except ValueError:\\n log.exception(\"failed on %s\", \"p\\\\x1b[2J\")')")


def test_a_logged_value_cannot_start_a_line_or_set_a_journal_priority() -> None:
    out = subprocess.run([sys.executable, "-c", INJECT, "plain"], capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT), "JOURNAL_STREAM": "8:1"},
                         timeout=30).stderr
    lines = out.splitlines()
    assert lines[0] == "INFO relay.x: path=/a\\n<0>forged user='u\\r\\n<1>x'"
    assert lines[1] == "ERROR relay.x: failed on p\\x1b[2J"
    assert lines[2:] and all(line.startswith("  ") for line in lines[2:])  # the traceback
    assert "  ValueError: bad" in lines and "  <0>from an exception" in lines
    assert "\x1b" not in out


def test_json_lines_stay_one_line_per_record() -> None:
    out = subprocess.run([sys.executable, "-c", INJECT, "json"], capture_output=True,
                         text=True, env={"PYTHONPATH": str(ROOT)}, timeout=30).stderr
    docs = [json.loads(line) for line in out.splitlines()]
    assert docs[0]["message"] == "path=/a\n<0>forged user='u\\r\\n<1>x'"
    assert len(docs) == 2 and "from an exception" in docs[1]["exception"]


def test_escape_controls() -> None:
    from relay.log import escape_controls

    assert escape_controls("a\nb\rc\td\x00e\x1bf\x7fg\x85h\u2028i\u2029j") == (
        "a\\nb\\rc\\td\\x00e\\x1bf\\x7fg\\x85h\\u2028i\\u2029j")
    assert escape_controls("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
