"""One verify alone in its write group reads the row and the user's other purchases at
once and answers the entitlements from them and the applied row: the same list, in the
same order, as reading the user's purchases after the apply."""

from __future__ import annotations

from pathlib import Path

from relay.core.decide import decide
from relay.core.domain import (
    Entitlement,
    PurchaseView,
    Snapshot,
    State,
    entitlements_of,
)
from relay.core.rules import Rules
from relay.runtime import rules_from
from relay.store import lookups, pipeline
from relay.store.database import Store
from relay.verify import writes
from relay.verify.writes import VerifyWrite
from tests.conftest import make_config
from tests.support.verify import ENTITLEMENTS

T = 1_700_000_000_000
DAY_MS = 86_400_000
EXPIRES = T + 30 * DAY_MS  # one expiry for all: the entitlements' order is the rows' order


def _snap(key: str, user: str, product: str = "premium.monthly") -> Snapshot:
    return Snapshot(platform="apple", subject_key=key, source="verify", observed_ms=T,
                    received_ms=T, kind="subscription", product_id=product,
                    state=State.ACTIVE, expires_ms=EXPIRES, environment="sandbox",
                    auto_renew=True, latest_ref=f"t-{key}", user_id=user)


def _read_after(user: str, rules: Rules) -> list[Entitlement]:
    return entitlements_of(lookups.user_purchases(user), rules.entitlements, T,
                           rules.entitlement_policy)


async def test_alone_answers_what_a_read_after_the_apply_gives(tmp_path: Path) -> None:
    config = make_config(tmp_path, entitlements=ENTITLEMENTS)
    rules = rules_from(config)
    store = Store(config.store)
    await store.open()
    try:
        def seed() -> None:  # created_ms is the apply's time
            for key, user, at, product in (
                    ("a", "u1", T - 1000, "premium"), ("b", "u1", T + 1000, "premium"),
                    ("d", "u2", T, "premium"), ("x", "u3", T - 5, "premium"),
                    ("y", "u4", T + 7, "premium")):
                pipeline.apply(_snap(key, user, product), rules, at)

        await store.write(seed)
        cases = [
            ("c", "u1"),  # new, between the user's two others (by created_ms)
            ("a", "u1"),  # the user's own purchase again
            ("e", "u2"),  # new, created the same ms as the user's other: read after
            ("f", "u5"),  # the user's first purchase
            ("y", "u4"),  # again, alone
        ]
        for key, user in cases:
            def run(key: str = key, user: str = user
                    ) -> tuple[list[Entitlement], list[Entitlement]]:
                (applied, ents), = writes.apply_verifies(
                    [VerifyWrite(_snap(key, user), None, rules, T, True)])
                assert applied.purchase is not None and applied.purchase.subject_key == key
                return ents, _read_after(user, rules)

            ents, expected = await store.write(run)
            assert ents == expected, (key, user)
            assert ents, (key, user)
        ents_u1 = [(e.product_id, e.subject_key) for e in (await store.read(
            lambda: _read_after("u1", rules)))]
        assert ents_u1 == [("premium", "a"), ("premium.monthly", "c"), ("premium", "b")]
    finally:
        await store.close()


def test_the_applied_row_goes_where_the_read_puts_it(tmp_path: Path) -> None:
    rules = rules_from(make_config(tmp_path, entitlements=ENTITLEMENTS))

    def view(key: str, created_ms: int, user: str = "u") -> PurchaseView:
        after = decide(_snap(key, user), None, user, rules, created_ms, {})[0]
        assert after.created_ms == created_ms
        return after

    a, b, c, d = view("a", 1), view("b", 3), view("c", 2), view("d", 3)
    assert writes._with_applied([a, b], c, None, "u") == [a, c, b]
    assert writes._with_applied([a, c], b, None, "u") == [a, c, b]
    assert writes._with_applied([b, c], a, None, "u") == [a, b, c]
    assert writes._with_applied([a, b], d, None, "u") is None  # a tie: read them
    assert writes._with_applied([], c, b, "u") is None  # the row keeps its created_ms
    assert writes._with_applied([a, b], view("c", 2, user="v"), None, "u") == [a, b]
