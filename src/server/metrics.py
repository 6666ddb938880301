"""GET /metrics: the server's counters in Prometheus' text format, through prometheus_client.

Each app has a registry of its own, so several apps in one process (tests) never collide."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self, active: Callable[[], float], queued: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tinystories_generation_requests", "generations started", registry=self.registry)
        self.prompt_tokens = Counter("tinystories_prompt_tokens", "prompt tokens of generations", registry=self.registry)
        self.generated_tokens = Counter("tinystories_generated_tokens", "tokens generated", registry=self.registry)
        self.scored_tokens = Counter("tinystories_scored_tokens", "tokens scored for logprobs/echo",
                                     registry=self.registry)
        self.step_seconds = Histogram("tinystories_token_interval_seconds",
                                      "time between a stream's tokens (a decode step, seen by the server)",
                                      buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                                      registry=self.registry)
        Gauge("tinystories_active_streams", "generations decoding now", registry=self.registry).set_function(active)
        Gauge("tinystories_queued_streams", "generations waiting for a slot", registry=self.registry).set_function(queued)
