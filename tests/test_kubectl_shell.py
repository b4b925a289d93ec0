"""``kubectl retina shell`` against kmock: the debugging pod it creates, the attach command, and the pod's
removal on exit, on Ctrl-C, when the shell fails and when the pod never runs (kmock runs no pods: the test
marks the pod Running the way a kubelet would, and stands in for ``kubectl attach``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.controller import kube
from retina_otel.controller.capture import DEFAULT_IMAGE
from retina_otel.controller.kube import KubeClient
from retina_otel.kubectl_plugin import shell
from retina_otel.kubectl_plugin.cli import main
from retina_otel.testing import wait_for
from retina_otel.testing_k8s import EmulatedCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, KubeClient]]:
    with EmulatedCluster() as emu:
        c = KubeClient.from_options(api_url=emu.url)
        c.create(kube.NODES, {"metadata": {"name": "node-1", "labels": {"kubernetes.io/os": "linux"}}})
        yield emu.url, c
        c.close()


def shell_pods(c: KubeClient, ns: str) -> list[dict[str, Any]]:
    return [p for p in c.list(kube.PODS, ns) if (p["metadata"].get("labels") or {}).get("retina.sh/role") == "shell"]


class Kubelet:
    """Marks the shell pod Running once it exists (what a kubelet would report)."""

    def __init__(self, c: KubeClient, ns: str) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(c, ns), daemon=True)

    def _run(self, c: KubeClient, ns: str) -> None:
        while not self.stop.is_set():
            for pod in shell_pods(c, ns):
                if (pod.get("status") or {}).get("phase") != "Running":
                    c.patch_status(kube.PODS, pod["metadata"]["name"], {"phase": "Running"}, ns)
            self.stop.wait(0.05)

    def __enter__(self) -> Kubelet:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)


def run(url: str, c: KubeClient, monkeypatch: pytest.MonkeyPatch, *flags: str, ns: str = "default",
        exit_code: int = 0, interrupt: bool = False) -> tuple[int, list[str], dict[str, Any]]:
    """Run the command with a stand-in for ``kubectl attach``; returns (rc, attach argv, the pod at attach)."""
    seen: dict[str, Any] = {}

    def fake_attach(cmd: list[str]) -> int:
        seen["cmd"] = cmd
        (seen["pod"],) = shell_pods(c, ns)
        if interrupt:
            raise KeyboardInterrupt
        return exit_code

    monkeypatch.setattr(shell, "_subprocess_attach", fake_attach)
    with Kubelet(c, ns):
        rc = main(["--api-url", url, "shell", *flags])
    return rc, seen.get("cmd", []), seen.get("pod", {})


def test_default_pod_and_attach(cluster: tuple[str, KubeClient], monkeypatch: pytest.MonkeyPatch) -> None:
    url, c = cluster
    rc, cmd, pod = run(url, c, monkeypatch, "node-1")
    assert rc == 0
    name = pod["metadata"]["name"]
    assert name.startswith("retina-shell-")
    spec = pod["spec"]
    assert spec["nodeName"] == "node-1" and spec["hostNetwork"] is True and spec["hostPID"] is False
    assert spec["restartPolicy"] == "Never" and spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["automountServiceAccountToken"] is False  # no API credentials in a debugging shell
    assert "volumes" not in spec  # nothing of the host's file system unless asked
    (container,) = spec["containers"]
    assert container["image"] == DEFAULT_IMAGE  # the agent's image, with its tools
    assert container["command"] == ["/bin/bash", "-l"] and container["stdin"] and container["tty"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert container["securityContext"]["privileged"] is False
    assert cmd[1:] == ["attach", "-it", "-n", "default", name, "-c", "retina-shell", "--server", url]
    assert shell_pods(c, "default") == []  # removed on exit


def test_flags(cluster: tuple[str, KubeClient], monkeypatch: pytest.MonkeyPatch) -> None:
    url, c = cluster
    rc, _, pod = run(url, c, monkeypatch, "node/node-1", "-n", "kube-system",
                     "--capabilities", "SYS_CHROOT,cap_sys_admin", "--mount-host-filesystem", "--host-pid",
                     "--apparmor-unconfined", "--seccomp-unconfined",
                     "--retina-shell-image-repo", "registry.example/tools", "--retina-shell-image-version", "v9",
                     ns="kube-system")
    assert rc == 0
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["hostPID"] is True and pod["metadata"]["namespace"] == "kube-system"
    assert container["image"] == "registry.example/tools:v9"
    sc = container["securityContext"]
    assert sc["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW", "SYS_CHROOT", "SYS_ADMIN"]
    assert sc["appArmorProfile"] == {"type": "Unconfined"} and sc["seccompProfile"] == {"type": "Unconfined"}
    assert spec["volumes"] == [{"name": "host-filesystem", "hostPath": {"path": "/"}},
                               {"name": "run", "hostPath": {"path": "/run"}}]
    assert container["volumeMounts"][0] == {"name": "host-filesystem", "mountPath": "/host", "readOnly": True}
    _, _, pod = run(url, c, monkeypatch, "node-1", "--allow-host-filesystem-write", "--image", "img:1")
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] is False
    assert pod["spec"]["containers"][0]["image"] == "img:1"


def test_pod_validates_as_a_pod() -> None:
    import kubernetes_validate

    args = shell_args("--capabilities", "SYS_ADMIN", "--allow-host-filesystem-write", "--host-pid",
                      "--seccomp-unconfined", "--apparmor-unconfined")
    kubernetes_validate.validate(shell.shell_pod(args, "node-1", "retina-shell-abcde"),
                                 kubernetes_validate.latest_version(), strict=True)


def shell_args(*flags: str) -> Any:
    from retina_otel.kubectl_plugin.cli import build_parser

    return build_parser().parse_args(["shell", "node-1", *flags])


def test_exit_status_and_ctrl_c_still_remove_the_pod(cluster: tuple[str, KubeClient],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, c = cluster
    rc, _, pod = run(url, c, monkeypatch, "node-1", exit_code=3)
    assert rc == 3 and pod and shell_pods(c, "default") == []
    rc, _, pod = run(url, c, monkeypatch, "node-1", interrupt=True)
    assert rc == 130 and pod and shell_pods(c, "default") == []


def test_pod_that_never_runs_is_removed(cluster: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = cluster
    rc = main(["--api-url", url, "shell", "node-1", "--timeout", "1s"])  # no kubelet: stays Pending
    assert rc == 1
    assert "not running after 1s" in capsys.readouterr().err
    assert wait_for(lambda: shell_pods(c, "default") == [], 5)


def test_bad_input(cluster: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = cluster
    assert main(["--api-url", url, "shell", "no-such-node"]) == 1
    assert "node 'no-such-node' not found" in capsys.readouterr().err
    assert main(["--api-url", url, "shell", "node-1", "--capabilities", "ALL; rm -rf /"]) == 2
    assert "--capabilities" in capsys.readouterr().err
    assert shell_pods(c, "default") == []


# -- pod/NAME: an ephemeral container in the pod --------------------------------------------------------


def test_pod_target_adds_an_ephemeral_container(cluster: tuple[str, KubeClient],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, c = cluster
    c.create(kube.PODS, {"metadata": {"name": "web-1", "namespace": "shop"},
                         "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx"}]},
                         "status": {"phase": "Running"}}, "shop")
    stop = threading.Event()

    def kubelet() -> None:  # reports every ephemeral container running
        while not stop.is_set():
            pod = c.get(kube.PODS, "web-1", "shop")
            names = [e["name"] for e in pod["spec"].get("ephemeralContainers") or []]
            if names and len((pod.get("status") or {}).get("ephemeralContainerStatuses") or []) != len(names):
                c.patch_status(kube.PODS, "web-1", {"phase": "Running", "ephemeralContainerStatuses": [
                    {"name": n, "state": {"running": {}}} for n in names]}, "shop")
            stop.wait(0.05)

    seen: list[list[str]] = []
    monkeypatch.setattr(shell, "_subprocess_attach", lambda cmd: seen.append(cmd) or 0)
    thread = threading.Thread(target=kubelet, daemon=True)
    thread.start()
    try:
        assert main(["--api-url", url, "shell", "-n", "shop", "pod/web-1", "--capabilities", "SYS_PTRACE"]) == 0
        assert main(["--api-url", url, "shell", "-n", "shop", "pods/web-1"]) == 0
    finally:
        stop.set()
        thread.join(5)
    ephemeral = c.get(kube.PODS, "web-1", "shop")["spec"]["ephemeralContainers"]
    assert len(ephemeral) == 2  # the first one is kept, as Kubernetes keeps ephemeral containers
    first = ephemeral[0]
    assert first["name"].startswith("retina-shell-") and first["image"] == DEFAULT_IMAGE
    assert first["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_PTRACE"]}
    assert first["stdin"] and first["tty"]
    assert seen[0][1:] == ["attach", "-it", "-n", "shop", "web-1", "-c", first["name"], "--server", url]


def test_pod_target_errors(cluster: tuple[str, KubeClient], capsys: pytest.CaptureFixture[str]) -> None:
    url, c = cluster
    assert main(["--api-url", url, "shell", "pod/missing"]) == 1
    assert "pod default/missing not found" in capsys.readouterr().err
    assert main(["--api-url", url, "shell", "pod/x", "--mount-host-filesystem"]) == 2
    assert "applies to nodes only" in capsys.readouterr().err
    assert main(["--api-url", url, "shell", "deployment/x"]) == 2
    c.create(kube.PODS, {"metadata": {"name": "idle", "namespace": "default"},
                         "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]}}, "default")
    assert main(["--api-url", url, "shell", "pod/idle", "--timeout", "1s"]) == 1  # never reported running
    assert "not running after 1s" in capsys.readouterr().err
