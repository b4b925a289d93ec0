"""Fetch capture tarballs from a node's hostPath directory through a short-lived helper pod.

The helper pod is pinned to the node, mounts the capture directory read-only, runs as non-root
with no capabilities, and only sleeps; files are listed and read with ``kubectl exec``-style calls
(``ls`` and ``base64``, list arguments, no shell). The pod is deleted afterwards, also on failure.
"""

from __future__ import annotations

import base64
import os
import time

from retina_otel.controller import kube
from retina_otel.controller.capture import capture_labels, job_name
from retina_otel.controller.kube import KubeClient, Obj

__all__ = ["download_host_path", "helper_pod"]

MOUNT = "/capture"


def helper_pod(namespace: str, capture: str, node: str, host_dir: str, image: str) -> Obj:
    """The helper pod for one node: pinned there, the capture directory mounted read-only."""
    name = f"{job_name(capture, node)[:52]}-download"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**capture_labels(capture), "retina.sh/role": "download"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "activeDeadlineSeconds": 600,
            # Tarballs are written 0644 by the capture Job; reading them needs no privilege.
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "download",
                "image": image,
                "command": ["sleep", "600"],
                "volumeMounts": [{"name": "captures", "mountPath": MOUNT, "readOnly": True}],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True},
                "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
            }],
            "volumes": [{"name": "captures", "hostPath": {"path": host_dir, "type": "Directory"}}],
        },
    }


def _exec(client: KubeClient, namespace: str, pod: str, command: list[str]) -> str:
    from kubernetes import client as k8s_client
    from kubernetes.stream import stream

    api = k8s_client.CoreV1Api(client.api_client)
    out: str = stream(api.connect_get_namespaced_pod_exec, pod, namespace, command=command,
                      stderr=False, stdin=False, stdout=True, tty=False)
    return out


def download_host_path(client: KubeClient, namespace: str, capture: str, node: str, host_dir: str,
                       dest: str, image: str, timeout: float = 120.0) -> int:
    pod = helper_pod(namespace, capture, node, host_dir, image)
    name = pod["metadata"]["name"]
    client.create(kube.PODS, pod, namespace)
    try:
        deadline = time.monotonic() + timeout
        while (client.get(kube.PODS, name, namespace).get("status") or {}).get("phase") != "Running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"helper pod {namespace}/{name} not running after {timeout:.0f}s")
            time.sleep(1)
        names = [n for n in _exec(client, namespace, name, ["ls", "-1", MOUNT]).split()
                 if n.startswith(f"{capture}-") and n.endswith(".tar.gz")]
        for file_name in names:
            data = base64.b64decode(_exec(client, namespace, name, ["base64", f"{MOUNT}/{file_name}"]))
            with open(os.path.join(dest, file_name), "wb") as fh:
                fh.write(data)
            print(f"{node}:{host_dir}/{file_name} -> {os.path.join(dest, file_name)}")
        return len(names)
    finally:
        client.delete(kube.PODS, name, namespace)
