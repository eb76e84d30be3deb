"""Properties of the loader: any TOML document and any RELAY_* environment give a Config or a
ConfigError naming its source; a document of valid values gives a Config holding exactly
those values; one mistake planted in a valid document is reported, naming its key."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import typing
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import SECTIONS, Config, ConfigError, load_config, redacted

KEYS = {name: list(values) for name, values in redacted(Config()).items()
        if name in SECTIONS}
scalar = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False,
                                                         width=32),
                   st.booleans(), st.text(max_size=20))
value = st.one_of(scalar, st.lists(scalar, max_size=4))
section_names = st.sampled_from(list(SECTIONS) + ["servr", "downstream", "entitlements"])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        # TOML arrays may mix types since 1.0
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = []
    for section in draw(st.lists(section_names, max_size=4, unique=True)):
        if section == "downstream":
            lines.append("[[downstream]]")
        else:
            lines.append(f"[{section}]")
        known = KEYS.get(section, ["name", "url", "events", "x"])
        keys = draw(st.lists(st.sampled_from(known + ["prot", "bogus"]), max_size=4,
                             unique=True))
        for key in keys:
            lines.append(f'"{key}" = {toml_value(draw(value))}')
    return "\n".join(lines) + "\n"


env_names = st.sampled_from([f"RELAY_{s.upper().replace('.', '_')}__{k.upper()}"
                             for s, keys in KEYS.items() for k in keys]
                            + ["RELAY_NOPE__X", "RELAY_SERVER__PROT"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), env=st.dictionaries(env_names, st.text(max_size=12), max_size=3))
def test_loader_never_crashes(doc: str, env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "relay.toml"
        path.write_text(doc)
        try:
            cfg = load_config(path, environ=env)
        except ConfigError as exc:
            assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
            assert all(p.startswith((str(path), "env RELAY_")) for p in exc.problems), \
                exc.problems
        else:
            assert isinstance(cfg, Config)



# ---- valid documents load to exactly what they say; one planted mistake is named ---------

# Keys whose valid range is narrower than "a positive number" (relay.config.checks).
_RANGES: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("server", "port"): st.integers(0, 65535),
    ("server", "workers"): st.integers(1, 64),
    ("limits", "user_burst"): st.integers(1, 10**6),
    ("limits", "service_key_burst"): st.integers(1, 10**6),
}


def valid_values(section: str, key: str, hint: Any, default: Any) -> st.SearchStrategy[Any]:
    """Values `section.key` accepts: a number in range, any bool, else its default."""
    if (section, key) in _RANGES:
        return _RANGES[(section, key)]
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(1, 10**6)
    if hint is float:
        return st.integers(1, 10**6) | st.floats(0.5, 1e6, allow_nan=False)
    if isinstance(default, tuple):
        return st.just(list(default))
    return st.just(default)


def settable() -> list[tuple[str, str, Any, Any]]:
    out = []
    for name, (_, cls) in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            if (name, f.name) in (("server", "ingest_writer"), ("store", "url")):
                continue  # valid only with other keys (SQLite; a reachable database)
            out.append((name, f.name, hints[f.name], getattr(default, f.name)))
    return out


SETTABLE = settable()


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    chosen = draw(st.lists(st.sampled_from(SETTABLE), max_size=12,
                           unique_by=lambda t: (t[0], t[1])))
    doc: dict[str, dict[str, Any]] = {}
    for section, key, hint, default in chosen:
        doc.setdefault(section, {})[key] = draw(valid_values(section, key, hint, default))
    return doc


def render(doc: dict[str, dict[str, Any]], extra: str = "") -> str:
    lines = []
    for section, values in doc.items():
        lines.append(f"[{section}]")
        lines += [f'"{key}" = {toml_value(v)}' for key, v in values.items()]
    return "\n".join(lines) + "\n" + extra


def load(text: str) -> Config:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "relay.toml"
        path.write_text(text)
        return load_config(path, environ={})


@settings(max_examples=200, deadline=None)
@given(doc=valid_documents())
def test_a_valid_document_loads_to_exactly_its_values(doc: dict[str, dict[str, Any]]) -> None:
    cfg = load(render(doc))
    for section, values in doc.items():
        loaded = getattr(cfg, SECTIONS[section][0])
        for key, written in values.items():
            got = getattr(loaded, key)
            assert (list(got) if isinstance(got, tuple) else got) == written, (section, key)


MISTAKES = [
    ("[server]\nprot = 1\n", "[server] unknown key 'prot'"),
    ("[outbox]\nconcurrency = 'many'\n", "[outbox] concurrency: not an int"),
    ("[scheduler]\nenabled = 'yes'\n", "[scheduler] enabled: not a bool"),
    ("[limits]\nrestore_timeout_s = 0\n", "[limits] restore_timeout_s must be > 0"),
    ("[servr]\nport = 1\n", "unknown section [servr]"),
    ("[log]\nlevel = 'loud'\n", "[log] level must be"),
]


@settings(max_examples=200, deadline=None)
@given(doc=valid_documents(), mistake=st.sampled_from(MISTAKES))
def test_one_planted_mistake_is_reported_by_name(doc: dict[str, dict[str, Any]],
                                                 mistake: tuple[str, str]) -> None:
    text, expected = mistake
    section = text.split("]")[0].lstrip("[")
    doc.pop(section, None)  # the mistake's section appears once
    try:
        load(render(doc, text))
    except ConfigError as exc:
        assert any(expected in problem for problem in exc.problems), exc.problems
    else:
        raise AssertionError(f"loaded despite {text!r}")
