"""Where a Capture runs: its captureTarget resolved to nodes, each with the targeted pods' IPs."""

from __future__ import annotations

from dataclasses import dataclass

from retina_otel.controller import kube
from retina_otel.controller.capture.failure import CaptureFailure, Reason
from retina_otel.controller.kube import KubeClient, Obj, object_meta
from retina_otel.crds.models import CaptureTarget, LabelSelector

__all__ = ["Target", "find_targets"]


@dataclass(frozen=True)
class Target:
    node: str
    pod_ips: tuple[str, ...] = ()


def _pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return ips


def _runnable(pod: Obj) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")


def _group_pods(pods: list[Obj]) -> list[Target]:
    by_node: dict[str, list[str]] = {}
    for pod in pods:
        node = str(pod["spec"]["nodeName"])
        by_node.setdefault(node, [])
        for ip in _pod_ips(pod):
            if ip not in by_node[node]:
                by_node[node].append(ip)
    return [Target(node, tuple(ips)) for node, ips in sorted(by_node.items())]


def find_targets(client: KubeClient, namespace: str, target: CaptureTarget) -> list[Target]:
    """Nodes to run on (sorted), each with the targeted pods' IPs; selectors are applied here."""
    if target.node_selector is not None:
        sel = target.node_selector
        nodes = [n for n in client.list(kube.NODES) if sel.matches(object_meta(n).get("labels"))]
        if not nodes:
            raise CaptureFailure(
                Reason.OTHER_ERROR,
                f"no node matches captureTarget.nodeSelector ({sel.describe()}); fix the selector",
            )
        return [Target(str(object_meta(n)["name"])) for n in sorted(nodes, key=lambda n: str(object_meta(n)["name"]))]

    if target.pod_names is not None:
        pods = []
        for item in target.pod_names:
            ns, _, name = item.rpartition("/")
            ns = ns or namespace
            pod = client.get_or_none(kube.PODS, name, ns)
            if pod is None:
                raise CaptureFailure(
                    Reason.OTHER_ERROR, f"pod {ns}/{name} (captureTarget.podNames) not found; fix the name"
                )
            if not _runnable(pod):
                raise CaptureFailure(
                    Reason.OTHER_ERROR, f"pod {ns}/{name} is not running on a node; capture it once it is scheduled"
                )
            pods.append(pod)
        return _group_pods(pods)

    assert target.pod_selector is not None
    pod_sel: LabelSelector = target.pod_selector
    if target.namespace_selector is not None:
        ns_sel = target.namespace_selector
        namespaces = {
            str(object_meta(n)["name"])
            for n in client.list(kube.NAMESPACES)
            if ns_sel.matches(object_meta(n).get("labels"))
        }
        where = f"namespaces matching {ns_sel.describe()}"
    else:
        namespaces = {namespace}
        where = f"namespace {namespace}"
    pods = [
        p
        for p in (client.list(kube.PODS, namespace) if namespaces == {namespace} else client.list(kube.PODS))
        if object_meta(p).get("namespace") in namespaces
        and pod_sel.matches(object_meta(p).get("labels"))
        and _runnable(p)
    ]
    if not pods:
        raise CaptureFailure(
            Reason.OTHER_ERROR,
            f"no running pod matches captureTarget.podSelector ({pod_sel.describe()}) in {where}; fix the selectors",
        )
    return _group_pods(pods)
