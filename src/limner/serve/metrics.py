"""Prometheus metrics, in a registry of the app's own (two apps in one process do not collide)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("limner_queue_depth", "jobs waiting to run", registry=self.registry)
        self.running = Gauge("limner_running_jobs", "jobs being drawn now", registry=self.registry)
        self.latency = Histogram("limner_job_latency_seconds", "submission to finish, by final status",
                                 ["status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.generation = Histogram("limner_batch_seconds", "one pipeline call (a batch of jobs)",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("limner_batch_jobs", "jobs drawn together in one pipeline call",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=self.registry)
        self.jobs = Counter("limner_jobs", "finished jobs by status", ["status"], registry=self.registry)
        self.refusals = Counter("limner_refusals", "requests refused, by reason (content_policy, queue_full, "
                                "rate_limit, invalid_request, unauthorized, timeout, ...)", ["reason"],
                                registry=self.registry)
        self.requests = Counter("limner_http_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=self.registry)
        self.http_seconds = Histogram("limner_http_request_seconds", "request to response (a stream: to its end), "
                                      "by route and status code", ["route", "code"],
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1) + LATENCY_BUCKETS[2:],
                                      registry=self.registry)

    def job_finished(self, job) -> None:
        status = job.status.value
        self.jobs.labels(status).inc()
        self.latency.labels(status).observe(time.time() - job.created)
        if job.error and job.error.get("code") in ("content_policy_violation", "timeout"):
            self.refuse("content_policy" if job.error["code"] == "content_policy_violation" else "timeout")

    def batch(self, jobs: int, seconds: float) -> None:
        self.batch_size.observe(jobs)
        self.generation.observe(seconds)

    def refuse(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def render(self, queue=None) -> bytes:
        self.queue_depth.set(queue.depth if queue else 0)
        self.running.set(queue.running if queue else 0)
        return generate_latest(self.registry)
