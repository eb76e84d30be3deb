"""`evolve`: `dataclasses.replace` for the hot path's frozen dataclasses, 3-4x cheaper. Pure.

`replace` walks the fields, builds a keyword dict and calls `__init__` by keyword on every
call (~7,000 calls per 4,000 webhook deliveries: a quarter of the store thread's Python).
`evolve` reads every field at once (`operator.attrgetter`, in C) and calls `__init__`
positionally. Same result for dataclasses whose fields are all `init` fields (no
`InitVar`, no `init=False`), which `_layout` checks.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


_Layout = tuple[dict[str, int], Callable[[Any], tuple[Any, ...]]]
_layouts: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    layout = _layouts.get(cls)
    if layout is None:
        layout = _layouts[cls] = _make_layout(cls)
    return layout


def _make_layout(cls: type) -> _Layout:
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields) or hasattr(cls, "__post_init__"):
        raise TypeError(f"evolve() needs a dataclass of init fields only, not {cls.__name__}")
    names = [f.name for f in fields]
    return {n: i for i, n in enumerate(names)}, operator.attrgetter(*names)


def evolve(obj: T, **changes: Any) -> T:
    """A copy of dataclass `obj` with `changes` (field name -> value); as
    `dataclasses.replace`, for dataclasses of two fields or more."""
    cls: type[Any] = type(obj)
    index, values_of = _layout(cls)
    values = list(values_of(obj))
    for name, value in changes.items():
        values[index[name]] = value
    result: T = cls(*values)
    return result
