"""The MetricsConfiguration, TracesConfiguration and RetinaEndpoint specs."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from retina_otel.crds.models.common import CrdModel, LabelSelector
from retina_otel.durations import parse_duration

#: Metric context labels Retina accepts in a MetricsConfiguration.
CONTEXT_LABELS = ("ip", "namespace", "podname", "workload", "service", "port", "zone")
ADDITIONAL_LABELS = ("direction", "is_reply")
ADVANCED_METRICS = (
    "forward",
    "drop",
    "tcpflags",
    "tcpretrans",
    "dns",
    "node_apiserver",
    "adv_forward_count",
    "adv_forward_bytes",
    "adv_drop_count",
    "adv_drop_bytes",
    "adv_tcpflags_count",
    "adv_tcpretrans_count",
    "adv_dns_request_count",
    "adv_dns_response_count",
    "adv_node_apiserver_latency",
    "adv_node_apiserver_tcp_handshake_latency",
    "adv_node_apiserver_no_response",
)


class MetricsContextOptions(CrdModel):
    metric_name: str = Field(min_length=1)
    source_labels: list[str] = Field(default_factory=list)
    destination_labels: list[str] = Field(default_factory=list)
    additional_labels: list[str] = Field(default_factory=list)
    ttl: str | None = None

    @field_validator("metric_name")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in ADVANCED_METRICS:
            raise ValueError(f"metricName {value!r} is not one of {', '.join(ADVANCED_METRICS)}")
        return value

    @field_validator("source_labels", "destination_labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if label.lower() not in CONTEXT_LABELS:
                raise ValueError(f"context label {label!r} is not one of {', '.join(CONTEXT_LABELS)}")
        return value

    @field_validator("additional_labels")
    @classmethod
    def _additional(cls, value: list[str]) -> list[str]:
        for label in value:
            if label.lower() not in ADDITIONAL_LABELS:
                raise ValueError(f"additional label {label!r} is not one of {', '.join(ADDITIONAL_LABELS)}")
        return value

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        if value:
            parse_duration(value)
        return value or None


class MetricsNamespaces(CrdModel):
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exactly_one(self) -> MetricsNamespaces:
        if bool(self.include) == bool(self.exclude):
            raise ValueError("namespaces needs exactly one of include or exclude (a non-empty list)")
        return self


class MetricsConfigurationSpec(CrdModel):
    context_options: list[MetricsContextOptions] = Field(min_length=1)
    namespaces: MetricsNamespaces


class TracePorts(CrdModel):
    port: str
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    end_port: str | None = None

    @field_validator("port", "end_port")
    @classmethod
    def _number(cls, value: str | None) -> str | None:
        # The agent has no container ports to resolve a name with: ignoring it would trace every port.
        if value is not None and not (value.strip().isdigit() and 0 < int(value) <= 65535):
            raise ValueError(f"{value!r} is not a port number (1-65535; named ports are not resolved by the agent)")
        return value

    @model_validator(mode="after")
    def _range(self) -> TracePorts:
        if self.end_port is not None and int(self.end_port) < int(self.port):
            raise ValueError(f"endPort {self.end_port} is below port {self.port}")
        return self


class IPBlock(CrdModel):
    cidr: str | None = None
    except_: list[str] = Field(default_factory=list, alias="except")

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        return None if value is None else _ip_network(value, "cidr")

    @field_validator("except_")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_ip_network(cidr, "except") for cidr in value]


def _ip_network(value: str, what: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP network (e.g. 10.0.0.0/16)") from None
    return value


class TraceTarget(CrdModel):
    ip_block: IPBlock | None = None
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    service_selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _targets_something(self) -> TraceTarget:
        if (self.ip_block is None or not self.ip_block.cidr) and all(
            s is None for s in (self.namespace_selector, self.pod_selector, self.node_selector, self.service_selector)
        ):
            raise ValueError("targets nothing: give ipBlock.cidr or a selector (or leave the peer out to match any)")
        # The agent's cache keeps no node or service labels: such a selector could only be ignored, which
        # would trace nothing (alone) or more than asked (beside a pod selector). An error says so instead.
        unsupported = [n for n, s in (("nodeSelector", self.node_selector), ("serviceSelector", self.service_selector))
                       if s is not None]  # fmt: skip
        if unsupported:
            raise ValueError(
                f"{' and '.join(unsupported)}: not evaluated by retina-otel's agent (it keeps no node or service "
                "labels); select with podSelector/namespaceSelector or ipBlock"
            )
        return self


class TraceTargets(CrdModel):
    from_: TraceTarget | None = Field(default=None, alias="from")
    to: TraceTarget | None = None
    ports: list[TracePorts] = Field(default_factory=list)
    trace_points: list[Literal["PodToNode", "NodeToPod", "NodeToNetwork", "NetworkToNode"]] = Field(
        default_factory=list
    )


class TraceConfiguration(CrdModel):
    capture_level: Literal["AllPackets", "FirstPacket"]
    include_layer7_data: bool = False
    trace_targets: list[TraceTargets] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_target(self) -> TraceConfiguration:
        if not self.trace_targets:
            raise ValueError("traceTargets is empty: this entry traces nothing (use [{}] for every connection)")
        return self


class TraceOutputConfiguration(CrdModel):
    destination: Literal["stdout", "azuretable", "loganalytics", "opentelemetry"]
    connection_configuration: str | None = None


class TracesConfigurationSpec(CrdModel):
    trace_configuration: list[TraceConfiguration] = Field(min_length=1)
    output_configuration: TraceOutputConfiguration


class EndpointContainer(CrdModel):
    name: str
    id: str | None = None


class EndpointOwnerReference(CrdModel):
    api_version: str | None = None
    kind: str | None = None
    name: str | None = None


class RetinaEndpointSpec(CrdModel):
    containers: list[EndpointContainer] = Field(default_factory=list)
    owner_references: list[EndpointOwnerReference] = Field(default_factory=list)
    node_ip: str | None = Field(default=None, alias="nodeIP")
    pod_ip: str | None = Field(default=None, alias="podIP")
    pod_i_ps: list[str] = Field(default_factory=list, alias="podIPs")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
