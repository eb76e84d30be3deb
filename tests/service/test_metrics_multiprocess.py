"""`workers` > 1: `GET /metrics` on any worker sums every worker's counters and histograms and
answers the queue gauges its own scrape just read, each family once.

prometheus_client picks in-memory or file-backed values when it is imported, so each worker
here is a subprocess started with PROMETHEUS_MULTIPROC_DIR set, as the supervisor does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]

# A worker that counted things and answered a scrape when the config still had an endpoint
# that a reload has removed since.
WORKER = """
import sys
from relay.metrics import Metrics
n = int(sys.argv[1])
m = Metrics()
m.webhooks.labels("accepted", "").inc(n)
m.attesto_latency.labels("apple").observe(0.02 * n)
m.repolls.labels(f"worker{n}").inc()
m.outbox_depth.labels("removed", "pending").set(7)
m.outbox_oldest.labels("removed").set(600)
m.due_queue.set(40 + n)
if len(sys.argv) > 2:  # stay alive until the test closes stdin
    print("counted", flush=True)
    sys.stdin.read()
"""

# The worker the scrape lands on: a real app, one webhook counted, then GET /metrics.
SCRAPER = """
import asyncio, sys
from pathlib import Path
from aiohttp.test_utils import TestClient, TestServer
from relay.web.app import create_app
from relay.web.appkeys import METRICS_KEY
from relay.config import DownstreamConfig
from tests.conftest import ADMIN_TOKEN, auth, make_config

async def main() -> None:
    app = create_app(make_config(Path(sys.argv[1]), downstream=(
        DownstreamConfig(name="app", url="http://127.0.0.1:9/hook"),)))
    app[METRICS_KEY].webhooks.labels("accepted", "").inc()
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/metrics", headers=auth(ADMIN_TOKEN))
        assert resp.status == 200, resp.status
        sys.stdout.write(await resp.text())

asyncio.run(main())
"""


def worker_env(shared: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_TEST_POSTGRES_URL"}  # SQLite
    return env | {"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(ROOT)}


def test_a_scrape_sums_workers_and_reads_its_own_gauges(tmp_path: Path) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = worker_env(shared)
    subprocess.run([sys.executable, "-c", WORKER, "1"], env=env, cwd=ROOT, check=True,
                   timeout=60)  # exited before the scrape
    alive = subprocess.Popen([sys.executable, "-c", WORKER, "2", "stay"], env=env, cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout is not None and alive.stdout.readline() == "counted\n"
        # -W error: a warning on every scrape (clear() in multiprocess mode) fails it
        scrape = subprocess.run([sys.executable, "-W", "error", "-c", SCRAPER, str(tmp_path)],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        alive.communicate("", timeout=60)
    assert scrape.returncode == 0, scrape.stderr
    text = scrape.stdout

    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert len(comments) == len(set(comments))
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    assert not [k for k in samples if "pid" in dict(k[1])]

    def labelsets(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {ls: v for (n, ls), v in samples.items() if n == name}

    # counters and histograms: 1 (exited) + 2 (alive) + 1 (the scraper)
    assert labelsets("relay_webhooks_total") == {(("outcome", "accepted"), ("reason", "")): 4}
    assert labelsets("relay_repoll_total") == {(("outcome", "worker1"),): 1,
                                               (("outcome", "worker2"),): 1}
    assert labelsets("relay_apple_renewal_not_seen_total") == {(): 0}
    apple = (("endpoint", "apple"),)
    assert labelsets("relay_attesto_request_seconds_count") == {apple: 2}
    assert labelsets("relay_attesto_request_seconds_sum")[apple] == pytest.approx(0.06)
    buckets = labelsets("relay_attesto_request_seconds_bucket")
    assert buckets[apple + (("le", "0.025"),)] == 1
    assert buckets[apple + (("le", "0.05"),)] == 2
    assert buckets[apple + (("le", "+Inf"),)] == 2
    # gauges: what this scrape read from its (empty) store, nothing from the other workers
    assert labelsets("relay_outbox_depth") == {
        (("endpoint", "app"), ("status", status)): 0 for status in ("dead", "held", "pending")}
    assert labelsets("relay_outbox_oldest_pending_age_seconds") == {(("endpoint", "app"),): 0}
    assert labelsets("relay_due_queue_size") == {(): 0}
    assert labelsets("relay_due_queue_overdue_seconds") == {(): 0}
    assert labelsets("relay_build_info") == {(("version", __version__),): 1}


def test_a_directory_set_after_prometheus_client_was_imported_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics()
