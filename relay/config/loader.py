"""Loading: `relay.toml`, then `RELAY_<SECTION>__<KEY>` overrides, then credentials, into a
`Config`; every problem reported at once in one `ConfigError`. And the redacted view
`relay check-config` prints."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from relay.config.checks import _suggest, _validate, redact_url
from relay.config.sections import SECTIONS, Config, ConfigError, DownstreamConfig, ProductConfig
from relay.credentials import load_credentials

T = TypeVar("T")

DEFAULT_CONFIG_PATHS = (Path("relay.toml"), Path("/etc/relay/relay.toml"))

ENV_PREFIX = "RELAY_"

_TABLE_SECTIONS = ("entitlements", "downstream", "products")

_TRUE = {"true", "1", "yes", "on"}

_FALSE = {"false", "0", "no", "off"}


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, from_env: bool) -> Any:
    """Convert one TOML value (or env string) to the field type; ValueError if it can't."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if from_env:
            parts = [p.strip() for p in str(value).split(",")] if str(value).strip() else []
            return tuple(_coerce(p, item, True) for p in parts)
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, item, False) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise ValueError(f"not a bool ({value!r}); use true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"not an int ({value!r})")
        if isinstance(value, int):
            return value
        if from_env:
            try:
                return int(str(value).strip())
            except ValueError:
                pass
        raise ValueError(f"not an int ({value!r})")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"not a number ({value!r})")
        if isinstance(value, int | float):
            return float(value)
        if from_env:
            try:
                return float(str(value).strip())
            except ValueError:
                pass
        raise ValueError(f"not a number ({value!r})")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"not a string ({value!r})")
    raise ValueError(f"unsupported type {hint!r}")  # pragma: no cover - programming error


def _build_section(cls: type[Any], table: Mapping[str, Any], where: str,
                   problems: list[str]) -> dict[str, Any]:
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in types_:
            problems.append(f"{where} unknown key {key!r}{_suggest(key, list(types_))}")
            continue
        try:
            values[key] = _coerce(raw, types_[key], from_env=False)
        except ValueError as exc:
            problems.append(f"{where} {key}: {exc}")
    return values


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
    return {}


def _flatten_sections(doc: Mapping[str, Any], src: str,
                      problems: list[str]) -> dict[str, Mapping[str, Any]]:
    """Map the TOML document to {'server': {...}, 'auth.jwt': {...}, ...}."""
    known = list(SECTIONS) + list(_TABLE_SECTIONS) + ["auth"]
    out: dict[str, Mapping[str, Any]] = {}
    for name, table in doc.items():
        if name == "auth":
            if not isinstance(table, dict):
                problems.append(f"{src}: [auth] must be a table")
                continue
            for sub, subtable in table.items():
                full = f"auth.{sub}"
                if full not in SECTIONS or not isinstance(subtable, dict):
                    problems.append(f"{src}: unknown section [{full}]"
                                    f"{_suggest(full, list(SECTIONS))}")
                    continue
                out[full] = subtable
        elif name in SECTIONS or name in _TABLE_SECTIONS:
            out[name] = table
        else:
            problems.append(f"{src}: unknown section [{name}]{_suggest(name, known)}")
    return out


def _env_overrides(environ: Mapping[str, str], problems: list[str]
                   ) -> dict[str, dict[str, tuple[str, str]]]:
    """Collect RELAY_<SECTION>__<KEY> variables: {section: {key: (value, var)}}."""
    env_names = {name.upper().replace(".", "_"): name for name in SECTIONS}
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section_part, _, key_part = var[len(ENV_PREFIX):].partition("__")
        if section_part in ("DOWNSTREAM", "ENTITLEMENTS", "PRODUCTS"):
            problems.append(f"env {var}: [{section_part.lower()}] can only be set in the file")
            continue
        section = env_names.get(section_part)
        if section is None:
            problems.append(f"env {var}: unknown section {section_part.lower()!r}"
                            f"{_suggest(section_part, list(env_names))}")
            continue
        out.setdefault(section, {})[key_part.lower()] = (value, var)
    return out


def _array_of_tables(sections: Mapping[str, Any], name: str, cls: type[T],
                     required: tuple[str, ...], src: str, problems: list[str]) -> list[T]:
    """Build `[[name]]` tables into `cls` instances; problems name the table's position."""
    tables: Any = sections.get(name, [])
    if not isinstance(tables, list):
        problems.append(f"{src}: {name} must be an array of tables ([[{name}]])")
        return []
    out: list[T] = []
    for i, table in enumerate(tables):
        where = f"{src}: [[{name}]] #{i + 1}"
        missing = [k for k in required if k not in table]
        if missing:
            problems.append(f"{where} missing required key(s): {', '.join(missing)}")
            continue
        values = _build_section(cls, table, where, problems)
        if all(k in values for k in required):
            out.append(cls(**values))
    return out


