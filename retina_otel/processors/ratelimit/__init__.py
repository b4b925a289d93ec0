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

from retina_otel.component import ComponentConfig, CreateSettings, Factory, FlowConsumer, Host
from retina_otel.flows import FlowBatch

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


class RateLimitProcessor:
    def __init__(self, settings: CreateSettings, config: RateLimitConfig, next_consumer: FlowConsumer) -> None:
        self.id = settings.id
        burst = config.burst if config.burst is not None else max(1.0, config.records_per_second)
        self.bucket = TokenBucket(config.records_per_second, float(burst))
        self._next = next_consumer
        self._host: Host | None = None
        self.dropped = 0

    def start(self, host: Host) -> None:
        self._host = host

    def shutdown(self) -> None:
        return None

    def consume_flows(self, batch: FlowBatch) -> None:
        n = len(batch)
        if not n:
            return
        granted = self.bucket.take(n)
        if granted < n:
            self.dropped += n - granted
            if self._host is not None:
                self._host.count_lost(self.id, LOST_REASON, n - granted)
            if not granted:
                return
            batch = batch.select(slice(0, granted))
        self._next.consume_flows(batch)


def _create(
    settings: CreateSettings, config: RateLimitConfig, next_consumer: FlowConsumer | None
) -> RateLimitProcessor:
    assert next_consumer is not None
    return RateLimitProcessor(settings, config, next_consumer)


FACTORY: Factory[RateLimitConfig] = Factory(
    "ratelimit",
    "processor",
    RateLimitConfig,
    _create,
    "at most N flow records per second (token bucket); the excess is counted as lost (rate_limited)",
    mutates_data=False,
)
