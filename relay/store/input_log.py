"""The input log's own upkeep beyond the one INSERT per write group (pipeline): folding a
re-poll answer that repeats the purchase's previous one into a count. Store thread only."""

from __future__ import annotations

from relay.store.models import InputLog


def fold_repeat(platform: str, subject_key: str) -> bool:
    """If the purchase's newest input is a re-poll answer identical to the one before it
    and changed nothing, keep the older row with `repeats + 1` and drop the newer one.
    Two rows read through the (platform, subject_key, id) index."""
    rows = list(InputLog.select(InputLog.id, InputLog.source, InputLog.body,
                                InputLog.state_before, InputLog.state_after,
                                InputLog.event_ids, InputLog.received_ms, InputLog.repeats)
                .where((InputLog.platform == platform) & (InputLog.subject_key == subject_key))
                .order_by(InputLog.id.desc()).limit(2))
    if len(rows) < 2:
        return False
    new, prev = rows
    if not (new.source == prev.source == "poll" and new.body is not None
            and new.body == prev.body and not new.event_ids
            and new.state_before == new.state_after == prev.state_after):
        return False
    InputLog.delete().where(InputLog.id == new.id).execute()
    InputLog.update(repeats=InputLog.repeats + 1, last_ms=new.received_ms).where(
        InputLog.id == prev.id).execute()
    return True
