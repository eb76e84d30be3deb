"""The re-poll queue seen from the tests."""

from __future__ import annotations

from typing import Any

from relay.web.appkeys import SCHEDULER_KEY, STORE_KEY


async def due_now(client: Any) -> int:
    sched = client.app[SCHEDULER_KEY]
    assert sched.poller is not None
    now = sched.runtime.now_ms()
    from relay.scheduler.repoll import claim_due

    views = await client.app[STORE_KEY].write(lambda: claim_due(now, 100))
    for view in views:
        await sched.poller.poll_one(view)
    return len(views)
