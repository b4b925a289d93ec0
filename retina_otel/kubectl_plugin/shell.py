"""``kubectl retina shell NODE | pod/NAME``: an interactive debugging shell on a node or inside a pod.

For a node, a pod on that node, removed when the shell exits. For ``pod/NAME`` (as in Retina), an
ephemeral container in that pod's network namespace (Kubernetes keeps it in the pod's spec after it
exits; it cannot be removed).

The pod runs the agent's image (tcpdump, ip, ss, nft, iptables, ethtool, bpftool, bcc tools) in the node's
network namespace, with ``NET_ADMIN`` and ``NET_RAW`` only (``--capabilities`` adds more), no service
account token, and tolerates every taint like the agent. The terminal is attached with ``kubectl attach
-it`` (an argument list, no shell); the pod is deleted on exit, on Ctrl-C and when it never starts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from retina_otel.controller import kube
from retina_otel.controller.capture import DEFAULT_IMAGE
from retina_otel.controller.kube import ApiError, KubeClient, Obj
from retina_otel.crds.models import parse_duration

__all__ = ["CONTAINER", "DEFAULT_CAPABILITIES", "add_parser", "run_shell", "shell_image", "shell_pod"]

CONTAINER = "retina-shell"
#: What the shell gets without --capabilities: enough for tcpdump, ip, ss -p, nft and iptables.
DEFAULT_CAPABILITIES = ("NET_ADMIN", "NET_RAW")
LABEL_ROLE = "retina.sh/role"
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]{2,32}$")

Attach = Callable[[list[str]], int]


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = top.add_parser("shell", help="an interactive debugging shell on a node (removed on exit)")
    s.add_argument("node", metavar="NODE | pod/NAME", help="node name (or node/NAME), or pod/NAME in -n's namespace")
    s.add_argument("-n", "--namespace", default="default", help="namespace of the debugging pod")
    s.add_argument("-c", "--capabilities", default="",
                   help=f"capabilities to add to {', '.join(DEFAULT_CAPABILITIES)} (comma separated)")
    s.add_argument("-m", "--mount-host-filesystem", action="store_true", help="mount the node's / on /host (read only)")
    s.add_argument("-w", "--allow-host-filesystem-write", action="store_true",
                   help="mount the node's / on /host writable (implies --mount-host-filesystem)")
    s.add_argument("--host-pid", action="store_true", help="share the node's PID namespace")
    s.add_argument("--apparmor-unconfined", action="store_true", help="AppArmor profile Unconfined")
    s.add_argument("--seccomp-unconfined", action="store_true", help="seccomp profile Unconfined")
    s.add_argument("--timeout", default="30s", help="how long to wait for the pod to run (e.g. 30s, 2m)")
    s.add_argument("--image", default="", help="image (default: the agent's; $RETINA_SHELL_IMAGE)")
    s.add_argument("--retina-shell-image-repo", default=os.environ.get("RETINA_SHELL_IMAGE_REPO", ""),
                   help="image repository (Retina's flag; $RETINA_SHELL_IMAGE_REPO)")
    s.add_argument("--retina-shell-image-version", default=os.environ.get("RETINA_SHELL_IMAGE_VERSION", ""),
                   help="image tag (Retina's flag; $RETINA_SHELL_IMAGE_VERSION)")
    s.set_defaults(cmd="shell")


def shell_image(args: argparse.Namespace) -> str:
    """--image, else Retina's repo/version flags (or their env variables) over the agent's image."""
    if args.image or os.environ.get("RETINA_SHELL_IMAGE"):
        return str(args.image or os.environ["RETINA_SHELL_IMAGE"])
    repo, _, tag = DEFAULT_IMAGE.rpartition(":")
    return f"{args.retina_shell_image_repo or repo}:{args.retina_shell_image_version or tag}"


def _capabilities(text: str) -> list[str]:
    caps = list(DEFAULT_CAPABILITIES)
    for raw in (p.strip().upper() for p in text.split(",") if p.strip()):
        if not _CAPABILITY.match(raw):
            raise ValueError(f"--capabilities: {raw!r} is not a capability name such as SYS_ADMIN")
        cap = raw.removeprefix("CAP_")
        if cap not in caps:
            caps.append(cap)
    return caps


def shell_pod(args: argparse.Namespace, node: str, name: str) -> Obj:
    """The debugging pod for ``node`` (raises ValueError on a bad --capabilities entry)."""
    security: Obj = {
        "privileged": False,
        "runAsUser": 0,
        "capabilities": {"drop": ["ALL"], "add": _capabilities(args.capabilities)},
    }
    if args.apparmor_unconfined:
        security["appArmorProfile"] = {"type": "Unconfined"}
    if args.seccomp_unconfined:
        security["seccompProfile"] = {"type": "Unconfined"}
    container: Obj = {
        "name": CONTAINER,
        "image": shell_image(args),
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-l"],
        "stdin": True,
        "stdinOnce": True,
        "tty": True,
        "securityContext": security,
    }
    spec: Obj = {
        "nodeName": node,
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "hostPID": bool(args.host_pid),
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "tolerations": [{"operator": "Exists"}],
        "containers": [container],
    }
    if args.mount_host_filesystem or args.allow_host_filesystem_write:
        spec["volumes"] = [{"name": "host-filesystem", "hostPath": {"path": "/"}},
                           {"name": "run", "hostPath": {"path": "/run"}}]
        container["volumeMounts"] = [
            {"name": "host-filesystem", "mountPath": "/host", "readOnly": not args.allow_host_filesystem_write},
            {"name": "run", "mountPath": "/run"},
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": args.namespace,
                     "labels": {"app.kubernetes.io/name": "retina-shell", LABEL_ROLE: "shell"}},
        "spec": spec,
    }


def attach_command(args: argparse.Namespace, namespace: str, pod: str, container: str = CONTAINER) -> list[str]:
    """``kubectl attach -it`` with the plugin's own connection options."""
    kubectl = shutil.which("kubectl") or "kubectl"
    cmd = [kubectl, "attach", "-it", "-n", namespace, pod, "-c", container]
    for flag, value in (("--kubeconfig", args.kubeconfig), ("--context", args.context), ("--server", args.api_url)):
        if value:
            cmd += [flag, value]
    if args.insecure:
        cmd.append("--insecure-skip-tls-verify")
    return cmd


