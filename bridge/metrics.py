"""Prometheus metrics (``/metrics``). Labels carry connection names and outcomes, never secrets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The bridge's metrics in a registry of its own (several bridges can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter("wpsb_deliveries", "Webhook deliveries by result", ["connection", "result"], registry=self.registry)
        self.jobs = Counter("wpsb_jobs", "Finished job runs by outcome", ["connection", "outcome"], registry=self.registry)
        self.job_seconds = Histogram("wpsb_job_duration_seconds", "Duration of successful job runs", ["connection"], registry=self.registry)
        self._delivery_children: dict[tuple[str, str], object] = {}
        self.queue = Gauge("wpsb_jobs_in_state", "Jobs per state (counted at most every few seconds)", ["state"],
                           registry=self.registry)
        self.loop_healthy = Gauge("wpsb_loop_healthy", "1 when the background loop's last round went through",
                                  ["loop"], registry=self.registry)
        self.claim_failures = Counter("wpsb_queue_claim_failures",
                                      "Claims of due jobs that failed (database errors)", registry=self.registry)
        self.finish_failures = Counter("wpsb_queue_finish_failures",
                                       "Writes of a job's result that failed and were retried",
                                       registry=self.registry)

    def delivery(self, connection: str | None, result: str) -> None:
        key = (connection or "-", result)
        child = self._delivery_children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: once per pair, not per delivery
            child = self._delivery_children[key] = self.deliveries.labels(*key)
        child.inc()

    def job_done(self, connection: str, outcome: str, duration_s: float) -> None:
        self.jobs.labels(connection, outcome).inc()
        self.job_seconds.labels(connection).observe(duration_s)

    def job_retry(self, connection: str) -> None:
        self.jobs.labels(connection, "retry_scheduled").inc()

    def job_dead(self, connection: str) -> None:
        self.jobs.labels(connection, "dead").inc()

    def claim_failed(self) -> None:
        self.claim_failures.inc()

    def finish_failed(self) -> None:
        self.finish_failures.inc()

    def render(self, counts: dict[str, int], loops: dict[str, bool] | None = None) -> bytes:
        """The text exposition, with the queue and loop gauges refreshed from ``counts`` and ``loops``."""
        for state, n in counts.items():
            self.queue.labels(state).set(n)
        for loop, healthy in (loops or {}).items():
            self.loop_healthy.labels(loop).set(1 if healthy else 0)
        return generate_latest(self.registry)
