"""relay.core.frozen: `evolve` gives what dataclasses.replace gives; `slot_init` classes
behave as the frozen dataclasses they are."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, replace

import pytest

from relay.core.domain import (
    Entitlement,
    EventView,
    InputNote,
    PurchaseView,
    Snapshot,
    State,
    TxnFact,
)
from relay.core.frozen import evolve, slot_init
from relay.core.normalizer import Normalized
from relay.intake.wire import Answer
from relay.verify.verifier import AppleItem, GoogleItem, Outcome, VerifyWrite


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


@pytest.mark.parametrize("cls", [Snapshot, PurchaseView, TxnFact, InputNote, Entitlement,
                                 EventView, Normalized, AppleItem, GoogleItem, Outcome,
                                 VerifyWrite, Answer])
def test_slot_init_classes_stay_frozen_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default is f.default
        elif f.default_factory is dataclasses.MISSING:
            assert p.default is inspect.Parameter.empty


def test_slot_init_keeps_what_a_frozen_dataclass_gives() -> None:
    snap = Snapshot("apple", "k", "webhook", 1, 2, product_id="p",
                    transactions=(TxnFact("t1", observed_ms=3),))
    assert (snap.platform, snap.subject_key, snap.observed_ms, snap.product_id) == (
        "apple", "k", 1, "p")
    assert snap.kind is None and snap.poll_now is False and snap.transactions[0].observed_ms == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.kind = "product"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Snapshot("apple", "k", "webhook", 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Snapshot("apple", "k", "webhook", 1, 2, no_such_field=1)  # type: ignore[call-arg]
    twin = Snapshot(platform="apple", subject_key="k", source="webhook", observed_ms=1,
                    received_ms=2, product_id="p", transactions=(TxnFact("t1", observed_ms=3),))
    assert snap == twin and hash(snap) == hash(twin) and repr(snap) == repr(twin)
    assert repr(snap).startswith("Snapshot(platform='apple', subject_key='k'")
    assert replace(snap, kind="product").kind == "product"
    assert evolve(snap, kind="product") == replace(snap, kind="product")
    assert pickle.loads(pickle.dumps(snap)) == snap
    assert EventView(1, "e", "t", "{}").extra == {}  # default_factory: a new dict each time
    assert EventView(1, "e", "t", "{}").extra is not EventView(1, "e", "t", "{}").extra


def test_slot_init_refuses_what_it_cannot_build() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class KwOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls in (NoSlots, NotFrozen, PostInit, KwOnly):
        with pytest.raises(TypeError):
            slot_init(cls)


def test_slot_init_fills_a_subclass_instance_and_keeps_its_class() -> None:
    class Sub(TxnFact):
        __slots__ = ()

    fact = Sub("t1", "p", observed_ms=3)
    assert type(fact) is Sub and (fact.transaction_id, fact.product_id, fact.observed_ms,
                                  fact.currency) == ("t1", "p", 3, None)
    assert type(TxnFact("t1")) is TxnFact
    with pytest.raises(dataclasses.FrozenInstanceError):
        fact.currency = "EUR"  # type: ignore[misc]
