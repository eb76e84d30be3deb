"""`relay demo` runs to completion in a fresh process and its timeline shows every step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STEPS = ["Apple purchase", "Apple renewal", "Apple cancellation", "Apple missed expiry",
         "Apple refund", "Google purchase", "Google renewal", "Google cancellation",
         "Google missed expiry", "Google refund"]


def test_relay_demo_shows_each_step() -> None:
    done = subprocess.run([sys.executable, "-m", "relay", "demo"], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    blocks = out.split("\n\n")
    for n, title in enumerate(STEPS, start=1):
        [block] = [b for b in blocks if b.startswith(f"{n}. {title}")]
        assert "arrived :" in block and "state   :" in block
        assert "relayed : subscription." in block and "signature ok" in block
    states = [line.split(":", 1)[1].split()[0] for line in out.splitlines()
              if line.strip().startswith("state")]
    assert states == ["active", "active", "active_not_renewing", "expired", "refunded"] * 2
    assert "0 with a bad signature" in out
    assert "SIGNATURE INVALID" not in out
    assert "disabled:" not in done.stderr  # a quiet demo: no warnings about credentials
