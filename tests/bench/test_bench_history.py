"""bench/history.py runs end to end (a tiny store) and returns its figures and index plans;
no timing asserted. The plans must use the indexes the history, explain and ledger reads
were built for (a full scan would pass on a tiny store and fail at 1M purchases)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.slow
def test_history_bench_runs_and_every_read_uses_its_index() -> None:
    bench = importlib.import_module("bench.history")  # the worktree root is on sys.path
    figures = bench.main(["--purchases", "2000", "--inputs", "300", "--requests", "5"])
    assert set(figures["timings"]) >= {"history, first page", "explain",
                                       "user's transactions", "ledger page"}
    assert all(t["p99_ms"] > 0 for t in figures["timings"].values())
    plans = {name: " ".join(lines) for name, lines in figures["plans"].items()}
    assert "input_log_platform_subject_key_id" in plans["history page"]
    assert "input_log_platform_subject_key_id" in plans["explain: input that set the state"]
    assert "input_log_user" in plans["explain: purchases the user verified"]
    assert "ledger_cursor" in plans["ledger page"]
    assert "ledger_user_id_cursor" in plans["user's transactions"]
    assert not any(line.startswith("SCAN") for p in figures["plans"].values() for line in p)
    assert len(figures["rows"]) == len(figures["timings"]) - 1
