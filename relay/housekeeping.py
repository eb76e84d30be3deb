"""Pruning: delivered outbox rows and old inbox rows, in bounded, time-boxed batches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from relay.models import Attempt, Delivery, DeliveryMinute, Inbox
from relay.store import Store

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    deliveries: int
    inbox: int


def _prune_deliveries_batch(before_ms: int, batch: int) -> int:
    ids = [d.id for d in Delivery.select(Delivery.id)
           .where((Delivery.status == "delivered") & (Delivery.delivered_ms < before_ms))
           .limit(batch)]
    if not ids:
        return 0
    Attempt.delete().where(Attempt.delivery.in_(ids)).execute()
    return int(Delivery.delete().where(Delivery.id.in_(ids)).execute())


def _prune_inbox_batch(before_ms: int, batch: int) -> int:
    ids = [r.event_id for r in Inbox.select(Inbox.event_id)
           .where(Inbox.received_ms < before_ms).limit(batch)]
    if not ids:
        return 0
    return int(Inbox.delete().where(Inbox.event_id.in_(ids)).execute())


async def prune(store: Store, now_ms: int, delivered_retention_s: int, inbox_retention_s: int,
                time_box_s: float = 2.0, batch: int = BATCH) -> Pruned:
    """Delete in batches (one transaction each) until done or the time box is spent.

    Only `delivered` rows are pruned: pending, held and dead deliveries stay."""
    deadline = time.monotonic() + time_box_s
    deliveries = inbox = 0
    while time.monotonic() < deadline:
        n = await store.write(lambda: _prune_deliveries_batch(
            now_ms - delivered_retention_s * 1000, batch))
        deliveries += n
        if n < batch:
            break
    while time.monotonic() < deadline:
        n = await store.write(lambda: _prune_inbox_batch(now_ms - inbox_retention_s * 1000,
                                                         batch))
        inbox += n
        if n < batch:
            break
    # The per-minute attempt counts (the console's plots) go with the delivered rows.
    await store.write(lambda: DeliveryMinute.delete().where(
        DeliveryMinute.minute_ms < now_ms - delivered_retention_s * 1000).execute())
    if deliveries or inbox:
        log.info("pruned %d delivered deliveries and %d inbox rows", deliveries, inbox)
    return Pruned(deliveries, inbox)
