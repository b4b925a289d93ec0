"""Leader election: the operator with kopf peering (``kopf.dev/v1 ClusterKopfPeering``) against kmock's
emulator. Only the live operator with the highest priority handles Captures; the others pause."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import Any

import kmock
import pytest

from retina_otel.controller import kube, run_operator
from retina_otel.controller.capture import LABEL_CAPTURE
from retina_otel.controller.kube import KubeClient
from retina_otel.controller.peering import CLUSTER_PEERINGS, PEERING_CRDS, ensure_peering
from retina_otel.controller.run import add_operator_arguments
from retina_otel.testing import wait_for
from retina_otel.testing_k8s import EmulatedCluster

NS = "peers"
PEERING = "retina-test"
TIMEOUT = 15.0
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


class OperatorThread:
    """``run_operator`` in a thread with its own stop flag (several may run against one emulator)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.stop_flag, self.ready = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.kwargs = {"namespace": None, "install_crds": True, "api_url": url, "resync_interval": 1.0,
                       "consistency_timeout": 0.2, **kwargs}
        self.thread = threading.Thread(target=self._run, name=f"operator-{kwargs.get('priority')}", daemon=True)

    def _run(self) -> None:
        try:
            run_operator(**self.kwargs, stop_flag=self.stop_flag, ready_flag=self.ready)
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> OperatorThread:
        self.thread.start()
        assert self.ready.wait(20), f"operator not ready: {self.errors}"
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "operator thread did not stop"
        assert not self.errors, self.errors


def _declare_peering_resources(emu: EmulatedCluster) -> None:
    """kmock knows only the resources declared on it: add kopf's peering kinds (from their CRDs)."""

    def declare() -> None:
        assert emu.emulator is not None
        for crd in PEERING_CRDS:
            spec = crd["spec"]
            emu.emulator.resources[f"{spec['group']}/v1/{spec['names']['plural']}"] = kmock.ResourceInfo(
                kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced", verbs=_VERBS,
                singular=spec["names"]["singular"],
            )

    emu.call(declare)


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as e:
        _declare_peering_resources(e)
        yield e


@pytest.fixture(scope="module")
def client(emu: EmulatedCluster) -> Iterator[KubeClient]:
    c = KubeClient.from_options(api_url=emu.url)
    for name in ("node-a", "node-b"):
        c.create(kube.NODES, {"metadata": {"name": name, "labels": {"pool": "p"}}})
    c.create(kube.NAMESPACES, {"metadata": {"name": NS}})
    yield c
    c.close()


@pytest.fixture(scope="module")
def leader(emu: EmulatedCluster, client: KubeClient) -> Iterator[OperatorThread]:
    op = OperatorThread(emu.url, peering_name=PEERING, priority=100).start()
    yield op
    op.stop()


