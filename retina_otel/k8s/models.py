"""Stripped Kubernetes objects: only the fields enrichment and filtering use, interned, immutable.

A watched Pod is several kilobytes of JSON; what the cache keeps of it is one slotted object with a
handful of interned strings (:class:`PodInfo`, a few hundred bytes). Everything is converted from the
raw JSON dicts the API returns (the cache never builds the client's model objects).

Workloads come from owner references without watching ReplicaSets or Jobs (memory):

* ReplicaSet ``<deployment>-<pod-template-hash>`` -> Deployment ``<deployment>``: the Deployment
  controller names its ReplicaSets that way and puts the same hash in the pod's ``pod-template-hash``
  label. The suffix is stripped when the label matches it (or, without the label, when the suffix looks
  like a hash: 5 to 10 lowercase alphanumerics); otherwise the pod belongs to a bare ReplicaSet.
* Job ``<cronjob>-<scheduled minutes since epoch>`` -> CronJob ``<cronjob>``: the CronJob controller
  appends the scheduled time in minutes (8 or more digits today); a Job without such a suffix stays a Job.
* StatefulSet, DaemonSet and any other controller: the owner itself. No owner: kind ``Pod``, the pod's name.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retina_otel.flows import ip_to_bytes

__all__ = [
    "OBSERVE_ANNOTATION",
    "OBSERVE_VALUE",
    "Labels",
    "NamespaceInfo",
    "NodeInfo",
    "PodInfo",
    "ServiceInfo",
    "namespace_from_raw",
    "node_from_raw",
    "parse_ip",
    "parse_time_ns",
    "pod_from_raw",
    "retina_endpoint_from_raw",
    "service_from_raw",
    "workload_of",
]

OBSERVE_ANNOTATION = "retina.sh"
OBSERVE_VALUE = "observe"
ZONE_LABEL = "topology.kubernetes.io/zone"
LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"

Labels = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs of interned strings: a tuple costs less than a dict and is hashable."""

_intern = sys.intern
_HASH_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<hash>[a-z0-9]{5,10})$")
_CRON_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<minutes>\d{8,})$")


def parse_ip(text: str) -> bytes | None:
    """16-byte form (IPv4 mapped) of an address string, None when it is not an address."""
    try:
        return ip_to_bytes(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _ips(values: Iterable[str | None]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for value in values:
        if value:
            raw = parse_ip(value)
            if raw is not None and raw not in out:
                out.append(raw)
    return tuple(out)


def parse_time_ns(value: str | None) -> int:
    """RFC 3339 timestamp (``creationTimestamp``) to unix ns; 0 when absent or malformed."""
    if not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000_000)
    except ValueError:
        return 0


def _labels(raw: Mapping[str, Any] | None) -> Labels:
    if not raw:
        return ()
    return tuple(sorted((_intern(str(k)), _intern(str(v))) for k, v in raw.items()))


def _observe(annotations: Mapping[str, Any] | None) -> bool:
    return bool(annotations) and str(annotations.get(OBSERVE_ANNOTATION, "")) == OBSERVE_VALUE  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True, eq=False)
class PodInfo:
    """A pod (or a RetinaEndpoint) as the cache keeps it. Identity-hashed: one object per version."""

    uid: str
    namespace: str
    name: str
    node: str
    ips: tuple[bytes, ...]  # 16-byte addresses; empty for host-network pods (never matched by IP)
    labels: Labels
    workload_kind: str
    workload_name: str
    created_ns: int  # creationTimestamp, unix ns (0 when unknown)
    observe: bool  # annotation retina.sh=observe
    host_network: bool = False

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True, eq=False)
class ServiceInfo:
    uid: str
    namespace: str
    name: str
    ips: tuple[bytes, ...]  # clusterIPs, externalIPs, load-balancer ingress IPs
    selector: Labels


@dataclass(frozen=True, slots=True, eq=False)
class NodeInfo:
    name: str
    ips: tuple[bytes, ...]  # status.addresses of type InternalIP / ExternalIP
    zone: str


@dataclass(frozen=True, slots=True, eq=False)
class NamespaceInfo:
    name: str
    labels: Labels
    observe: bool


