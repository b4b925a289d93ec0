"""Hubble's context values of each endpoint slot, built once per EndpointTable generation.

Slot 0 is "no metadata" (endpoint index -1); slot i+1 is ``entries[i]``. What each identifier means,
following Hubble's ``getContextIDLabelValue`` on what k8sattributes knows about an address:

* ``namespace``: the pod's namespace; ``pod``: ``namespace/pod``; ``pod-name``: the pod's name;
  ``pod-short``: ``namespace/`` + the pod name without its last one or two ``-suffix`` parts;
  ``workload-name``: the pod's top owner (Deployment, StatefulSet, DaemonSet, CronJob, Job), empty for a
  bare pod; ``app``: the pod's ``app.kubernetes.io/name``, ``k8s-app`` or ``app`` label (labels reach the
  flow records only when k8sattributes' ``pod_labels`` lists them).
* ``identity``: the pod's labels as Cilium writes identity labels (``k8s:key=value``, plus
  ``k8s:io.kubernetes.pod.namespace=<ns>``), comma separated.
* ``reserved-identity``: ``reserved:host`` for this node's own addresses, ``reserved:remote-node`` for
  other nodes, ``reserved:world`` for addresses with no metadata; empty for pods and services.
* ``dns``: always empty (no name is kept per address); ``ip``: the address (per row, not per slot).

Non-pod endpoints (services, nodes) have no pod, namespace or workload context, as in Hubble where a
service address resolves to no pod endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from retina_otel import flowschema as fs

__all__ = ["APP_LABELS", "SlotStrings", "short_pod_name"]

APP_LABELS = ("app.kubernetes.io/name", "k8s-app", "app")
"""Pod labels Hubble's ``app`` context and ``*_app`` labels read, in order."""

_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_PER_SLOT = ("identity", "namespace", "pod", "pod-short", "pod-name", "reserved-identity", "workload-name", "app")


def short_pod_name(name: str) -> str:
    return _SHORT_POD.sub(r"\1", name)


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _values(entry: Mapping[str, Any] | None) -> dict[str, str]:
    """Every per-slot identifier's value for one entry (``None``: an address with no metadata)."""
    if entry is None:
        return {"reserved-identity": "reserved:world"}
    kind = str(entry.get(fs.ENDPOINT_KIND) or "")
    if kind == "node":
        local = _truthy(entry.get(fs.ENDPOINT_LOCAL))
        return {"reserved-identity": "reserved:host" if local else "reserved:remote-node"}
    if kind != "pod":
        return {}
    namespace = str(entry.get(fs.K8S_NAMESPACE) or "")
    pod = str(entry.get(fs.K8S_POD_NAME) or "")
    prefix = f"{namespace}/" if namespace else ""
    labels = {
        key[len(fs.K8S_POD_LABEL_PREFIX):]: str(value)
        for key, value in entry.items()
        if key.startswith(fs.K8S_POD_LABEL_PREFIX) and value is not None
    }
    identity = [f"k8s:{k}={v}" for k, v in sorted(labels.items())]
    if namespace:
        identity.append(f"k8s:io.kubernetes.pod.namespace={namespace}")
    workload = ""
    if str(entry.get(fs.K8S_WORKLOAD_KIND) or "") not in ("", "Pod"):
        workload = str(entry.get(fs.K8S_WORKLOAD_NAME) or "")
    return {
        "identity": ",".join(identity),
        "namespace": namespace,
        "pod": prefix + pod if pod else "",
        "pod-short": prefix + short_pod_name(pod) if pod else "",
        "pod-name": pod,
        "workload-name": workload,
        "app": next((labels[k] for k in APP_LABELS if labels.get(k)), ""),
    }


class SlotStrings:
    """``value(identifier, slot)`` for one ``EndpointTable.entries`` sequence."""

    def __init__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.entries = entries
        self.size = len(entries) + 1
        rows = [_values(None), *(_values(e) for e in entries)]
        self._table = {ident: [r.get(ident, "") for r in rows] for ident in _PER_SLOT}

    def value(self, identifier: str, slot: int) -> str:
        column = self._table.get(identifier)
        return column[slot] if column is not None else ""

    def pod_values(self, names: set[str]) -> set[str]:
        """The ``pod`` context values (``namespace/pod``) of the pods named ``names`` in this table."""
        column = self._table["pod"]
        names_column = self._table["pod-name"]
        return {column[i] for i in range(1, self.size) if names_column[i] in names}

    def chain_values(self, chain: tuple[str, ...]) -> list[str | None]:
        """Per slot, the first non-empty value of ``chain`` (Hubble's ``a|b|c`` fallback); ``None`` where the
        chain reaches ``ip`` first (the value is then the row's address, not the slot's)."""
        out: list[str | None] = []
        for slot in range(self.size):
            found: str | None = ""
            for ident in chain:
                if ident == "ip":
                    found = None
                    break
                value = self.value(ident, slot)
                if value:
                    found = value
                    break
            out.append(found)
        return out
