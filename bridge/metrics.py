"""Prometheus metrics (``/metrics``). Labels carry connection names and outcomes, never secrets.

Label values are bounded: a connection label is a configured connection's name, ``-`` when the
request named none, and ``unknown`` for any other name (``?connection=<random>`` or
``/hooks/<random>`` would otherwise add a series, and memory, per request).
"""

from __future__ import annotations

import platform
import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNKNOWN = "unknown"
NONE = "-"


class Metrics:
    """The bridge's metrics in a registry of its own (several bridges can live in one test process).
    ``connections`` are the configured names, the only connection labels besides ``-`` and ``unknown``."""

    def __init__(self, connections: Iterable[str] = ()) -> None:
        self.connections = frozenset(connections)
        self.registry = CollectorRegistry()
        self.deliveries = Counter("wpsb_deliveries", "Webhook deliveries by result", ["connection", "result"],
                                  registry=self.registry)
        self.jobs = Counter("wpsb_jobs", "Finished job runs by outcome", ["connection", "outcome"],
                            registry=self.registry)
        self.job_seconds = Histogram("wpsb_job_duration_seconds", "Duration of successful job runs",
                                     ["connection"], registry=self.registry)
        self.connections_closed = Counter("wpsb_http_connections_closed",
                                          "Connections the server closed early, by reason", ["reason"],
                                          registry=self.registry)
        self._delivery_children: dict[tuple[str, str], object] = {}
        self._job_children: dict[tuple[str, str], tuple] = {}
        self.batches = Counter("wpsb_wordpress_batches", "Batch upsert requests sent to WordPress",
                               registry=self.registry)
        self.batch_items = Counter("wpsb_wordpress_batch_items", "Upserts sent in batch requests",
                                   registry=self.registry)
        self.queue = Gauge("wpsb_jobs_in_state", "Jobs per state (counted at most every few seconds)",
                           ["state"],
                           registry=self.registry)
        self.loop_healthy = Gauge("wpsb_loop_healthy", "1 when the background loop's last round went through",
                                  ["loop"], registry=self.registry)
        self.claim_failures = Counter("wpsb_queue_claim_failures",
                                      "Claims of due jobs that failed (database errors)",
                                      registry=self.registry)
        self.finish_failures = Counter("wpsb_queue_finish_failures",
                                       "Writes of a job's result that failed and were retried",
                                       registry=self.registry)
        self._operational()

    def _operational(self) -> None:
        """What an operator alerts on: the version running, the queue's oldest wait, the services."""
        from bridge import __version__

        info = Gauge("wpsb_build_info", "Always 1; the labels say what runs", ["version", "python"],
                     registry=self.registry)
        info.labels(__version__, platform.python_version()).set(1)
        self.oldest_wait = Gauge("wpsb_oldest_queued_job_age_seconds",
                                 "Age of the oldest queued job at the last scrape (0: none waiting)",
                                 registry=self.registry)
        self.wordpress_up = Gauge("wpsb_wordpress_up",
                                  "1 when the last WordPress check (plugin status) passed",
                                  registry=self.registry)
        self.crm_up = Gauge("wpsb_crm_up", "1 when the connection's last CRM request was answered with our "
                            "credentials accepted (jobs' requests, or the probe after a quiet minute)",
                            ["connection"], registry=self.registry)

    def set_wordpress_up(self, up: bool | None) -> None:
        self.wordpress_up.set(1 if up else 0)

    def set_crm_up(self, connection: str, up: bool) -> None:
        self.crm_up.labels(connection).set(1 if up else 0)

    def label(self, connection: str | None) -> str:
        """The connection label for ``connection``: its name only when it is configured."""
        if connection is None:
            return NONE
        return connection if connection in self.connections else UNKNOWN

    def delivery(self, connection: str | None, result: str) -> None:
        key = (self.label(connection), result)
        child = self._delivery_children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per pair, not per delivery
            child = self._delivery_children[key] = self.deliveries.labels(*key)
        child.inc()

    def job_done(self, connection: str, outcome: str, duration_s: float) -> None:
        key = (self.label(connection), outcome)
        children = self._job_children.get(key)
        if children is None:  # as in delivery(): labels() once per pair, not per job
            children = self._job_children[key] = (self.jobs.labels(*key), self.job_seconds.labels(key[0]))
        children[0].inc()
        children[1].observe(duration_s)

    def job_retry(self, connection: str) -> None:
        self.jobs.labels(self.label(connection), "retry_scheduled").inc()

    def job_dead(self, connection: str) -> None:
        self.jobs.labels(self.label(connection), "dead").inc()

    def connection_closed(self, reason: str) -> None:
        """The server closed a connection early (``headers_timeout``, ``evicted``, ``refused``)."""
        self.connections_closed.labels(reason).inc()

    def claim_failed(self) -> None:
        self.claim_failures.inc()

    def finish_failed(self) -> None:
        self.finish_failures.inc()

    def wordpress_batch(self, items: int) -> None:
        self.batches.inc()
        self.batch_items.inc(items)

    def render(self, counts: dict[str, int], oldest_queued_at: float | None = None,
               loops: dict[str, bool] | None = None) -> bytes:
        """The text exposition, with the queue gauges refreshed from ``counts``, the oldest queued
        job's creation time (None: nothing waits) and the loops' health."""
        for state, n in counts.items():
            self.queue.labels(state).set(n)
        self.oldest_wait.set(max(0.0, time.time() - oldest_queued_at) if oldest_queued_at is not None
                             else 0.0)
        for loop, healthy in (loops or {}).items():
            self.loop_healthy.labels(loop).set(1 if healthy else 0)
        return generate_latest(self.registry)
