"""A purchase's history as relay shows it: one input-log row (`InputView`), its one-line
summary and its JSON. Pure; the store reads the rows (`relay.store.history`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.core.domain import iso


def short(ref: str | None) -> str | None:
    """Google tokens are long: their head and tail name them well enough in one line."""
    if ref is None or len(ref) <= 24:
        return ref
    return f"{ref[:12]}…{ref[-6:]}"


@dataclass(frozen=True, slots=True)
class InputView:
    """One input that touched a purchase (see `store.models.InputLog`)."""

    id: int
    platform: str
    subject_key: str
    source: str
    received_ms: int
    observed_ms: int
    store_type: str | None
    store_subtype: str | None
    event_type: str | None
    ref: str | None
    transaction_id: str | None
    expires_ms: int | None
    state_before: str | None
    state_after: str | None
    event_ids: str | None
    user_id: str | None
    repeats: int
    last_ms: int | None
    raw: str | None = None  # the exact body (webhook: the inbox bytes), when asked for

    def summary(self) -> str:
        """The input in one line: source, what the store said, the transaction or token
        it names, the expiry it gave, and the state before and after."""
        said = self.store_type or "-"
        if self.store_subtype:
            said += f"/{self.store_subtype}"
        parts = [self.source, said]
        if self.event_type:
            parts.append(f"({self.event_type})")
        names = []
        label = "order" if self.platform == "google" else "transaction"
        if self.transaction_id:
            names.append(f"{label} {self.transaction_id}")
        if self.ref and self.ref != self.transaction_id:
            names.append(f"{'token' if self.platform == 'google' else 'ref'} "
                         f"{short(self.ref)}")
        if self.expires_ms is not None:
            names.append(f"expires {iso(self.expires_ms)}")
        line = " ".join(parts) + (": " + ", ".join(names) if names else "")
        line += f"; {self.state_before or 'new'} -> {self.state_after or '-'}"
        if self.repeats > 1:
            line += f" (x{self.repeats})"
        return line

    def to_json(self, raw: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.id), "received_at": iso(self.received_ms),
            "observed_at": iso(self.observed_ms), "source": self.source,
            "summary": self.summary(), "store_type": self.store_type,
            "store_subtype": self.store_subtype, "event_type": self.event_type,
            "ref": self.ref, "transaction_id": self.transaction_id,
            "expires_at": iso(self.expires_ms), "state_before": self.state_before,
            "state_after": self.state_after,
            "event_ids": self.event_ids.split(",") if self.event_ids else [],
            "user_id": self.user_id, "repeats": self.repeats,
            "last_at": iso(self.last_ms)}
        if raw:
            out["raw"] = self.raw
        return out

    def brief(self) -> dict[str, Any]:
        """What explain shows of the input that decided a purchase's state."""
        return {"id": str(self.id), "source": self.source,
                "received_at": iso(self.received_ms), "observed_at": iso(self.observed_ms),
                "summary": self.summary()}