def _subprocess_attach(cmd: list[str]) -> int:
    return subprocess.call(cmd)


def _wait_running(client: KubeClient, namespace: str, name: str, timeout: float, interval: float = 0.5,
                  ephemeral: str | None = None) -> None:
    """Until the pod runs (or, with ``ephemeral``, that ephemeral container of it runs)."""
    deadline = time.monotonic() + timeout
    while True:
        pod = client.get_or_none(kube.PODS, name, namespace) or {}
        status = pod.get("status") or {}
        phase = status.get("phase")
        statuses = status.get("containerStatuses") or []
        if ephemeral is not None:
            statuses = [s for s in status.get("ephemeralContainerStatuses") or [] if s.get("name") == ephemeral]
            if any((s.get("state") or {}).get("running") is not None for s in statuses):
                return
        elif phase == "Running":
            return
        if phase in ("Failed", "Succeeded"):
            raise RuntimeError(f"pod {namespace}/{name} ended ({phase}) before the shell started; "
                               f"see `kubectl describe pod -n {namespace} {name}`")
        for cs in statuses:
            reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason", "")
            if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"):
                raise RuntimeError(f"pod {namespace}/{name} cannot start: {reason}; set --image to an image "
                                   "the node can pull")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"pod {namespace}/{name} not running after {timeout:.0f}s (raise --timeout, or see "
                               f"`kubectl describe pod -n {namespace} {name}`)")
        time.sleep(interval)


def run_shell(client: KubeClient, args: argparse.Namespace, attach: Attach | None = None) -> int:
    """Node: create the pod, wait for it, attach the terminal, always delete the pod. ``pod/NAME``: add an
    ephemeral container to that pod and attach to it. Returns the shell's exit status."""
    attach = attach or _subprocess_attach
    kind, _, target = args.node.rpartition("/")
    name = f"retina-shell-{os.urandom(3).hex()[:5]}"
    try:
        timeout = parse_duration(args.timeout)
        if kind in ("pod", "pods", "po"):
            return _run_in_pod(client, args, target, name, timeout, attach)
        if kind not in ("", "node", "nodes", "no"):
            raise ValueError(f"{args.node!r}: give a node name, node/NAME or pod/NAME")
        node = target
        pod = shell_pod(args, node, name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if client.get_or_none(kube.NODES, node) is None:
        print(f"error: node {node!r} not found", file=sys.stderr)
        return 1
    ns = args.namespace
    print(f"Starting host networking pod {ns}/{name} on node {node} ({pod['spec']['containers'][0]['image']})")
    client.create(kube.PODS, pod, ns)
    try:
        _wait_running(client, ns, name, timeout)
        return attach(attach_command(args, ns, name))
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            client.delete(kube.PODS, name, ns)
            print(f"Deleted pod {ns}/{name}")
        except ApiError as exc:
            if not exc.not_found:
                print(f"warning: could not delete pod {ns}/{name}: {exc}; delete it by hand", file=sys.stderr)


def ephemeral_container(args: argparse.Namespace, name: str) -> Obj:
    """The shell as an ephemeral container: the pod's network namespace, the same capabilities and image."""
    for flag in ("mount_host_filesystem", "allow_host_filesystem_write", "host_pid"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} applies to nodes only, not to pod/NAME")
    security: Obj = {"capabilities": {"drop": ["ALL"], "add": _capabilities(args.capabilities)}}
    if args.apparmor_unconfined:
        security["appArmorProfile"] = {"type": "Unconfined"}
    if args.seccomp_unconfined:
        security["seccompProfile"] = {"type": "Unconfined"}
    return {"name": name, "image": shell_image(args), "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/bash", "-l"], "stdin": True, "stdinOnce": True, "tty": True, "securityContext": security}


def _run_in_pod(client: KubeClient, args: argparse.Namespace, pod_name: str, name: str, timeout: float,
                attach: Attach) -> int:
    ns = args.namespace
    container = ephemeral_container(args, name)
    pod = client.get_or_none(kube.PODS, pod_name, ns)
    if pod is None:
        print(f"error: pod {ns}/{pod_name} not found", file=sys.stderr)
        return 1
    existing = list((pod.get("spec") or {}).get("ephemeralContainers") or [])
    print(f"Starting ephemeral container {name} in pod {ns}/{pod_name} ({container['image']})")
    client.patch(kube.PODS, pod_name, {"spec": {"ephemeralContainers": [*existing, container]}}, ns,
                 sub="ephemeralcontainers")
    try:
        _wait_running(client, ns, pod_name, timeout, ephemeral=name)
        return attach(attach_command(args, ns, pod_name, name))
    except (TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