class _Messages(logging.Handler):
    """Log messages of kopf's peering module (emitted in the operator threads)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def seen(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture
def peering_log() -> Iterator[_Messages]:
    handler = _Messages()
    logger = logging.getLogger("kopf._core.engines.peering")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _capture(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "retina.sh/v1alpha1", "kind": "Capture",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {"captureConfiguration": {"captureTarget": {"nodeSelector": {"matchLabels": {"pool": "p"}}},
                                          "captureOption": {"duration": "30s"}},
                 "outputConfiguration": {"hostPath": "peers"}},
    }


def _jobs(c: KubeClient, name: str) -> list[dict[str, Any]]:
    return c.list(kube.JOBS, NS, labels={LABEL_CAPTURE: name})


def _peers(c: KubeClient) -> dict[str, Any]:
    return (c.get_or_none(CLUSTER_PEERINGS, PEERING) or {}).get("status") or {}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def test_peering_object_created_and_keepalive_written(client: KubeClient, leader: OperatorThread) -> None:
    crds = {c["metadata"]["name"] for c in client.list(kube.CRDS)}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds  # --install-crds with peering
    obj = client.get(CLUSTER_PEERINGS, PEERING)
    assert obj["kind"] == "ClusterKopfPeering"
    assert wait_for(lambda: any(p.get("priority") == 100 for p in _peers(client).values()), TIMEOUT)
    ((identity, peer),) = _peers(client).items()
    assert identity and peer["lifetime"] == 60 and peer["lastseen"]


def test_leader_handles_a_capture(client: KubeClient, leader: OperatorThread) -> None:
    client.create(kube.CAPTURES, _capture("led"), NS)
    assert wait_for(lambda: len(_jobs(client, "led")) == 2, TIMEOUT)


def test_pauses_while_a_higher_priority_peer_is_alive(
    client: KubeClient, leader: OperatorThread, peering_log: _Messages
) -> None:
    other = {"priority": 10**9, "lifetime": 60, "lastseen": _now()}
    client.patch(CLUSTER_PEERINGS, PEERING, {"status": {"other-operator": other}})
    assert wait_for(lambda: peering_log.seen("Pausing operations"), TIMEOUT)
    client.create(kube.CAPTURES, _capture("paused"), NS)
    assert not wait_for(lambda: bool(_jobs(client, "paused")), 3.0), "a paused operator created Jobs"
    client.patch(CLUSTER_PEERINGS, PEERING, {"status": {"other-operator": None}})  # the other one left
    assert wait_for(lambda: peering_log.seen("Resuming operations"), TIMEOUT)
    assert wait_for(lambda: len(_jobs(client, "paused")) == 2, TIMEOUT)


def test_second_operator_with_higher_priority_takes_over(
    emu: EmulatedCluster, client: KubeClient, leader: OperatorThread, peering_log: _Messages
) -> None:
    successor = OperatorThread(emu.url, peering_name=PEERING, priority=500).start()
    try:
        assert wait_for(lambda: sorted(p.get("priority") for p in _peers(client).values()) == [100, 500], TIMEOUT)
        assert wait_for(lambda: peering_log.seen("Pausing operations"), TIMEOUT)  # the old leader steps back
        client.create(kube.CAPTURES, _capture("by-successor"), NS)
        assert wait_for(lambda: len(_jobs(client, "by-successor")) == 2, TIMEOUT)
    finally:
        successor.stop()
    # The successor removed itself on exit; the remaining operator resumes and handles new Captures.
    assert wait_for(lambda: [p.get("priority") for p in _peers(client).values()] == [100], TIMEOUT)
    assert wait_for(lambda: peering_log.seen("Resuming operations"), TIMEOUT)
    client.create(kube.CAPTURES, _capture("after-takeover"), NS)
    assert wait_for(lambda: len(_jobs(client, "after-takeover")) == 2, TIMEOUT)


def test_ensure_peering_is_idempotent_and_namespaced(client: KubeClient) -> None:
    assert ensure_peering(client, PEERING, None) is True  # exists already
    assert ensure_peering(client, "ns-peering", NS) is True
    from retina_otel.controller.peering import NAMESPACED_PEERINGS

    assert client.get(NAMESPACED_PEERINGS, "ns-peering", NS)["kind"] == "KopfPeering"


def test_cli_peering_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_operator_arguments(parser)
        return parser.parse_args(list(argv))

    monkeypatch.delenv("RETINA_OPERATOR_PEERING", raising=False)
    monkeypatch.delenv("RETINA_OPERATOR_PRIORITY", raising=False)
    args = parse()
    assert args.peering is None and args.priority is None and args.peering_lifetime == 60  # standalone
    assert parse("--peering", "x", "--priority", "7").peering == "x"
    monkeypatch.setenv("RETINA_OPERATOR_PEERING", "retina-otel")
    monkeypatch.setenv("RETINA_OPERATOR_PRIORITY", "42")
    monkeypatch.setenv("RETINA_OPERATOR_PEERING_LIFETIME", "30")
    args = parse()
    assert (args.peering, args.priority, args.peering_lifetime) == ("retina-otel", 42, 30)
    assert parse("--standalone").peering is None  # the flag wins over the chart's env
    with pytest.raises(SystemExit):
        parse("--standalone", "--peering", "x")
