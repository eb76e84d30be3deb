"""`relay` subcommands for the delivery queue (through the admin API) and `gen-secret`.

Registered by `cli.build_parser`; each returns an exit code (0 ok, 1 refused/unreachable,
78 no admin token). Tables by default, `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from relay.config import find_config_path, load_config
from relay.core.signing import generate_ed25519_keypair, generate_secret
from relay.service.admin_client import AdminClient, AdminError

AddParser = Callable[[str, str], argparse.ArgumentParser]
EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78


def _client(args: argparse.Namespace) -> AdminClient:
    config = load_config(find_config_path(args.config))
    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = args.url or os.environ.get("RELAY_ADMIN_URL") or f"http://{host}:{config.server.port}"
    token = os.environ.get("RELAY_ADMIN_TOKEN") or (
        config.credentials.admin_token.reveal() if config.credentials.admin_token else "")
    if not token:
        raise _NoToken
    return AdminClient(url, token)


class _NoToken(Exception):
    pass


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _age(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _show_endpoints(data: list[dict[str, Any]]) -> str:
    return _table([[e["name"], e["state"], e["queue"]["pending"], e["queue"]["held"],
                    e["queue"]["dead"], e["queue"]["failing"],
                    _age(e["queue"]["oldest_pending_age_s"]), e["in_flight"], e["url"]]
                   for e in data],
                  ["NAME", "STATE", "PENDING", "HELD", "DEAD", "FAILING", "OLDEST",
                   "IN-FLIGHT", "URL"])


def _show_deliveries(data: dict[str, Any]) -> str:
    text = _table([[d["id"], d["status"], d["endpoint"], d["subject"], d["sequence"],
                    d["attempts"], d["last_status"] or d["last_error"], d["event_type"],
                    d["created_at"]] for d in data["deliveries"]],
                  ["ID", "STATUS", "ENDPOINT", "SUBJECT", "SEQ", "ATTEMPTS", "LAST", "TYPE",
                   "CREATED"])
    if data.get("next_before"):
        text += f"\n(more: --before {data['next_before']})"
    return text


def _run(args: argparse.Namespace, call: Callable[[AdminClient], Any],
         show: Callable[[Any], str]) -> int:
    try:
        with _client(args) as client:
            result = call(client)
    except _NoToken:
        print("relay: no admin token: set RELAY_ADMIN_TOKEN or the admin-token credential",
              file=sys.stderr)
        return EX_CONFIG
    except AdminError as exc:
        print(f"relay: {exc.code}: {exc.message}", file=sys.stderr)
        return EX_FAILURE
    print(json.dumps(result, indent=2) if args.json else show(result))
    return EX_OK


def _gen_secret(args: argparse.Namespace) -> int:
    if args.ed25519:
        private, public = generate_ed25519_keypair()
        print(f"{private}\n# public key for consumers (v1a): {public}")
    else:
        print(generate_secret())
    return EX_OK


def register(add: AddParser) -> None:
    """Add the queue subcommands to the `relay` parser (`add` gives --config to each)."""
    def admin(name: str, help_: str) -> argparse.ArgumentParser:
        p = add(name, help_)
        p.add_argument("--url", default=None,
                       help="relay's base URL (RELAY_ADMIN_URL; default from [server])")
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")
        return p

    p = add("gen-secret", "print a new whsec_ signing secret for a downstream endpoint")
    p.add_argument("--ed25519", action="store_true",
                   help="print a whsk_ Ed25519 key (v1a) and its whpk_ public key instead")
    p.set_defaults(func=_gen_secret)

    admin("endpoints", "list endpoints with queue depth and oldest pending age").set_defaults(
        func=lambda a: _run(a, lambda c: c.endpoints(), _show_endpoints))

    p = admin("deliveries", "list deliveries, newest first")
    p.add_argument("--status", choices=["pending", "held", "delivered", "dead", "failed"])
    p.add_argument("--endpoint")
    p.add_argument("--subject", help="platform:subject_key, e.g. apple:2000000123")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, help="page: show ids below this one")
    p.set_defaults(func=lambda a: _run(a, lambda c: c.deliveries(
        status=a.status, endpoint=a.endpoint, subject=a.subject, limit=a.limit,
        before=a.before), _show_deliveries))

    p = admin("delivery", "show one delivery with its attempts and event")
    p.add_argument("id", type=int)
    p.set_defaults(func=lambda a: _run(a, lambda c: c.delivery(a.id),
                                       lambda r: json.dumps(r, indent=2)))

    p = admin("retry", "send one delivery again now (its schedule starts over)")
    p.add_argument("id", type=int)
    p.set_defaults(func=lambda a: _run(a, lambda c: c.retry(a.id),
                                       lambda r: f"delivery {r['id']}: {r['status']}"))

    p = admin("recover", "reopen every dead or failing delivery created since a time")
    p.add_argument("--since", required=True, help="ISO-8601 time, e.g. 2026-05-01T00:00:00Z")
    p.add_argument("--until")
    p.add_argument("--endpoint")
    p.add_argument("--dry-run", action="store_true", help="only count them")
    p.set_defaults(func=lambda a: _run(a, lambda c: c.recover(
        a.since, until=a.until, endpoint=a.endpoint, dry_run=a.dry_run),
        lambda r: (f"{r['matched']} deliveries match (dry run)" if r["dry_run"]
                   else f"{r['reopened']} deliveries reopened")))

    p = admin("replay", "send the events of a subject or a time range to an endpoint again")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--subject", help="platform:subject_key")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--dry-run", action="store_true", help="only count them")
    p.set_defaults(func=lambda a: _run(a, lambda c: c.replay(
        a.endpoint, subject=a.subject, since=a.since, until=a.until, dry_run=a.dry_run),
        lambda r: (f"{r['matched']} events match (dry run)" if r["dry_run"] else
                   f"{r['enqueued']} events queued to {r['endpoint']}"
                   + (" (held: the endpoint is paused)" if r["held"] else "")
                   + (" (truncated)" if r["truncated"] else ""))))

    admin("due", "show the re-poll queue: rows due now and the oldest overdue").set_defaults(
        func=lambda a: _run(a, lambda c: c.due(), lambda r: (
            f"{r['due']} due now; oldest due since {r['oldest_due_at'] or '-'} "
            f"(overdue {r['overdue_s'] if r['overdue_s'] is not None else 0}s); "
            f"scheduler {r['scheduler']}")))

    p = admin("resync", "re-poll a purchase (or all of a user's) through Attesto now")
    p.add_argument("platform", nargs="?", choices=["apple", "google"])
    p.add_argument("subject_key", nargs="?")
    p.add_argument("--user", help="every purchase of this user id")

    def resync(a: argparse.Namespace) -> int:
        if a.user is None and (a.platform is None or a.subject_key is None):
            print("relay resync: give PLATFORM SUBJECT_KEY, or --user ID", file=sys.stderr)
            return 2
        return _run(a, lambda c: c.resync(platform=a.platform, subject_key=a.subject_key,
                                          user_id=a.user),
                    lambda r: "\n".join(f"{x['platform']}:{x['subject_key']}: {x['outcome']}"
                                        f" (state {x['state']})" for x in r["results"]))

    p.set_defaults(func=resync)

    for verb, what in (("pause", "hold an endpoint's deliveries (kept across restarts)"),
                       ("resume", "send an endpoint's held deliveries and new events again")):
        p = admin(verb, what)
        p.add_argument("name")
        p.set_defaults(func=lambda a, verb=verb: _run(
            a, lambda c: getattr(c, verb)(a.name),
            lambda r: f"{r['endpoint']}: {r['state']} "
                      f"({r.get('held', r.get('released'))} deliveries "
                      f"{'held' if 'held' in r else 'released'})"))
