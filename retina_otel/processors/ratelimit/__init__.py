"""The ``ratelimit`` processor: at most N flow records per second through a pipeline (token bucket).

The bucket holds up to ``burst`` tokens and refills at ``records_per_second``; a batch takes as many
rows as there are whole tokens, from its start (a slice: no copy), and the rest are counted in
``controlplane_networkobservability_lost_events_counter{type="<processor id>", reason="rate_limited"}``.
Each pipeline's instance has its own bucket. See ``docs/processors/ratelimit.md``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pydantic import Field

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer
from retina_otel.flows import FlowBatch
from retina_otel.processors._flowstep import FlowStep, flow_step_factory

__all__ = ["FACTORY", "LOST_REASON", "RateLimitConfig", "RateLimitProcessor", "TokenBucket"]

LOST_REASON = "rate_limited"


class RateLimitConfig(ComponentConfig):
    records_per_second: float = Field(gt=0, description="records let through per second, on average")
    burst: int | None = Field(
        None, gt=0, description="most records let through at once (bucket size); default: one second's worth"
    )


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` may pass now (whole tokens), taken from the bucket."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            granted = min(wanted, int(self._tokens))
            self._tokens -= granted
            return granted


class RateLimitProcessor(FlowStep):
    def __init__(self, settings: CreateSettings, config: RateLimitConfig, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        burst = config.burst if config.burst is not None else max(1.0, config.records_per_second)
        self.bucket = TokenBucket(config.records_per_second, float(burst))
        self._next = next_consumer
        self.dropped = 0

    def consume_flows(self, batch: FlowBatch) -> None:
        n = len(batch)
        if not n:
            return
        granted = self.bucket.take(n)
        if granted < n:
            self.dropped += n - granted
            if self.host is not None:
                self.host.count_lost(self.id, LOST_REASON, n - granted)
            if not granted:
                return
            batch = batch.select(slice(0, granted))
        self._next.consume_flows(batch)


FACTORY: Factory[RateLimitConfig] = flow_step_factory(
    "ratelimit",
    RateLimitConfig,
    RateLimitProcessor,
    "at most N flow records per second (token bucket); the excess is counted as lost (rate_limited)",
    mutates_data=False,
)
