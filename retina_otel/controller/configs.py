"""MetricsConfiguration / TracesConfiguration acceptance and RetinaEndpoint upkeep.

Pure decisions (``decide_metrics_states``, ``endpoint_for_pod``) are separated from the API calls so
they can be tested directly.
"""

from __future__ import annotations

import logging
from typing import Any

from retina_otel.controller import kube
from retina_otel.controller.kube import ApiError, KubeClient, Obj
from retina_otel.crds.models import (
    MetricsConfigurationSpec,
    RetinaEndpointSpec,
    SpecError,
    TracesConfigurationSpec,
    validate_spec,
)

__all__ = [
    "MANAGED_BY",
    "decide_metrics_states",
    "endpoint_for_pod",
    "prune_endpoints",
    "reconcile_metrics_configurations",
    "reconcile_traces_configurations",
    "sync_endpoint",
]

log = logging.getLogger(__name__)

ACCEPTED, ERRORED = "Accepted", "Errored"
MANAGED_BY = {"app.kubernetes.io/managed-by": "retina-otel"}


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name"))


def _age_key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or "~"), str(meta.get("name")))


def decide_metrics_states(items: list[Obj]) -> dict[str, Obj]:
    """Desired ``status`` per MetricsConfiguration name: at most one Accepted per cluster.

    An already Accepted and still valid one keeps its place; otherwise the oldest valid one wins.
    """
    valid: dict[str, MetricsConfigurationSpec] = {}
    out: dict[str, Obj] = {}
    for item in items:
        try:
            valid[_name(item)] = validate_spec(MetricsConfigurationSpec, item.get("spec"))
        except SpecError as exc:
            out[_name(item)] = {"state": ERRORED, "reason": str(exc), "lastKnownSpec": None}
    candidates = [i for i in sorted(items, key=_age_key) if _name(i) in valid]
    incumbent = [i for i in candidates if (i.get("status") or {}).get("state") == ACCEPTED]
    winner: Obj | None = (incumbent or candidates)[0] if (incumbent or candidates) else None
    for item in candidates:
        name = _name(item)
        if item is winner:
            out[name] = {"state": ACCEPTED, "reason": "", "lastKnownSpec": valid[name].to_k8s()}
        else:
            assert winner is not None
            out[name] = {
                "state": ERRORED,
                "reason": f"MetricsConfiguration {_name(winner)!r} is already accepted and only one is applied "
                "per cluster; delete one of them",
                "lastKnownSpec": None,
            }
    return out


def _apply_states(client: KubeClient, res: kube.Resource, items: list[Obj], desired: dict[str, Obj]) -> None:
    for item in items:
        name = _name(item)
        want = desired[name]
        have = item.get("status") or {}
        if have.get("state") == want["state"] and have.get("reason") == want["reason"]:
            continue
        try:
            client.patch_status(res, name, want)
        except ApiError as exc:
            if not exc.not_found:
                raise
        log.info("%s %s: %s %s", res.plural, name, want["state"], want["reason"])


def reconcile_metrics_configurations(client: KubeClient) -> dict[str, Obj]:
    items = client.list(kube.METRICS_CONFIGS)
    desired = decide_metrics_states(items)
    _apply_states(client, kube.METRICS_CONFIGS, items, desired)
    return desired


def reconcile_traces_configurations(client: KubeClient) -> None:
    items = client.list(kube.TRACES_CONFIGS)
    desired: dict[str, Obj] = {}
    for item in items:
        try:
            spec = validate_spec(TracesConfigurationSpec, item.get("spec"))
            desired[_name(item)] = {"state": ACCEPTED, "reason": "", "lastKnownSpec": spec.to_k8s()}
        except SpecError as exc:
            desired[_name(item)] = {"state": ERRORED, "reason": str(exc), "lastKnownSpec": None}
    _apply_states(client, kube.TRACES_CONFIGS, items, desired)


