"""The `relay` command line: serve, check-config, migrate, reproject, ... Exit codes: 0, 1,
2 usage, 78 config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from relay import __version__, systemd
from relay.config import Config, ConfigError, find_config_path, load_config, redacted
from relay.core.errors import StoreUnavailableError
from relay.log import AccessLogger, configure_logging
from relay.service import cli_admin, cli_reproject, workers
from relay.store.migrations import SchemaError
from relay.web.app import create_app
from relay.web.appkeys import ATTESTO_KEY, LIMITS_KEY, OUTBOX_KEY, RUNTIME_KEY

log = logging.getLogger("relay.cli")

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78


def _load(path: str | None) -> Config:
    if path == "(defaults)":
        path = None
    found = find_config_path(path)
    return load_config(found)


async def reload(app: web.Application, path: str | None) -> bool:
    """Re-read relay.toml and credentials; keep the running config if the new one is invalid."""
    systemd.notify("RELOADING=1")
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, _load, path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s",
                  "; ".join(exc.problems))
        systemd.notify("READY=1\nSTATUS=reload refused (see log)")
        return False
    outbox = app.get(OUTBOX_KEY)
    usable: list[str] = []
    try:
        if outbox is not None:
            usable = outbox.reconfigure(new)  # refuses (ConfigError) an unusable endpoint
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s",
                  "; ".join(exc.problems))
        systemd.notify("READY=1\nSTATUS=reload refused (see log)")
        return False
    runtime = app[RUNTIME_KEY]
    old = runtime.config
    for key in ("server", "store"):
        if getattr(new, key) != getattr(old, key):
            log.warning("reload: [%s] changes take effect only after a restart", key)
    if (new.console.enabled, new.console.path) != (old.console.enabled, old.console.path):
        log.warning("reload: [console] enabled and path take effect only after a restart")
    attesto = app.get(ATTESTO_KEY)
    if attesto is not None:
        attesto.reconfigure(new.attesto, new.credentials.attesto_api_key)
        if old.credentials.attesto_api_key is None and new.credentials.attesto_api_key:
            log.warning("reload: the Attesto API key is new; verifies use it now, "
                        "re-polls start after a restart")
    app[LIMITS_KEY].reconfigure(new.limits)
    runtime.replace(new)
    log.info("configuration reloaded from %s", new.source)
    if outbox is not None and usable:
        try:
            await outbox.release_held(usable)
        except Exception as exc:  # the rows stay held; `relay resume` or a restart sends them
            log.error("reload: the held deliveries of %s were not released: %s",
                      ", ".join(usable), exc)
    systemd.notify("READY=1\nSTATUS=serving")
    return True


async def serve(config: Config, stop: asyncio.Event | None = None,
                config_path: str | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set): bind, READY=1, wait, STOPPING=1, clean up.

    SIGHUP re-reads the configuration (`reload`)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    app = create_app(config)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload(app, config_path or config.source))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig, handler in ((signal.SIGTERM, stop.set), (signal.SIGINT, stop.set),
                         (signal.SIGHUP, on_hup)):
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    # keepalive_timeout also runs from the moment a connection opens until its request
    # line and headers are complete (aiohttp closes a connection still waiting for one):
    # it is the header timeout, and the idle keep-alive bound. Reading the unread rest of
    # a body after an answer (lingering) is bounded the same way.
    header_s = config.server.header_timeout_s
    runner = web.AppRunner(app, shutdown_timeout=config.server.shutdown_timeout_s,
                           access_log_class=AccessLogger, handle_signals=False,
                           keepalive_timeout=header_s, lingering_time=min(10.0, header_s))
    await runner.setup()
    try:
        inherited = workers.inherited_socket()
        site: web.BaseSite
        if inherited is not None:  # a worker: the supervisor bound the port and logged it
            site = web.SockSite(runner, inherited)
        else:
            site = web.TCPSite(runner, config.server.host, config.server.port,
                               reuse_address=True)
        await site.start()
        if inherited is None:
            for address in runner.addresses:
                log.info("listening on http://%s:%s", *address[:2])
        systemd.notify("READY=1\nSTATUS=serving")
        await stop.wait()
        log.info("shutting down (waiting up to %.0fs for in-flight requests)",
                 config.server.shutdown_timeout_s)
        systemd.notify("STOPPING=1")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")


def _toml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _print_config(config: Config) -> None:
    data = redacted(config)
    print(f"# effective configuration (source: {config.source}); credentials redacted")
    for section, values in data.items():
        if section in ("downstream", "products"):
            for ds in values:
                print(f"\n[[{section}]]")
                for key, value in ds.items():
                    print(f"{key} = {_toml_value(value)}")
            continue
        print(f"\n[{section}]")
        for key, value in values.items():
            shown = f'"{key}"' if section in ("entitlements", "credentials") else key
            print(f"{shown} = {_toml_value(value)}")
    disabled = config.disabled_features()
    if disabled:
        print("\n# disabled until their credential is set:")
        for line in disabled:
            print(f"#   {line}")


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _print_config(config)
    return EX_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    configure_logging(config.log.level, config.log.format)
    worker = workers.worker_name()
    log.info("relay %s starting (config: %s)%s", __version__, config.source,
             f" as worker {worker}, pid {os.getpid()}" if worker else "")
    try:
        if config.server.supervised and worker is None:
            return asyncio.run(workers.supervise(config, args.config))
        asyncio.run(serve(config, config_path=args.config))
    except SchemaError as exc:
        log.error("%s", exc)
        return EX_FAILURE
    except (OSError, StoreUnavailableError) as exc:
        log.error("cannot start: %s", exc)
        return EX_FAILURE
    return EX_OK


def _cmd_ingest_writer(args: argparse.Namespace) -> int:
    from relay.intake.writer import serve_writer

    config = _load(args.config)
    configure_logging(config.log.level, config.log.format)
    log.info("relay %s ingest writer starting (config: %s), pid %d", __version__,
             config.source, os.getpid())
    return serve_writer(config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from relay.store.database import Store

    config = _load(args.config)
    configure_logging(config.log.level, config.log.format)

    async def run() -> int:
        store = Store(config.store)
        version = await store.open(migrate=True)
        await store.close()
        return version

    version = asyncio.run(run())
    print(f"schema is at version {version}")
    return EX_OK


def _cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.store.backup import BackupError, backup_sqlite
    from relay.store.connection import resolve_sqlite_path

    config = _load(args.config)
    if config.store.url:
        print("relay backup copies the SQLite store; for PostgreSQL use pg_dump",
              file=sys.stderr)
        return EX_FAILURE
    source = resolve_sqlite_path(config.store.path)
    try:
        version = backup_sqlite(source, Path(args.path))
    except (BackupError, OSError) as exc:
        print(f"relay backup: {exc}", file=sys.stderr)
        return EX_FAILURE
    print(f"backed up {source} to {args.path} (schema {version})")
    return EX_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from relay.service import demo

    configure_logging("warning", "plain")
    asyncio.run(demo.run())
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", "-c", default=None,
                       help="relay.toml to load (default ./relay.toml, then "
                            "/etc/relay/relay.toml); keys overridable by RELAY_<SECTION>__<KEY>")
        return p

    add("serve", "run the daemon").set_defaults(func=_cmd_serve)
    add("check-config", "print the effective configuration, secrets redacted").set_defaults(
        func=_cmd_check_config)
    add("migrate", "apply pending database migrations").set_defaults(func=_cmd_migrate)
    add("ingest-writer", "the webhook writer process `relay serve` starts with [server] "
        "ingest_writer (not run by hand)").set_defaults(func=_cmd_ingest_writer)
    backup = add("backup", "copy the SQLite store consistently while relay runs")
    backup.add_argument("path", help="where to write the copy (must not exist)")
    backup.set_defaults(func=_cmd_backup)
    sub.add_parser("demo", help="walk an Apple and a Google subscription through relay on "
                   "loopback (built-in Attesto simulator; nothing to configure)").set_defaults(
        func=_cmd_demo)
    cli_admin.register(add)
    cli_reproject.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print("relay: configuration error:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EX_FAILURE
