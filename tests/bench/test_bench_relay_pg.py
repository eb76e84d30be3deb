"""bench/relay_pg.py: the receiver-log check counts what it claims; a tiny two-instance
drain on PostgreSQL runs end to end (PostgreSQL only), and a two-worker drain on SQLite
(bench/relay_workers.py)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

from tests.support.store import ON_POSTGRES, POSTGRES_URL

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_relay_pg", BENCH / "relay_pg.py")
assert _spec is not None and _spec.loader is not None
relay_pg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relay_pg)

EVENTS = {"a1": ("a", 1), "a2": ("a", 2), "a3": ("a", 3), "b1": ("b", 1), "b2": ("b", 2)}


def test_a_clean_log_has_nothing_to_report() -> None:
    got = relay_pg.check(["a1", "b1", "a2", "b2", "a3"], EVENTS)
    assert got == {"requests": 5, "duplicates": 0, "order_violations": 0, "missing": 0,
                   "unknown": 0}


def test_duplicates_misorderings_misses_and_strangers_are_counted() -> None:
    # a2 after a3 is out of order; a1 again is a duplicate (not a misordering); b2 missing.
    got = relay_pg.check(["a1", "a3", "b1", "a2", "a1", "zz"], EVENTS)
    assert got == {"requests": 6, "duplicates": 1, "order_violations": 1, "missing": 1,
                   "unknown": 1}


@pytest.mark.slow
@pytest.mark.skipif(not ON_POSTGRES, reason="needs RELAY_TEST_POSTGRES_URL")
def test_two_instances_drain_one_database() -> None:
    bench = importlib.import_module("bench.relay")  # the worktree root is on sys.path
    figures = bench.main(["--events", "400", "--rounds", "1", "--store", "postgres",
                          "--pg-rounds", "1", "--pg-url", POSTGRES_URL, "--timeout", "120"])
    pg = figures["postgres"]
    assert pg["all_delivered"] and pg["duplicates"] == 0 and pg["order_violations"] == 0
    assert all(pg["postgres_x2"]["per_instance"]), "both instances must deliver"
    assert sum(pg["postgres_x2"]["per_instance"]) >= 400
    assert pg["sqlite_x1"]["per_instance"] == [400]


@pytest.mark.slow
def test_workers_drain_one_sqlite_file_in_order() -> None:
    """`relay serve` with two workers drains a queued SQLite file: every event once, each
    purchase's events in sequence, against one process and a two-process bare client."""
    bench = importlib.import_module("bench.relay")
    figures = bench.main(["--events", "400", "--rounds", "1", "--workers", "2",
                          "--timeout", "120"])
    w = figures["workers"]
    assert w["all_delivered"] and w["duplicates"] == 0 and w["order_violations"] == 0
    assert w["workers_deliveries_per_s"] > 0 and w["ceiling_posts_per_s"] > 0
    assert w["metrics_delivered"] == [400]  # whichever worker answered the scrape
    assert w["signatures_verified"] == 4  # every 100th request
