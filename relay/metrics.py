"""Prometheus metrics: the families (named once here, one registry per app: tests run several)
and their text exposition, which with `[server] workers` > 1 sums every worker's counters.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from relay import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400)


class Metrics:
    """Every metric family relay exports; attributes are the prometheus_client objects.

    With workers, one per process: its values live in files keyed by name and labels.
    """

    def __init__(self) -> None:
        self.shared_dir = workers_shared_dir()
        if self.shared_dir is not None:  # exposition() reads no gauge file, clear() is fine
            warnings.filterwarnings("ignore", "Clearing labels has not been implemented",
                                    UserWarning, r"prometheus_client\.metrics")
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Info("relay_build", "relay build information", registry=r)
        self.build_info.info({"version": __version__})
        self.webhooks = Counter("relay_webhooks_total", "Attesto deliveries by outcome",
                                ["outcome", "reason"], registry=r)
        self.verifies = Counter("relay_verify_total", "verify/restore calls by outcome",
                                ["platform", "outcome"], registry=r)
        self.attesto_latency = Histogram("relay_attesto_request_seconds",
                                         "Attesto call latency", ["endpoint"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.attesto_errors = Counter("relay_attesto_errors_total", "Attesto errors by code",
                                      ["code"], registry=r)
        self.outbox_depth = Gauge("relay_outbox_depth",
                                  "deliveries not yet delivered, by endpoint and status",
                                  ["endpoint", "status"], registry=r)
        self.outbox_oldest = Gauge("relay_outbox_oldest_pending_age_seconds",
                                   "age of the oldest pending delivery", ["endpoint"],
                                   registry=r)
        self.delivery_attempts = Counter("relay_delivery_attempts_total",
                                         "delivery attempts by outcome",
                                         ["endpoint", "outcome"], registry=r)
        self.delivery_latency = Histogram("relay_delivery_latency_seconds",
                                          "from receiving an input to its delivery",
                                          ["endpoint"], buckets=_DELIVERY_BUCKETS, registry=r)
        self.due_queue = Gauge("relay_due_queue_size", "purchases due for a re-poll",
                               registry=r)
        self.due_overdue = Gauge("relay_due_queue_overdue_seconds",
                                 "how long the oldest due purchase has waited", registry=r)
        self.repolls = Counter("relay_repoll_total", "re-polls by outcome", ["outcome"],
                               registry=r)
        self.renewal_not_seen = Counter(
            "relay_apple_renewal_not_seen_total",
            "Apple subscriptions expired because no renewal was seen (lost webhooks?)",
            registry=r)
        self._webhook_children: dict[tuple[str, str], Any] = {}

    def webhook(self, outcome: str, reason: str) -> Any:
        """`webhooks.labels(outcome, reason)`, its child kept: labels() takes a lock and
        checks its arguments on every call (~1 µs per delivery); the child is the same."""
        key = (outcome, reason)
        child = self._webhook_children.get(key)
        if child is None:
            child = self._webhook_children[key] = self.webhooks.labels(outcome, reason)
        return child


def workers_shared_dir() -> str | None:
    """The directory where worker processes keep their counters (PROMETHEUS_MULTIPROC_DIR,
    set by the supervisor when `workers` > 1), or None: one process, counters in memory.

    prometheus_client decides between the two when it is imported; a directory set after
    that would hold nothing, so the mismatch is refused instead of exporting wrong totals.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if (path is not None) != values.ValueClass._multiprocess:
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set (or unset) before "
                           "prometheus_client is first imported")
    return path


def exposition(metrics: Metrics) -> bytes:
    """The Prometheus text `GET /metrics` answers: single-process or summed across workers."""
    if metrics.shared_dir is None:
        return generate_latest(metrics.registry)
    return generate_latest(_AcrossWorkers(metrics.registry, metrics.shared_dir))


class _AcrossWorkers:
    """Counters and histograms summed over every worker's file, those of exited workers too
    (totals never go back); gauges and build info from this process's registry only. The
    gauges are set from the store on each scrape; a gauge's file would also keep label sets
    that `clear()` dropped (an endpoint removed on reload) and the values of other workers.
    """

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        self._registry, self._path = registry, path

    def collect(self) -> Iterable[Metric]:
        mine = [m for m in self._registry.collect() if m.type in ("gauge", "info")]
        files = glob.glob(os.path.join(self._path, "*.db"))
        summed = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        return mine + [m for m in summed if m.type in ("counter", "histogram")]


def counter_totals(metrics: Metrics, sample: str, label: str) -> dict[str, float]:
    """Counter sample `sample` (e.g. relay_webhooks_total) summed per value of `label`, as a
    scrape sees it: with workers, across every worker's file (file I/O: off the loop)."""
    source = (metrics.registry if metrics.shared_dir is None
              else _AcrossWorkers(metrics.registry, metrics.shared_dir))
    out: dict[str, float] = {}
    for family in source.collect():
        for s in family.samples:
            if s.name == sample:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out
