"""Pruning in bounded, time-boxed batches: delivered outbox rows, and (when the input log has
a retention) old input-log rows and the raw bodies of old inbox rows.

An inbox row itself is never deleted: its eventId is the dedupe key that makes a delivery
Attesto retries (for ~7 h, or replayed by hand later) apply once, whatever the retention.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.store.database import Store
from relay.store.models import Attempt, Delivery, DeliveryMinute, Inbox, InputLog

log = logging.getLogger("relay.housekeeping")

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    inputs: int = 0  # input-log rows deleted
    inbox_bodies: int = 0  # inbox rows whose raw body was dropped (the row stays)


def _prune_deliveries_batch(before_ms: int, batch: int) -> int:
    ids = [d.id for d in Delivery.select(Delivery.id)
           .where((Delivery.status == "delivered") & (Delivery.delivered_ms < before_ms))
           .limit(batch)]
    if not ids:
        return 0
    Attempt.delete().where(Attempt.delivery.in_(ids)).execute()
    return int(Delivery.delete().where(Delivery.id.in_(ids)).execute())


def _prune_inputs_batch(before_ms: int, batch: int) -> int:
    ids = [r.id for r in InputLog.select(InputLog.id)
           .where(InputLog.received_ms < before_ms).order_by(InputLog.received_ms)
           .limit(batch)]
    if not ids:
        return 0
    return int(InputLog.delete().where(InputLog.id.in_(ids)).execute())


def _prune_inbox_bodies_batch(before_ms: int, batch: int) -> int:
    ids = [r.event_id for r in Inbox.select(Inbox.event_id)
           .where((Inbox.received_ms < before_ms) & (Inbox.headers != "")).limit(batch)]
    if not ids:
        return 0
    return int(Inbox.update(body=b"", headers="").where(Inbox.event_id.in_(ids)).execute())


async def prune(store: Store, now_ms: int, delivered_retention_s: int,
                input_retention_s: int = 0, time_box_s: float = 2.0,
                batch: int = BATCH) -> Pruned:
    """Delete in batches (one transaction each) until done or the time box is spent.

    Only `delivered` rows are pruned: pending, held and dead deliveries stay.
    `input_retention_s` 0 keeps the input log and the inbox bodies for ever."""
    deadline = time.monotonic() + time_box_s
    counts = {"deliveries": 0, "inputs": 0, "inbox_bodies": 0}
    steps: list[tuple[str, Callable[[int, int], int], int]] = [
        ("deliveries", _prune_deliveries_batch, now_ms - delivered_retention_s * 1000)]
    if input_retention_s > 0:
        cutoff = now_ms - input_retention_s * 1000
        steps += [("inputs", _prune_inputs_batch, cutoff),
                  ("inbox_bodies", _prune_inbox_bodies_batch, cutoff)]
    for name, step, before_ms in steps:
        while time.monotonic() < deadline:
            n = await store.write(functools.partial(step, before_ms, batch))
            counts[name] += n
            if n < batch:
                break
    # The per-minute attempt counts (the console's plots) go with the delivered rows.
    cutoff_ms = now_ms - delivered_retention_s * 1000
    await store.write(lambda: DeliveryMinute.delete().where(
        DeliveryMinute.minute_ms < cutoff_ms).execute())
    if any(counts.values()):
        log.info("pruned %d delivered deliveries, %d input-log rows, %d inbox bodies",
                 counts["deliveries"], counts["inputs"], counts["inbox_bodies"])
    return Pruned(**counts)
