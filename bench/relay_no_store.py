"""`relay serve` with every webhook's store write answered at once: the HTTP side alone.

bench/ingest.py runs it for its "store bypassed" row, which splits relay's cost per
delivery into the front (aiohttp, signature, normalization, logs, metrics) and the
store (group commit, SQL, fsync). It stores no delivery: a bench tool, never a
deployment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # bench/relay.py shadows relay

from relay.intake import inbox  # noqa: E402
from relay.service.cli import main  # noqa: E402
from relay.store import database as store  # noqa: E402

_write_many = store.Store.write_many


async def _answer_at_once(self: store.Store, batch: Any, item: Any) -> Any:
    if batch is inbox.ingest_many:
        return inbox.Outcome(duplicate=False)
    return await _write_many(self, batch, item)


store.Store.write_many = _answer_at_once  # type: ignore[method-assign]
raise SystemExit(main())
