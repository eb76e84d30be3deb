"""The input log's own upkeep beyond the one INSERT per write group (pipeline): folding a
re-poll answer that repeats the purchase's previous one into a count. Store thread only."""

from __future__ import annotations

from relay.store import statements

# Prebuilt (statements): this runs after every re-poll that changed nothing.
_LAST_TWO = ('SELECT "id", "source", "body", "state_before", "state_after", "event_ids", '
             '"received_ms" FROM "input_log" WHERE "platform" = {p} AND "subject_key" = {p} '
             'ORDER BY "id" DESC LIMIT 2')
_DROP = 'DELETE FROM "input_log" WHERE "id" = {p}'
_COUNT = ('UPDATE "input_log" SET "repeats" = "repeats" + 1, "last_ms" = {p} '
          'WHERE "id" = {p}')


def fold_repeat(platform: str, subject_key: str) -> bool:
    """If the purchase's newest input is a re-poll answer identical to the one before it
    and changed nothing, keep the older row with `repeats + 1` and drop the newer one.
    Two rows read through the (platform, subject_key, id) index."""
    rows = statements.execute("input_log_last_two", _LAST_TWO,
                              (platform, subject_key)).fetchall()
    if len(rows) < 2:
        return False
    (new_id, new_source, new_body, new_before, new_after, new_events, new_received), \
        (prev_id, prev_source, prev_body, _, prev_after, _, _) = rows
    if not (new_source == prev_source == "poll" and new_body is not None
            and new_body == prev_body and not new_events
            and new_before == new_after == prev_after):
        return False
    statements.execute("input_log_drop", _DROP, (new_id,))
    statements.execute("input_log_count", _COUNT, (new_received, prev_id))
    return True
