"""Tree against tree, in process: the driver shared by bench/store_split.py,
verify_store.py and repoll_store.py.

Each run is a child process (`python -P <script> --child ...`) importing `relay` from the
tree it is given (PYTHONPATH), so two checkouts compare in one session; rounds alternate
the trees' order. The child answers one JSON line; the parent prints each key's median
and range per tree and, for two trees, the per-round ratios of the second to the first.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

Tree = tuple[str, str]  # name, path of a tree holding relay/


def parse_trees(specs: Sequence[str], script: str) -> list[Tree]:
    """`name=path` arguments; none: the tree `script` lives in, as "this"."""
    if not specs:
        return [("this", str(Path(script).resolve().parent.parent))]
    return [(name, path) for name, _, path in (s.partition("=") for s in specs)]


def alternating(trees: Sequence[Tree], rounds: int) -> Iterator[tuple[int, str, str]]:
    """(round, name, path), the trees' order reversed every other round."""
    for r in range(rounds):
        for name, path in (trees if r % 2 == 0 else trees[::-1]):
            yield r, name, path


def run_child(script: str, path: str, flags: Sequence[str]) -> tuple[dict[str, Any], str]:
    """Run `script --child *flags` with `path`'s relay; its JSON answer and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
    proc = subprocess.run([sys.executable, "-P", str(Path(script).resolve()), "--child",
                           *flags], env=env, capture_output=True, text=True, check=False,
                          cwd=tempfile.gettempdir())
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def summarize(results: dict[str, list[dict[str, Any]]], keys: Sequence[str]) -> None:
    """Each key's median and range per tree; for two trees, the per-round ratios."""
    for name, runs in results.items():
        for key in keys:
            xs = [x[key] for x in runs]
            print(f"{name} {key}: median {statistics.median(xs):.1f} "
                  f"({min(xs):.1f}-{max(xs):.1f})")
    if len(results) == 2:
        (a, first), (b, second) = results.items()
        for key in keys:
            ratios = [y[key] / x[key] for x, y in zip(first, second, strict=True)]
            print(f"{b}/{a} {key} per round: " + ", ".join(f"{x:.3f}" for x in ratios)
                  + f"; median x{statistics.median(ratios):.3f}")


def on_store_thread(store: Any, run: Callable[[], dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """Open `store`, call `run()` on its thread, close it, and remove the files in `tmp`."""

    async def main() -> dict[str, Any]:
        await store.open()
        try:
            result: dict[str, Any] = await store.read(run)
            return result
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
