"""What relay relays: the event body downstream receives (the same bytes on every attempt)
and the endpoints an event goes to. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.core.domain import PurchaseView, iso
from relay.core.json_codec import dumps
from relay.core.rules import Route, Rules


def route(rules: Rules, event_type: str, platform: str | None,
           environment: str | None) -> list[tuple[str, str]]:
    """(endpoint, status) of the outbox rows an event gets. An endpoint that filters on
    the environment, for a purchase whose environment is not known yet (a Google
    notification before any re-verify), gets an `unrouted` row: kept, not sent, until
    the environment is known (`store.pipeline` releases them)."""
    out = []
    for r in rules.routes_for_event(event_type, platform):
        if r.environments and environment is None:
            out.append((r.name, "unrouted"))
        elif not r.environments or environment in r.environments:
            out.append((r.name, "pending" if r.active else "held"))
    return out


def routes_for(rules: Rules, event_type: str, platform: str | None,
               environment: str | None) -> list[Route]:
    return [r for r in rules.routes_for_event(event_type, platform)
            if not r.environments or environment in r.environments]


def event_body(event_id: str, event_type: str, reason: str | None, source: str,
               occurred_ms: int, received_ms: int, platform: str | None,
               subject_key: str | None, after: PurchaseView | None,
               before: PurchaseView | None, sequence: int | None, stale: bool,
               attesto_event_id: str | None, entitlements: list[str],
               extra: Mapping[str, Any]) -> str:
    body: dict[str, Any] = {
        "id": event_id, "type": event_type, "reason": reason,
        "occurred_at": iso(occurred_ms), "received_at": iso(received_ms), "source": source,
        "platform": platform, "subject_key": subject_key,
        "user_id": after.user_id if after else None,
        "app_user_id": after.app_user_id if after else None,
        "product_id": after.product_id if after else None,
        "environment": after.environment if after else None,
        "state": str(after.state) if after else None,
        "previous_state": str(before.state) if before else None,
        "expires_at": iso(after.expires_ms) if after else None,
        "entitlements": entitlements, "sequence": sequence, "stale": stale,
        "attesto_event_id": attesto_event_id,
    }
    body.update(extra)
    return dumps(body)
