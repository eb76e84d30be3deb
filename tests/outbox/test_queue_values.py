"""`Claimed` and `Outcome` (built with `slot_init`'s cheaper `__init__`) stay frozen values."""

from __future__ import annotations

import dataclasses

import pytest

from relay.core.retry_policy import Verdict
from relay.outbox.queue import Claimed, Outcome


def test_claimed_and_outcome_are_frozen_values_with_their_defaults() -> None:
    c = Claimed(1, "billing", "evt_1", b"{}", 0, 99, "s1", 1)
    assert c.created_ms == 0
    assert c == Claimed(id=1, endpoint="billing", event_id="evt_1", body=b"{}", attempts=0,
                        token=99, subject="s1", sequence=1, created_ms=0)
    assert hash(c) == hash(dataclasses.replace(c))
    o = Outcome(1, "billing", 99, Verdict.DELIVERED, 5, 1, 2, 200, None, "ok")
    assert dataclasses.replace(o, error="x").error == "x"
    assert dataclasses.astuple(o) == (1, "billing", 99, Verdict.DELIVERED, 5, 1, 2, 200, None,
                                      "ok")
    for value, name in ((c, "token"), (o, "verdict")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    with pytest.raises(TypeError):
        Claimed(1, "billing")  # type: ignore[call-arg]
