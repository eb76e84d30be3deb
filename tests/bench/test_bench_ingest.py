"""bench/ingest.py: its deliveries are ones relay accepts, and it runs end to end (tiny)."""

from __future__ import annotations

import importlib
import os
import time

import pytest

from tests.conftest import RelayFactory
from tests.support.webhooks import PATH, counts

bench = importlib.import_module("bench.ingest")  # the worktree root is on sys.path


async def test_bench_deliveries_are_signed_unique_and_accepted(
        relay_factory: RelayFactory) -> None:
    client = await relay_factory(webhook_secrets=(bench.SECRET,))
    lines = bench._make_chunk((0, 40, 10, int(time.time()), 0))
    assert len({line.split("\t")[0] for line in lines}) == 40
    statuses = []
    for line in lines:
        eid, event, ts, sig, body = line.split("\t", 4)
        resp = await client.post(PATH, data=body.encode(), headers={
            "Content-Type": "application/json", "X-Attesto-Event": event,
            "X-Attesto-Event-Id": eid, "X-Attesto-Timestamp": ts, "X-Attesto-Signature": sig})
        statuses.append((resp.status, (await resp.json())["status"]))
    assert statuses == [(200, "accepted")] * 40
    got = await counts(client)
    assert got["inbox"] == 40 and got["purchase"] == 10  # four deliveries per purchase


@pytest.mark.slow
def test_ingest_bench_runs_and_reports_ratios() -> None:
    figures = bench.main(["--duration", "1", "--warmup", "1", "--connections", "8",
                          "--ceiling-pool", "400", "--loadgen", "python"])
    c, r = figures["ceiling"], figures["relay"]
    assert c["non2xx"] == 0 and r["non2xx"] == 0 and r["duplicates"] == 0
    assert r["accepted"] > 0 and r["stored_ok"]
    assert figures["ratio"]["accepted_per_s"] == r["accepted_per_s"] / c["accepted_per_s"]
    b = figures["bypassed"]  # the same deliveries, store answered at once
    assert b["accepted"] > 0 and b["non2xx"] == 0 and b["cpu_us_per_delivery"] > 0


@pytest.mark.slow
def test_ingest_bench_runs_relay_with_its_ingest_writer() -> None:
    figures = bench.main(["--duration", "1", "--warmup", "1", "--connections", "8",
                          "--ceiling-pool", "400", "--loadgen", "python", "--ingest-writer"])
    r = figures["relay"]
    assert figures["ingest_writer"] and "bypassed" not in figures
    assert r["accepted"] > 0 and r["non2xx"] == 0 and r["duplicates"] == 0 and r["stored_ok"]


@pytest.mark.slow
def test_ingest_bench_pins_servers_and_compares_a_fastapi_receiver() -> None:
    # The FastAPI receiver's venv is made under bench/.venvs on first use (pip, PyPI).
    cpu = str(min(os.sched_getaffinity(0)))
    figures = bench.main(["--duration", "1", "--warmup", "1", "--connections", "8",
                          "--ceiling-pool", "400", "--loadgen", "python", "--pin",
                          f"{cpu}:{cpu}", "--receivers", "fastapi", "--rounds", "2",
                          "--no-bypassed"])
    fa, r = figures["receivers"]["fastapi"], figures["relay"]
    assert figures["pin"] == f"{cpu}:{cpu}" and "bypassed" not in figures
    assert len(r["rounds_accepted_per_s"]) == len(fa["rounds_accepted_per_s"]) == 2
    assert fa["accepted"] > 0 and fa["non2xx"] == 0 and fa["duplicates"] == 0
    assert r["accepted"] > 0 and r["non2xx"] == 0 and r["stored_ok"]
    assert figures["ratio"]["vs_fastapi"]["accepted_per_s"] == (r["accepted_per_s"]
                                                               / fa["accepted_per_s"])
    assert figures["receiver_versions"]["fastapi"]["fastapi"]


@pytest.mark.slow
def test_ingest_ab_runs_each_tree_on_the_same_deliveries() -> None:
    ab = importlib.import_module("bench.ingest_ab")
    root = str(ab.ROOT)
    out = ab.main(["--pairs", "1", "--duration", "1", "--warmup", "1", "--rate", "300",
                   "--connections", "8", f"a={root}", f"b={root}"])
    for name in ("a", "b"):
        (run,) = out["runs"][name]
        # Duplicates are fine here: a tiny pool wraps around (each variant on fresh data).
        assert run["accepted"] > 0 and run["non2xx"] == 0 and run["cpu_us_per_delivery"] > 0


def test_profile_ingest_sorts_samples_into_categories() -> None:
    prof = importlib.import_module("bench.profile_ingest")
    pyspy = [  # py-spy raw lines: thread, frames root first, then the sample count
        "thread (1): MainThread;_run (asyncio/events.py:80);handle_attesto (relay/web/routes/"
        "webhooks.py:60);verify_attesto (relay/attesto/signature.py:90);_digest (relay/"
        "attesto/signature.py:37) 3\n",
        "thread (2): relay-db;ingest_many (relay/intake/inbox.py:80);apply_many (relay/store/"
        "pipeline.py:201);insert_events (relay/store/statements.py:211) 2\n",
        "thread (1): MainThread;RequestHandler.start (aiohttp/web_protocol.py:600) 1\n"]
    assert prof.pyspy_shares(pyspy) == {
        "signature (HMAC)": 3, "SQL glue (statements, peewee execute_sql)": 2,
        "aiohttp HTTP (parse, body, response, transport)": 1}
    perf = ("  7 \n\tffff ksys_pwrite64 ([kernel.kallsyms])\n\tffff __x64_sys_pwrite64 "
            "([kernel.kallsyms])\n\n  7 \n\t7f00 sqlite3VdbeExec (/usr/lib/libsqlite3.so.0)\n\n"
            "  8 \n\t7f00 _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)\n")
    assert prof.perf_shares(perf) == {"7": {"kernel: pwrite64": 1, "libsqlite3.so.0": 1},
                                      "8": {"libpython3.11.so.1.0": 1}}
