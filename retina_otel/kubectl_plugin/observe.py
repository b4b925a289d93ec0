"""``kubectl retina observe``: ``retina-otel observe`` against one node's agent.

Finds the agent pod on ``--node`` (or takes ``--pod``), opens ``kubectl port-forward`` to its
``observer`` port (the chart's ``agent.observer.tcp``; 4244) on a free local port, and runs the same
client as ``retina-otel observe`` against ``127.0.0.1:<port>`` with every observe flag passed through
(``--tls*`` when the agent's listener has TLS). The port-forward ends with the command.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from retina_otel.controller.kube import PODS, KubeClient, Obj

__all__ = ["AGENT_SELECTOR", "add_arguments", "find_agent_pod", "port_forward", "run"]

AGENT_SELECTOR = "app.kubernetes.io/name=retina-otel,app.kubernetes.io/component=agent"  # the chart's labels
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from retina_otel.observe.cli import add_arguments as add_observe_arguments

    target = parser.add_argument_group("which agent")
    target.add_argument("--node", help="the node whose agent to ask (default: the only agent, if there is one)")
    target.add_argument("--agent-pod", help="the agent pod by name (instead of --node)")
    target.add_argument("-n", "--agent-namespace", default="kube-system", help="the agents' namespace")
    target.add_argument(
        "--agent-selector", default=AGENT_SELECTOR, help=f"labels of the agent pods (default {AGENT_SELECTOR})"
    )
    target.add_argument("--agent-port", type=int, default=4244, help="the agents' observer port (default 4244)")
    add_observe_arguments(parser)


def find_agent_pod(client: KubeClient, namespace: str, node: str | None, selector: str = AGENT_SELECTOR) -> str:
    labels = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
    pods: list[Obj] = [
        p for p in client.list(PODS, namespace, labels=labels) if p.get("status", {}).get("phase") == "Running"
    ]
    if node:
        pods = [p for p in pods if p.get("spec", {}).get("nodeName") == node]
    if len(pods) != 1:
        where = f"on node {node}" if node else "(give --node)"
        names = ", ".join(sorted(p["metadata"]["name"] for p in pods)) or "none"
        raise LookupError(f"{len(pods)} running agent pods in {namespace} {where}: {names}")
    return str(pods[0]["metadata"]["name"])


@contextmanager
def port_forward(
    namespace: str, pod: str, port: int, *, kubeconfig: str | None = None, context: str | None = None
) -> Iterator[int]:
    """``kubectl port-forward pod/<pod> :<port>``; yields the local port, stops the forward on exit."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError("kubectl is not on PATH (kubectl retina observe uses kubectl port-forward)")
    args = [kubectl, "port-forward", "-n", namespace, f"pod/{pod}", f":{port}", "--address", "127.0.0.1"]
    if kubeconfig:
        args += ["--kubeconfig", kubeconfig]
    if context:
        args += ["--context", context]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = _FORWARDING.search(line)
        if match is None:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"kubectl port-forward failed: {(line + err).strip()}")
        yield int(match.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(client: KubeClient, args: argparse.Namespace) -> int:
    from retina_otel.observe.cli import main_from_args

    try:
        pod = args.agent_pod or find_agent_pod(client, args.agent_namespace, args.node, args.agent_selector)
        with port_forward(
            args.agent_namespace, pod, args.agent_port, kubeconfig=args.kubeconfig, context=args.context
        ) as local:
            args.server = f"127.0.0.1:{local}"
            return main_from_args(args)
    except (LookupError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
