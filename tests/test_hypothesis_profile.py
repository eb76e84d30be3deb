"""Hypothesis in CI is reproducible: the same examples on every run (tests/conftest.py
registers a `ci` profile with derandomize and no example database, loaded when CI is set
or HYPOTHESIS_PROFILE=ci); elsewhere runs stay random to keep finding new cases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def examples(tmp_path: Path, run: str, env: dict[str, str]) -> list[str]:
    out = tmp_path / f"{run}.txt"
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "support" / "hypothesis_probe.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**base, **env, "HYPOTHESIS_PROBE_OUT": str(out)})
    assert result.returncode == 0, result.stdout + result.stderr
    return out.read_text().splitlines()


def test_ci_runs_draw_the_same_examples_every_time(tmp_path: Path) -> None:
    first = examples(tmp_path, "first", {"CI": "true"})
    assert len(first) == 25
    assert examples(tmp_path, "second", {"CI": "true"}) == first
    assert examples(tmp_path, "third", {"HYPOTHESIS_PROFILE": "ci"}) == first


def test_local_runs_stay_random(tmp_path: Path) -> None:
    assert examples(tmp_path, "one", {}) != examples(tmp_path, "two", {})
