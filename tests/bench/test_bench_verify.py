"""bench/verify.py runs end to end (tiny phases) and returns its figures; no timing asserted."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.slow
def test_verify_bench_runs_and_reports_ratios() -> None:
    bench = importlib.import_module("bench.verify")  # the worktree root is on sys.path
    figures = bench.main(["--duration", "0.3", "--requests", "20", "--concurrency", "4"])
    assert figures["direct"]["errors"] == 0 and figures["relay"]["errors"] == 0
    assert figures["relay"]["rps"] > 0 and figures["direct"]["rps"] > 0
    assert figures["throughput_ratio"] == figures["relay"]["rps"] / figures["direct"]["rps"]
    assert figures["added_p50_ms"] == pytest.approx(
        figures["relay"]["p50_ms"] - figures["direct"]["p50_ms"])
