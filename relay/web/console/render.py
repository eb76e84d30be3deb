"""HTML rendering: one Jinja2 environment with autoescape on for every template.

Every value a page shows (purchase fields, event bodies, error texts: much of it comes
from outside) is escaped unless a template says otherwise, and only the SVG plots
(`plots.py`, which escapes its own text) are marked safe. Undefined names fail loudly.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jinja2


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("relay.web.console", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(ts=timestamp, ago=ago, age=age, pretty=pretty_json)
    return env


def load_templates(env: jinja2.Environment) -> None:
    """Read and compile every template now (at start, off the loop), not on first use."""
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)


def timestamp(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: float | None) -> str:
    """A duration in words: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    s = int(abs(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    delta = (now_ms - ms) / 1000
    return f"{age(delta)} ago" if delta >= 0 else f"in {age(delta)}"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def render(env: jinja2.Environment, name: str, **context: Any) -> str:
    return env.get_template(name).render(**context)
