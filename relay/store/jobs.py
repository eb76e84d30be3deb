"""A write group's jobs: what the store thread runs for each caller, how the writes of one
commit group into units (every `write_many` item of one batch function together), and how
their futures settle on the callers' event loops once the group committed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("relay.store")


@dataclass(eq=False)
class Job:
    fn: Callable[[], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    notify: bool = True
    result: Any = None
    error: BaseException | None = field(default=None)
    batch: Callable[[list[Any]], list[Any]] | None = None  # write_many: fn is unused
    item: Any = None

    def call(self) -> Any:
        if self.batch is None:
            return self.fn()
        results = self.batch([self.item])
        return results[0]


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def settle_all(jobs: list[Job], listeners: Sequence[Callable[[], None]] = ()) -> None:
    for listener in listeners:  # commit listeners first: they see the rows before callers
        try:
            listener()
        except Exception:  # a listener's bug must not leave the writers waiting
            log.exception("commit listener %r failed", listener)
    for job in jobs:
        settle(job.future, job.result, job.error)


def group_units(writes: list[Job]) -> list[list[Job]]:
    """Group the writes of one commit: every `write_many` item of one batch function joins
    the unit of its first item; plain writes stay alone, in order."""
    units: list[list[Job]] = []
    batches: dict[int, list[Job]] = {}
    for job in writes:
        if job.batch is None:
            units.append([job])
            continue
        unit = batches.get(id(job.batch))
        if unit is None:
            unit = batches[id(job.batch)] = []
            units.append(unit)
        unit.append(job)
    return units


def unbatched() -> Any:
    raise AssertionError("a write_many job runs through its batch function")


class Rollback(Exception):
    """Roll back a one-job group whose function raised."""
