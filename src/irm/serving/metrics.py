"""The server's Prometheus metrics, in a registry of their own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)


class ServerMetrics:
    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("irm_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"], registry=r)
        self.tokens = Counter("irm_generated_tokens", "Tokens generated, by IRM ('none' for the bare host)", ["irm"], registry=r)
        self.prompt_tokens = Counter("irm_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.queue = Gauge("irm_queue_depth", "Requests waiting for a slot in the batch", registry=r)
        self.active = Gauge("irm_active_requests", "Requests being decoded in the batch", registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch_size = Histogram("irm_batch_size", "Rows in each batched decode step", buckets=buckets, registry=r)
        self.latency = Histogram("irm_request_latency_seconds", "Submission to last token", buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("irm_time_to_first_token_seconds", "Submission to first token", buckets=LATENCY_BUCKETS, registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
