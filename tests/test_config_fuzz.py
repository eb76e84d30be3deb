"""Property: any TOML document and any RELAY_* environment give a Config or a ConfigError."""

from __future__ import annotations

import json
import tempfile
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