def workload_of(owners: Iterable[Mapping[str, Any]] | None, pod_name: str, labels: Labels) -> tuple[str, str]:
    """(kind, name) of the workload that owns a pod; see the module docstring for the conventions."""
    chosen: Mapping[str, Any] | None = None
    for owner in owners or ():
        if chosen is None or owner.get("controller"):
            chosen = owner
            if owner.get("controller"):
                break
    if chosen is None:
        return "Pod", pod_name
    kind = str(chosen.get("kind", ""))
    name = str(chosen.get("name", ""))
    if kind == "ReplicaSet":
        template_hash = dict(labels).get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash):
            return "Deployment", _intern(name[: -len(template_hash) - 1])
        match = _HASH_SUFFIX.match(name)
        if template_hash is None and match:
            return "Deployment", _intern(match.group("base"))
        return "ReplicaSet", _intern(name)
    if kind == "Job":
        match = _CRON_SUFFIX.match(name)
        if match:
            return "CronJob", _intern(match.group("base"))
        return "Job", _intern(name)
    return _intern(kind or "Pod"), _intern(name or pod_name)


def pod_from_raw(obj: Mapping[str, Any]) -> PodInfo | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = _labels(meta.get("labels"))
    host_network = bool(spec.get("hostNetwork"))
    ips: tuple[bytes, ...] = ()
    if not host_network:
        ips = _ips([status.get("podIP"), *((p or {}).get("ip") for p in status.get("podIPs") or ())])
    kind, workload = workload_of(meta.get("ownerReferences"), name, labels)
    namespace = meta.get("namespace") or "default"
    return PodInfo(
        uid=str(meta.get("uid") or f"{namespace}/{name}"),
        namespace=_intern(namespace),
        name=str(name),
        node=_intern(str(spec.get("nodeName") or "")),
        ips=ips,
        labels=labels,
        workload_kind=kind,
        workload_name=workload,
        created_ns=parse_time_ns(meta.get("creationTimestamp")),
        observe=_observe(meta.get("annotations")),
        host_network=host_network,
    )


def retina_endpoint_from_raw(obj: Mapping[str, Any]) -> PodInfo | None:
    """A RetinaEndpoint (retina.sh/v1alpha1): the operator's slimmed pod, used in remote context."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    spec = obj.get("spec") or {}
    labels = _labels(spec.get("labels") or meta.get("labels"))
    pod_ips = spec.get("podIPs") or []
    ips = _ips([spec.get("podIP"), *(p if isinstance(p, str) else (p or {}).get("ip") for p in pod_ips)])
    owners = spec.get("ownerReferences") or meta.get("ownerReferences")
    kind, workload = workload_of(owners, name, labels)
    namespace = meta.get("namespace") or "default"
    return PodInfo(
        uid=str(spec.get("podUID") or meta.get("uid") or f"{namespace}/{name}"),
        namespace=_intern(namespace),
        name=str(name),
        node=_intern(str(spec.get("nodeName") or spec.get("nodeIP") or "")),
        ips=ips,
        labels=labels,
        workload_kind=kind,
        workload_name=workload,
        created_ns=parse_time_ns(meta.get("creationTimestamp")),
        observe=_observe(spec.get("annotations") or meta.get("annotations")),
    )


def service_from_raw(obj: Mapping[str, Any]) -> ServiceInfo | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    candidates: list[str | None] = [spec.get("clusterIP")]
    candidates += list(spec.get("clusterIPs") or ())
    candidates += list(spec.get("externalIPs") or ())
    candidates.append(spec.get("loadBalancerIP"))
    for ingress in (status.get("loadBalancer") or {}).get("ingress") or ():
        candidates.append((ingress or {}).get("ip"))
    namespace = meta.get("namespace") or "default"
    return ServiceInfo(
        uid=str(meta.get("uid") or f"{namespace}/{name}"),
        namespace=_intern(namespace),
        name=_intern(str(name)),
        ips=_ips(c for c in candidates if c and c != "None"),
        selector=_labels(spec.get("selector")),
    )


def node_from_raw(obj: Mapping[str, Any]) -> NodeInfo | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    labels = meta.get("labels") or {}
    addresses = (obj.get("status") or {}).get("addresses") or ()
    ips = _ips(a.get("address") for a in addresses if (a or {}).get("type") in ("InternalIP", "ExternalIP"))
    zone = labels.get(ZONE_LABEL) or labels.get(LEGACY_ZONE_LABEL) or ""
    return NodeInfo(name=_intern(str(name)), ips=ips, zone=_intern(str(zone)))


def namespace_from_raw(obj: Mapping[str, Any]) -> NamespaceInfo | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    return NamespaceInfo(
        name=_intern(str(name)), labels=_labels(meta.get("labels")), observe=_observe(meta.get("annotations"))
    )
