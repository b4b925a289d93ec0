"""Settings of the tcplatency receiver."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from retina_otel.component import ComponentConfig

__all__ = ["TcpLatencyConfig"]


class TcpLatencyConfig(ComponentConfig):
    interval: float = Field(10.0, gt=0, description="seconds between reads of the kernel tables (default 10)")
    apiserver_ips: tuple[str, ...] = Field(
        (),
        description="IP addresses of the Kubernetes API server, as an override: when set, exactly these "
        "(no discovery, no $KUBERNETES_SERVICE_HOST). Default: none, i.e. discover them "
        "(`apiserver_discovery`, `use_kubernetes_service_host`).",
    )
    apiserver_discovery: Literal["auto", "kubernetes", "off"] = Field(
        "auto",
        description="Watch the `default/kubernetes` Service's EndpointSlices for the control plane's "
        "addresses (kept current): `auto` when the agent has a Kubernetes source (a k8sattributes "
        "processor with `source: kubernetes`, whose connection settings are used), `kubernetes` always "
        "(else the kubeconfig or in-cluster account), `off` never. Default auto.",
    )
    use_kubernetes_service_host: bool = Field(
        True,
        description="also count $KUBERNETES_SERVICE_HOST (set in every pod: the Service's cluster IP, or "
        "a name, resolved and re-resolved every minute) as the API server. Default true.",
    )
    max_flows: int = Field(
        65536, ge=1024, description="entries of the in-kernel per-flow RTT/handshake table (LRU; default 65536)"
    )
    apiserver_metrics: bool = Field(
        True,
        description="publish Retina's adv_node_apiserver_latency, adv_node_apiserver_tcp_handshake_latency "
        "and adv_node_apiserver_no_response",
    )

    @field_validator("apiserver_ips")
    @classmethod
    def _valid_ips(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for ip in value:
            try:
                ipaddress.ip_address(ip)
            except ValueError as exc:
                raise ValueError(f"{ip!r} is not an IP address") from exc
        return value
