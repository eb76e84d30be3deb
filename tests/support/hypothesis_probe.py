"""Run only by tests/test_hypothesis_profile.py (not collected: no test_ prefix)."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25)
@given(st.integers())
def test_probe(value: int) -> None:
    with open(os.environ["HYPOTHESIS_PROBE_OUT"], "a") as out:
        out.write(f"{value}\n")
