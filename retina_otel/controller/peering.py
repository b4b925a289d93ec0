"""Leader election for several operator replicas: kopf peering (``kopf.dev/v1``).

Every replica writes a keep-alive (identity, priority, lifetime) into one peering object's
``status``; a replica that sees a live peer with a higher priority pauses all its watches, and
resumes when that peer is gone (it removes itself on exit, or its keep-alive expires after
``lifetime`` seconds). Replicas with *equal* priorities all pause (kopf's rule), so each replica
picks a random priority unless one is given. There are no per-object locks: for a few seconds
after start, before a replica has read the peering object, two may handle the same event.

Cluster-wide operators use a ``ClusterKopfPeering``, namespaced ones (``--namespace``) a
``KopfPeering`` in their namespace. The CRDs are kopf's (``peering.yaml`` of the kopf repository);
the chart ships them in ``crds/kopf.dev.yaml`` and ``--install-crds`` installs them too.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

import yaml

from retina_otel.controller import kube
from retina_otel.controller.kube import ApiError, KubeClient, Obj

__all__ = [
    "CLUSTER_PEERINGS",
    "DEFAULT_LIFETIME",
    "NAMESPACED_PEERINGS",
    "PEERING_CRDS",
    "ensure_peering",
    "install_peering_crds",
    "peering_crd_manifests",
    "random_priority",
    "render_peering_crds",
]

log = logging.getLogger(__name__)

GROUP = "kopf.dev"
VERSION = "v1"
CLUSTER_PEERINGS = kube.Resource(GROUP, VERSION, "clusterkopfpeerings", False)
NAMESPACED_PEERINGS = kube.Resource(GROUP, VERSION, "kopfpeerings", True)
DEFAULT_LIFETIME = 60
# Random priorities are drawn from this range; an explicit --priority above it always wins.
PRIORITY_RANGE = (1, 1_000_000)


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "scope": scope,
            "group": GROUP,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }},
            }],
        },
    }


# Identical to kopf's own definitions, so installing ours next to another kopf operator's is a no-op.
PEERING_CRDS: list[dict[str, Any]] = [
    _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
    _crd("KopfPeering", "kopfpeerings", "Namespaced"),
]


def peering_crd_manifests() -> list[dict[str, Any]]:
    return copy.deepcopy(PEERING_CRDS)


def render_peering_crds() -> str:
    """The peering CRDs as one YAML stream (the chart's ``crds/kopf.dev.yaml``)."""
    return yaml.safe_dump_all(peering_crd_manifests(), sort_keys=False, explicit_start=True)


def random_priority() -> int:
    return random.SystemRandom().randint(*PRIORITY_RANGE)


def install_peering_crds(client: KubeClient) -> list[str]:
    """Create the kopf.dev CRDs when missing (existing ones are left alone: another operator may own them)."""
    done = []
    for crd in peering_crd_manifests():
        name = crd["metadata"]["name"]
        if client.get_or_none(kube.CRDS, name) is None:
            client.create(kube.CRDS, crd)
            done.append(f"created {name}")
    return done


def ensure_peering(client: KubeClient, name: str, namespace: str | None) -> bool:
    """Create the peering object kopf keeps its keep-alives in; ``True`` when it exists afterwards.

    kopf only patches the object: without it, every replica would run unaware of the others.
    """
    res = NAMESPACED_PEERINGS if namespace else CLUSTER_PEERINGS
    kind = "KopfPeering" if namespace else "ClusterKopfPeering"
    where = f"{namespace}/{name}" if namespace else name
    body: Obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
                 "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "retina-otel"}}}
    if namespace:
        body["metadata"]["namespace"] = namespace
    try:
        if client.get_or_none(res, name, namespace) is None:
            client.create(res, body, namespace)
            log.info("created %s %s", kind, where)
    except ApiError as exc:
        if exc.conflict:  # another replica created it first
            return True
        log.error("cannot create %s %s (%s); is the %s CRD installed? The operator stays paused until "
                  "it exists", kind, where, exc, res.plural + "." + GROUP)
        return False
    return True
