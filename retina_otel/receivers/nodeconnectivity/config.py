"""Settings of the nodeconnectivity receiver."""

from __future__ import annotations

from pydantic import Field, field_validator

from retina_otel.component import ComponentConfig

__all__ = ["NodeConnectivityConfig"]


class NodeConnectivityConfig(ComponentConfig):
    interval: float = Field(30.0, gt=0, description="seconds between probe rounds (default 30)")
    port: int = Field(
        18081, ge=1, le=65535, description="the other agents' health port (the chart's `health` port; default 18081)"
    )
    path: str = Field("/healthz", description="HTTP path probed on each agent (default /healthz: the agent is alive)")
    timeout: float = Field(
        1.0, gt=0, le=30, description="seconds a probe may take before it counts as failed (default 1)"
    )
    max_nodes_per_interval: int = Field(
        64,
        ge=1,
        description="at most this many nodes probed per round; in larger clusters the round-robin reaches each "
        "node every ceil(nodes / max) rounds (default 64)",
    )
    concurrency: int = Field(8, ge=1, le=256, description="probes in flight at once (default 8)")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " \r\n"):
            raise ValueError("must be an absolute URL path without spaces, e.g. /healthz")
        return value
