"""Typed application-state keys (kept apart so routes need not import app)."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver

from relay.attesto.client import AttestoClient
from relay.intake.link import IngestLink
from relay.metrics import Metrics
from relay.outbox.worker import Outbox
from relay.runtime import Runtime
from relay.scheduler.clock import Scheduler
from relay.store.database import Store
from relay.web.limits import InboundLimits

RUNTIME_KEY = web.AppKey("runtime", Runtime)
STORE_KEY = web.AppKey("store", Store)
HTTP_KEY = web.AppKey("http", aiohttp.ClientSession)
ATTESTO_KEY = web.AppKey("attesto", AttestoClient)
METRICS_KEY = web.AppKey("metrics", Metrics)
SCHEDULER_KEY = web.AppKey("scheduler", Scheduler)
INGEST_LINK_KEY = web.AppKey("ingest_link", IngestLink)  # only with [server] ingest_writer
LIMITS_KEY = web.AppKey("inbound_limits", InboundLimits)
OUTBOX_KEY = web.AppKey("outbox", Outbox)
# Tests map hostnames to addresses with their own resolver; the guard still wraps it.
RESOLVER_KEY = web.AppKey("outbox_resolver", AbstractResolver)
