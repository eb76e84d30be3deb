"""bench/relay.py's downstream receiver in its own process: start it, stop it.

The receiver prints its port, then serves until its stdin closes. Used by bench/relay.py
(and its PostgreSQL run) and bench/soak.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RELAY_BENCH = Path(__file__).resolve().parent / "relay.py"


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    """Start the receiver; return its process and base URL (`/hook`, `/bare`, `/stats`)."""
    proc = subprocess.Popen([sys.executable, str(RELAY_BENCH), "--serve-receiver"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def stop_receiver(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it exits), wait up to 10 s, else kill it."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()
