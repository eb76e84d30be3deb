"""Prometheus metrics: one registry per app (tests run several), families named once here."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from relay import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 21600, 86400)


class Metrics:
    """Every metric family relay exports; attributes are the prometheus_client objects."""

    def __init__(self) -> None:
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
