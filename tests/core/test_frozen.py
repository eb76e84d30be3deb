"""relay.core.frozen.evolve: what dataclasses.replace gives, for the hot path's views."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import pytest

from relay.core.domain import PurchaseView, Snapshot, State
from relay.core.frozen import evolve


def _view() -> PurchaseView:
    return PurchaseView(platform="apple", subject_key="k", kind="subscription", user_id=None,
                        app_user_id="a", product_id="p", base_plan_id=None,
                        state=State.ACTIVE, state_reason=None, environment="production",
                        expires_ms=5, auto_renew=True, latest_ref="t", package_name=None,
                        store_time_ms=1, sequence=2, created_ms=1, updated_ms=1)


@pytest.mark.parametrize("changes", [
    {}, {"sequence": 3}, {"sequence": 3, "updated_ms": 9, "next_poll_ms": 7},
    {"state": State.EXPIRED, "voided_ms": 4, "platform": "google"},
])
def test_evolve_is_replace(changes: dict[str, object]) -> None:
    view = _view()
    got, want = evolve(view, **changes), replace(view, **changes)
    assert got == want and type(got) is PurchaseView
    assert view == _view()  # the original is untouched


def test_evolve_takes_snapshots_and_refuses_unknown_fields() -> None:
    snap = Snapshot(platform="apple", subject_key="k", source="webhook", observed_ms=1,
                    received_ms=2)
    assert evolve(snap, poll_now=True) == replace(snap, poll_now=True)
    with pytest.raises(KeyError):
        evolve(snap, no_such_field=1)


def test_evolve_refuses_dataclasses_it_cannot_copy_positionally() -> None:
    @dataclass(frozen=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError):
        evolve(Derived(1), a=2)