# ---------------------------------------------------------------------------------------------------
# RetinaEndpoints
# ---------------------------------------------------------------------------------------------------


def endpoint_for_pod(pod: Obj) -> Obj | None:
    """The slim RetinaEndpoint for a pod, or None when it should have none (host network, no IP)."""
    meta: dict[str, Any] = pod.get("metadata") or {}
    spec: dict[str, Any] = pod.get("spec") or {}
    status: dict[str, Any] = pod.get("status") or {}
    if spec.get("hostNetwork") or not status.get("podIP") or meta.get("deletionTimestamp"):
        return None
    ids = {c.get("name"): c.get("containerID") for c in status.get("containerStatuses") or []}
    ep_spec = RetinaEndpointSpec.model_validate(
        {
            "containers": [{"name": c["name"], "id": ids.get(c["name"])} for c in spec.get("containers") or []],
            "ownerReferences": [
                {"apiVersion": o.get("apiVersion"), "kind": o.get("kind"), "name": o.get("name")}
                for o in meta.get("ownerReferences") or []
            ],
            "nodeIP": status.get("hostIP"),
            "podIP": status.get("podIP"),
            "podIPs": [p["ip"] for p in status.get("podIPs") or [] if p.get("ip")] or [status.get("podIP")],
            "labels": meta.get("labels") or {},
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("kubectl.")},
        }
    )
    ep_meta: Obj = {"name": meta["name"], "namespace": meta.get("namespace"), "labels": dict(MANAGED_BY)}
    if meta.get("uid"):
        ep_meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"], "blockOwnerDeletion": False}
        ]
    return {"apiVersion": "retina.sh/v1alpha1", "kind": "RetinaEndpoint", "metadata": ep_meta, "spec": ep_spec.to_k8s()}


def sync_endpoint(client: KubeClient, event_type: str | None, pod: Obj) -> str:
    """Create, update or delete the pod's RetinaEndpoint; returns what was done."""
    meta = pod.get("metadata") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    want = None if event_type == "DELETED" else endpoint_for_pod(pod)
    have = client.get_or_none(kube.RETINA_ENDPOINTS, name, namespace)
    if want is None:
        if have is not None and (have.get("metadata") or {}).get("labels", {}).get(
            "app.kubernetes.io/managed-by"
        ) == MANAGED_BY["app.kubernetes.io/managed-by"]:
            client.delete(kube.RETINA_ENDPOINTS, name, namespace)
            return "deleted"
        return "none"
    if have is None:
        try:
            client.create(kube.RETINA_ENDPOINTS, want, namespace)
            return "created"
        except ApiError as exc:
            if not exc.conflict:
                raise
            have = client.get(kube.RETINA_ENDPOINTS, name, namespace)
    if have.get("spec") != want["spec"]:
        # Merge patch: set the whole spec, removing keys the pod no longer has.
        patch_spec = {k: None for k in (have.get("spec") or {}) if k not in want["spec"]}
        patch_spec.update(want["spec"])
        client.patch(kube.RETINA_ENDPOINTS, name, {"spec": patch_spec}, namespace)
        return "updated"
    return "unchanged"


def prune_endpoints(client: KubeClient, namespace: str | None = None) -> list[str]:
    """Delete our RetinaEndpoints whose pod is gone (e.g. deleted while the operator was down)."""
    pods = {
        ((p.get("metadata") or {}).get("namespace"), (p.get("metadata") or {}).get("name"))
        for p in client.list(kube.PODS, namespace)
    }
    removed = []
    for ep in client.list(kube.RETINA_ENDPOINTS, namespace, labels=MANAGED_BY):
        meta = ep.get("metadata") or {}
        if (meta.get("namespace"), meta.get("name")) not in pods:
            client.delete(kube.RETINA_ENDPOINTS, str(meta["name"]), meta.get("namespace"))
            removed.append(f"{meta.get('namespace')}/{meta.get('name')}")
    return removed