def find_config_path(explicit: str | Path | None) -> Path | None:
    """The file to load: the one given, else ./relay.toml, else /etc/relay/relay.toml."""
    if explicit is not None:
        return Path(explicit)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None,
                credentials_dir: str | Path | None = None) -> Config:
    """Load file, then RELAY_* overrides, then credentials; raise ConfigError listing all."""
    environ = dict(os.environ if environ is None else environ)
    if credentials_dir is None:
        credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    problems: list[str] = []
    src = str(path) if path is not None else "(defaults)"
    doc = _read_toml(Path(path), problems) if path is not None else {}
    sections = _flatten_sections(doc, src, problems)
    env = _env_overrides(environ, problems)

    kwargs: dict[str, Any] = {}
    for name, (attr, cls) in SECTIONS.items():
        table = sections.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{src}: [{name}] must be a table")
            table = {}
        values = _build_section(cls, table, f"{src}: [{name}]", problems)
        types_ = _field_types(cls)
        for key, (raw, var) in env.get(name, {}).items():
            if key not in types_:
                problems.append(f"env {var}: [{name}] unknown key {key!r}"
                                f"{_suggest(key, list(types_))}")
                continue
            try:
                values[key] = _coerce(raw, types_[key], from_env=True)
            except ValueError as exc:
                problems.append(f"env {var}: [{name}] {key}: {exc}")
        kwargs[attr] = cls(**values)

    ent_table = sections.get("entitlements", {})
    entitlements: dict[str, tuple[str, ...]] = {}
    if not isinstance(ent_table, dict):
        problems.append(f"{src}: [entitlements] must be a table of product id = [keys]")
    else:
        for product, keys in ent_table.items():
            if (not isinstance(keys, list) or not keys
                    or not all(isinstance(k, str) and k for k in keys)):
                problems.append(f"{src}: [entitlements] {product!r} must be a non-empty list "
                                "of entitlement keys")
                continue
            entitlements[product] = tuple(keys)

    downstream = _array_of_tables(sections, "downstream", DownstreamConfig, ("name", "url"),
                                  src, problems)
    products = _array_of_tables(sections, "products", ProductConfig, ("id", "type"), src,
                                problems)

    creds_problems: list[str] = []
    credentials = load_credentials([d.name for d in downstream], credentials_dir, environ,
                                   creds_problems)
    problems.extend(creds_problems)
    if credentials.database_url is not None:  # file, then environment, then credentials
        kwargs["store"] = dataclasses.replace(kwargs["store"],
                                              url=credentials.database_url.reveal())
    cfg = Config(**kwargs, entitlements=types.MappingProxyType(entitlements),
                 downstream=tuple(downstream), products=tuple(products),
                 credentials=credentials, source=src)
    problems.extend(_validate(cfg, src))
    if problems:
        raise ConfigError(problems)
    return cfg


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, credentials reduced to set/missing and
    every URL redacted (`redact_url`)."""
    def shown(section: Any) -> dict[str, Any]:
        return {k: redact_url(v) if isinstance(v, str) and "://" in v else v
                for k, v in dataclasses.asdict(section).items()}

    out: dict[str, Any] = {}
    for name, (attr, _cls) in SECTIONS.items():
        out[name] = shown(getattr(cfg, attr))
    out["entitlements"] = {k: list(v) for k, v in cfg.entitlements.items()}
    out["downstream"] = [shown(d) for d in cfg.downstream]
    out["products"] = [dataclasses.asdict(p) for p in cfg.products]
    c = cfg.credentials

    def state(v: object) -> str:
        if isinstance(v, tuple):
            return f"set ({len(v)} value{'s' if len(v) != 1 else ''})" if v else "missing"
        return "set" if v is not None else "missing"

    out["credentials"] = {
        "attesto-api-key": state(c.attesto_api_key),
        "attesto-webhook-secret": state(c.attesto_webhook_secrets),
        "api-keys": ", ".join(n for n, _ in c.api_keys) if c.api_keys else "missing",
        "admin-token": state(c.admin_token),
        "console-password": state(c.console_password),
        "jwt-key": state(c.jwt_key),
        "metrics-token": state(c.metrics_token),
        "database-url": state(c.database_url),
        **{f"downstream-{n}-secret": state(v) for n, v in c.downstream_secrets.items()},
    }
    return out
