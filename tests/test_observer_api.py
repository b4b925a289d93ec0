"""The observer exporter's API without the kernel: the ring, GetFlows semantics, slow clients, the
listeners' security (socket mode, TLS, mTLS), configuration errors and ``kubectl retina observe``.

Flow batches are built here (known rows), the server is the real gRPC server on a real unix socket or
TCP port, and clients are real gRPC clients (``retina-otel observe``'s, or the raw stub).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import socket
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from retina_otel.component import CreateSettings
from retina_otel.config import ConfigError, parse_config
from retina_otel.eventdemand import EventDemand
from retina_otel.exporters.observer import FACTORY, ObserverExporter
from retina_otel.exporters.observer.ring import FlowRing, bytes_per_record
from retina_otel.flows import (
    FLOW_DTYPE,
    STRINGS,
    Direction,
    EndpointTable,
    Event,
    FieldMask,
    FlowBatch,
    ObservationPoint,
    TcpFlag,
    ip_to_bytes,
)
from retina_otel.hubble import flow_pb2, observer_pb2, relay_pb2
from retina_otel.hubble.api import ObserverStub
from retina_otel.observe.cli import add_arguments, main_from_args
from retina_otel.testing import TestHost, wait_for

T0 = 1_796_000_000_000_000_000  # a fixed wall clock (ns) for the rows' times


def batch(n: int, first_port: int = 1, *, table: EndpointTable | None = None, t0: int = T0) -> FlowBatch:
    """``n`` UDP rows 198.18.0.1:<first_port + i> -> 198.18.0.2:53, one second apart from ``t0``."""
    b = FlowBatch.empty(n)
    r = b.records
    r["src_ip"] = ip_to_bytes("198.18.0.1")
    r["dst_ip"] = ip_to_bytes("198.18.0.2")
    r["proto"], r["ip_version"], r["event"], r["verdict"] = 17, 4, Event.FLOW, 1
    r["src_port"] = np.arange(first_port, first_port + n) % 65536
    r["dst_port"] = 53
    r["packets"], r["bytes"] = 1, 100
    r["time_end_ns"] = t0 + np.arange(n, dtype=np.uint64) * 1_000_000_000
    if table is not None:
        b.endpoints = table
        r["src_endpoint"] = 0
    return b


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[tuple[ObserverExporter, TestHost, str]]:
    sock = tmp_path / "run" / "observer.sock"
    config = FACTORY.config_model.model_validate({"socket": f"unix://{sock}", "buffer_size": 100})
    exp = FACTORY.create(CreateSettings("observer", "exporter"), config, None)
    assert isinstance(exp, ObserverExporter)
    host = TestHost()
    exp.start(host)
    try:
        yield exp, host, f"unix://{sock}"
    finally:
        exp.shutdown()


def ports(responses: list[observer_pb2.GetFlowsResponse]) -> list[int]:
    return [r.flow.l4.UDP.source_port for r in responses if r.WhichOneof("response_types") == "flow"]


# -- the ring ---------------------------------------------------------------------------------------------


def test_ring_keeps_the_newest_records_and_counts_what_a_reader_missed() -> None:
    ring = FlowRing(10)
    assert ring.nbytes == 10 * bytes_per_record() and bytes_per_record() == FLOW_DTYPE.itemsize + 12
    ring.write(batch(7, 1))
    ring.write(batch(7, 8))  # wraps
    assert ring.head == 14 and len(ring) == 10
    missed, view = ring.read(0)
    assert missed == 4 and view.first_seq == 4
    assert view.records["src_port"].tolist() == list(range(5, 15))
    ring.write(batch(25, 100))  # larger than the ring: only its tail stays
    missed, view = ring.read(14)
    assert missed == 15 and view.records["src_port"].tolist() == list(range(115, 125))
    missed, view = ring.read(37, limit=2)
    assert missed == 0 and view.records["src_port"].tolist() == [123, 124]


def test_ring_references_dns_entries_and_endpoint_tables_without_copying_them() -> None:
    ring = FlowRing(8)
    table = EndpointTable([{"k8s.pod.name": "a"}])
    b = batch(3, table=table)
    b.records["event"][1] = Event.DNS
    entry = {"query": "x.test."}
    b.dns = [None, entry, None]
    ring.write(b)
    _, view = ring.read(0)
    assert view.dns[1] is entry and view.dns[0] is None
    assert view.endpoint(0, "src") is table.entries[0] and view.endpoint(0, "dst") is None


def test_ring_forgets_endpoint_tables_no_row_refers_to() -> None:
    ring = FlowRing(4)
    for i in range(FlowRing.MAX_TABLES + 10):
        ring.write(batch(1, table=EndpointTable([{"k8s.pod.name": f"p{i}"}])))
    assert len(ring._contexts) <= FlowRing.MAX_TABLES
    _, view = ring.read(0)
    assert [view.endpoint(i, "src")["k8s.pod.name"] for i in range(4)] == [  # type: ignore[index]
        f"p{FlowRing.MAX_TABLES + 10 - 4 + i}" for i in range(4)
    ]


# -- GetFlows ---------------------------------------------------------------------------------------------


def test_number_first_since_until(exporter: tuple[ObserverExporter, TestHost, str]) -> None:
    exp, _, target = exporter
    exp.consume_flows(batch(30, 1))
    with grpc.insecure_channel(target) as channel:
        stub = ObserverStub(channel)

        def get(**kw: Any) -> list[int]:
            return ports(list(stub.GetFlows(observer_pb2.GetFlowsRequest(**kw))))

        assert get(number=3) == [28, 29, 30]
        assert get(number=3, first=True) == [1, 2, 3]
        assert get() == list(range(1, 31))
        since = {"seconds": (T0 + 10 * 10**9) // 10**9}
        until = {"seconds": (T0 + 12 * 10**9) // 10**9}
        assert get(since=since, until=until) == [11, 12, 13]
        assert get(since=since, number=2) == [29, 30]
        whitelist = [flow_pb2.FlowFilter(source_port=["5-7"]), flow_pb2.FlowFilter(source_port=["20"])]
        blacklist = [flow_pb2.FlowFilter(source_port=["6"])]
        assert get(whitelist=whitelist, blacklist=blacklist) == [5, 7, 20]
        with pytest.raises(grpc.RpcError) as err:
            get(first=True, follow=True)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_hubble_filters_this_agent_cannot_evaluate_are_rejected(
    exporter: tuple[ObserverExporter, TestHost, str],
) -> None:
    exp, _, target = exporter
    exp.consume_flows(batch(3))
    # FlowFilter field 9 (http_status_code "404"), as Hubble's client would send it.
    http = flow_pb2.FlowFilter.FromString(bytes([9 << 3 | 2, 3]) + b"404")
    with grpc.insecure_channel(target) as channel:
        call = ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest(whitelist=[http]))
        with pytest.raises(grpc.RpcError) as err:
            list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "9" in str(err.value.details()) and "not supported" in str(err.value.details())


def test_only_a_following_client_holds_the_event_demand(tmp_path: Path) -> None:
    """A follower holds the agent's event demand (packetparser then writes a record per connection event)
    until it leaves; a call for history does not. With ``event_records: always`` nothing is held (the
    agent then gives the exporter no demand: the rule is Retina's all the time)."""
    demand = EventDemand()
    sock = tmp_path / "observer.sock"
    config = FACTORY.config_model.model_validate({"socket": f"unix://{sock}"})
    assert FACTORY.events_on_demand is not None and FACTORY.events_on_demand(config)
    assert not FACTORY.events_on_demand(config.model_copy(update={"event_records": "always"}))
    exp = FACTORY.create(CreateSettings("observer", "exporter", event_demand=demand), config, None)
    exp.start(TestHost())
    try:
        exp.consume_flows(batch(3))
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = ObserverStub(channel)
            assert len(list(stub.GetFlows(observer_pb2.GetFlowsRequest(number=10)))) == 3
            assert not demand.wanted
            followers = [stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, number=1)) for _ in range(2)]
            for call in followers:
                assert next(call).HasField("flow")  # the call is open: history given, now following
            assert demand.wanted
            followers[0].cancel()
            time.sleep(0.6)  # longer than a follower's wait between checks of its call
            assert demand.wanted  # the second one still follows
            followers[1].cancel()
            assert wait_for(lambda: not demand.wanted, timeout=10)
            follower = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, number=1))
            assert next(follower).HasField("flow") and demand.wanted
    finally:
        exp.shutdown()  # ends the follower's call
    assert wait_for(lambda: not demand.wanted, timeout=10)


@pytest.mark.timeout(60)
def test_follow_gets_every_record_or_an_exact_lost_count(exporter: tuple[ObserverExporter, TestHost, str]) -> None:
    """A client that stops reading while the ring (100 records) turns over many times: what it reads
    afterwards adds up, flows plus lost markers, to exactly what was produced, and the losses are counted."""
    exp, host, target = exporter
    with grpc.insecure_channel(target) as channel:
        exp.consume_flows(batch(1, 1))
        # since the beginning: the buffered record, then everything after it (no gap while the call opens)
        call = ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True, since={"seconds": 1}))
        first = next(call)
        produced = 1
        started = time.perf_counter()
        for i in range(200):  # 20,000 records while the client reads nothing
            exp.consume_flows(batch(100, 2 + i * 100))
            produced += 100
        assert time.perf_counter() - started < 5  # the pipeline never waited for the client
        flows, lost = 1 if first.HasField("flow") else 0, 0
        while flows + lost < produced:
            response = next(call)
            if response.HasField("lost_events"):
                assert response.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER
                lost += response.lost_events.num_events_lost
            else:
                flows += 1
        call.cancel()
    assert flows + lost == produced and lost > 0
    counted = host.metrics.get("controlplane_networkobservability_lost_events_counter")
    assert counted is not None and counted.value(("observer", "client_too_slow")) == lost


def test_server_status_nodes_and_the_socket(exporter: tuple[ObserverExporter, TestHost, str], tmp_path: Path) -> None:
    exp, host, target = exporter
    exp.consume_flows(batch(150))
    with grpc.insecure_channel(target) as channel:
        stub = ObserverStub(channel)
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest())
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest())
    assert (status.num_flows, status.max_flows, status.seen_flows) == (100, 100, 150)
    assert [(n.name, n.num_flows, n.tls.enabled) for n in nodes.nodes] == [("test-node", 100, False)]
    assert nodes.nodes[0].state == relay_pb2.NODE_CONNECTED
    path = target.removeprefix("unix://")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    memory = host.metrics.get("controlplane_networkobservability_observer_buffer_bytes")
    assert memory is not None and memory.value(()) == 100 * bytes_per_record()
    # A second agent on the same socket is refused, with the reason.
    other = FACTORY.create(CreateSettings("observer", "exporter"), exp.config, None)
    with pytest.raises(RuntimeError, match="in use"):
        other.start(TestHost())
    exp.shutdown()
    assert not os.path.exists(path)
    # A stale socket file (an agent that died) is replaced.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)
    other.start(TestHost())
    other.shutdown()


def test_field_masks_of_a_transform_processor_hold_for_the_api(
    exporter: tuple[ObserverExporter, TestHost, str],
) -> None:
    """What a ``transform`` processor removed is neither shown nor usable in filters (no probing)."""
    exp, _, target = exporter
    table = EndpointTable([{"k8s.namespace.name": "shop", "k8s.pod.name": "web-1", "k8s.pod.label.app": "web"}])
    masked = batch(2, table=table)
    masked.records["dst_endpoint"] = 0
    masked.masks = (
        FieldMask(drop=frozenset({"source.address", "source.k8s.*", "retina.flow.bytes", "retina.drop.reason"})),
    )
    masked.records["event"], masked.records["verdict"] = Event.DROP, 2
    masked.records["drop_reason"] = STRINGS.intern("NETFILTER_DROP")
    exp.consume_flows(masked)
    exp.consume_flows(batch(1, 9, table=table))  # the same table, no mask
    with grpc.insecure_channel(target) as channel:
        stub = ObserverStub(channel)

        def get(flt: flow_pb2.FlowFilter | None = None) -> list[flow_pb2.Flow]:
            request = observer_pb2.GetFlowsRequest(whitelist=[flt] if flt else [])
            return [r.flow for r in stub.GetFlows(request)]

        flows = get()
        assert [(f.IP.source, f.source.pod_name, f.destination.pod_name) for f in flows] == [
            ("", "", "web-1"),
            ("", "", "web-1"),
            ("198.18.0.1", "web-1", ""),
        ]
        assert [f.l4.UDP.source_port for f in get(flow_pb2.FlowFilter(source_ip=["198.18.0.1"]))] == [9]
        assert [f.l4.UDP.source_port for f in get(flow_pb2.FlowFilter(source_pod=["shop/web"]))] == [9]
        assert len(get(flow_pb2.FlowFilter(destination_pod=["shop/web"]))) == 2
        # A masked drop reason shows no Hubble drop code either, nor can a filter find it.
        assert [(f.drop_reason_desc, f.event_type.sub_type) for f in flows[:2]] == [(0, 0), (0, 0)]
        assert get(flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.POLICY_DENIED])) == []
        drop_133 = flow_pb2.EventTypeFilter(type=1, match_sub_type=True, sub_type=133)
        assert get(flow_pb2.FlowFilter(event_type=[drop_133])) == []
    code, out, _ = _observe("--server", target, "--last", "3", "-o", "json")
    sizes = [json.loads(line)["flow"]["extensions"].get("bytes", "0") for line in out.splitlines()]
    assert code == 0 and sizes == ["0", "0", "100"]


# -- TLS and mTLS -----------------------------------------------------------------------------------------


def _certificates(tmp: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def make(name: str, issuer: tuple[Any, Any] | None, *, ca: bool, san: str | None = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    ca = make("test-ca", None, ca=True)
    server = make("agent", ca, ca=False, san="agent.test")
    client = make("client", ca, ca=False, san="client.test")
    out: dict[str, Path] = {}
    for name, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        out[f"{name}.crt"] = tmp / f"{name}.crt"
        out[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{name}.key"] = tmp / f"{name}.key"
        out[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return out


def _observe(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = main_from_args(parser.parse_args(list(argv)), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("mtls", [False, True])
def test_tcp_listener_with_tls_and_client_certificates(tmp_path: Path, mtls: bool) -> None:
    files = _certificates(tmp_path)
    tls = {"cert_file": str(files["server.crt"]), "key_file": str(files["server.key"])}
    if mtls:
        tls["client_ca_file"] = str(files["ca.crt"])
    config = FACTORY.config_model.model_validate({"socket": "", "tcp_endpoint": "127.0.0.1:0", "tls": tls})
    exp = FACTORY.create(CreateSettings("observer", "exporter"), config, None)
    assert isinstance(exp, ObserverExporter)
    exp.start(TestHost())
    try:
        exp.consume_flows(batch(5))
        server = f"127.0.0.1:{exp.tcp_port}"
        common = ["--server", server, "--tls-ca-cert-file", str(files["ca.crt"]), "--tls-server-name", "agent.test"]
        client_cert = [
            "--tls-client-cert-file",
            str(files["client.crt"]),
            "--tls-client-key-file",
            str(files["client.key"]),
        ]
        code, out, err = _observe(*common, *client_cert, "--last", "2", "-o", "json")
        assert code == 0, err
        assert [json.loads(line)["flow"]["l4"]["UDP"]["source_port"] for line in out.splitlines()] == [4, 5]
        code, _, err = _observe(*common, "--last", "2", "--timeout", "3")
        assert (code == 0) is (not mtls), err  # without a client certificate: refused only under mTLS
        code, _, err = _observe("--server", server, "--last", "1", "--timeout", "2")  # plain text to a TLS port
        assert code == 1
    finally:
        exp.shutdown()


def test_configuration_errors_name_the_field() -> None:
    def problems(observer: dict[str, Any]) -> str:
        raw = {
            "receivers": {"synthetic": {}},
            "exporters": {"observer": observer},
            "service": {"pipelines": {"logs": {"receivers": ["synthetic"], "exporters": ["observer"]}}},
        }
        with pytest.raises(ConfigError) as err:
            parse_config(raw, env={})
        return str(err.value)

    assert "exporters.observer" in problems({"tcp_endpoint": ":4244"})
    assert "tls.cert_file" in problems({"tcp_endpoint": ":4244"})
    assert "exporters.observer.socket_mode" in problems({"socket_mode": "rw"})
    assert "exporters.observer.socket" in problems({"socket": "/var/run/x.sock"})
    assert "exporters.observer.buffer_size" in problems({"buffer_size": 0})
    assert "no listener" in problems({"socket": ""})
    ok = parse_config(
        {
            "receivers": {"synthetic": {}},
            "exporters": {"observer": {"tcp_endpoint": ":4244", "tls": {"insecure": True}}},
            "service": {"pipelines": {"logs": {"receivers": ["synthetic"], "exporters": ["observer"]}}},
        },
        env={},
    )
    assert ok.exporters["observer"].config.tcp_endpoint == ":4244"  # type: ignore[attr-defined]


def test_observe_rejects_bad_flags() -> None:
    assert _observe("--server", "unix:///nonexistent", "--first", "3", "--follow")[0] == 2
    code, _, err = _observe("--server", "unix:///nonexistent", "--group-by", "colour")
    assert code == 2 and "valid:" in err
    with pytest.raises(SystemExit):
        _observe("--tcp-flags", "SYN,BOGUS")
    with pytest.raises(SystemExit):  # not one of Hubble's drop codes
        _observe("--drop-reason-desc", "NETFILTER_DROP")


# -- kubectl retina observe -------------------------------------------------------------------------------

FAKE_KUBECTL = textwrap.dedent(
    """\
    #!{python}
    # Stands in for `kubectl port-forward` (kmock has no pods to forward to): records its arguments and
    # forwards nothing itself; the test points it at the exporter's real TCP port.
    import os, sys, time
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\\n")
    print("Forwarding from 127.0.0.1:" + os.environ["FAKE_KUBECTL_PORT"] + " -> 4244", flush=True)
    time.sleep(60)
    """
)


def test_kubectl_retina_observe_finds_the_nodes_agent_and_forwards_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from retina_otel.controller import kube
    from retina_otel.controller.kube import KubeClient
    from retina_otel.kubectl_plugin.cli import main
    from retina_otel.testing_k8s import EmulatedCluster

    config = FACTORY.config_model.model_validate(
        {"socket": "", "tcp_endpoint": "127.0.0.1:0", "tls": {"insecure": True}}
    )
    exp = FACTORY.create(CreateSettings("observer", "exporter"), config, None)
    assert isinstance(exp, ObserverExporter)
    exp.start(TestHost(node_name="n2"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.setenv("FAKE_KUBECTL_PORT", str(exp.tcp_port))
    labels = {"app.kubernetes.io/name": "retina-otel", "app.kubernetes.io/component": "agent"}
    try:
        exp.consume_flows(batch(4))
        with EmulatedCluster() as emu:
            client = KubeClient.from_options(api_url=emu.url)
            for node in ("n1", "n2"):
                client.create(
                    kube.PODS,
                    {
                        "metadata": {"name": f"retina-otel-agent-{node}", "namespace": "kube-system", "labels": labels},
                        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "x"}]},
                        "status": {"phase": "Running"},
                    },
                    "kube-system",
                )
            client.close()
            code = main(["--api-url", emu.url, "observe", "--node", "n2", "--last", "2"])
            out = capsys.readouterr()
            assert code == 0, out.err
            assert len(out.out.splitlines()) == 2 and "[n2]" in out.out and ":4 -> " in out.out
            assert "port-forward -n kube-system pod/retina-otel-agent-n2 :4244" in log.read_text()
            # Several agents and no --node: the choice is the user's.
            assert main(["--api-url", emu.url, "observe", "--last", "1"]) == 1
            assert "2 running agent pods" in capsys.readouterr().err
    finally:
        exp.shutdown()


# -- what a flow.Flow carries ----------------------------------------------------------------------------


def test_flow_fields_from_a_record(exporter: tuple[ObserverExporter, TestHost, str]) -> None:
    exp, _, target = exporter
    table = EndpointTable(
        [
            {
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "web-1",
                "k8s.pod.label.app": "web",
                "k8s.workload.kind": "Deployment",
                "k8s.workload.name": "web",
                "k8s.service.name": "web-svc",
            },
            {"k8s.namespace.name": "db", "k8s.service.name": "pg", "retina.endpoint.kind": "service"},
        ]
    )
    b = FlowBatch.empty(3)
    r = b.records
    b.endpoints = table
    r["src_ip"] = [ip_to_bytes("2001:db8::1"), ip_to_bytes("198.18.0.1"), ip_to_bytes("198.18.0.1")]
    r["dst_ip"] = [ip_to_bytes("2001:db8::2"), ip_to_bytes("198.18.0.2"), ip_to_bytes("198.18.0.53")]
    r["ip_version"] = [6, 4, 4]
    r["proto"] = [58, 6, 17]
    r["src_port"] = [128, 40000, 5353]  # ICMPv6 echo request type 128, code 0
    r["dst_port"] = [0, 5432, 53]
    r["event"] = [Event.FLOW, Event.DROP, Event.DNS]
    r["verdict"] = [1, 2, 1]
    r["drop_reason"][1] = STRINGS.intern("NETFILTER_DROP")
    r["tcp_flags"][1, TcpFlag.SYN] = 1
    r["observation_point"] = [ObservationPoint.TO_ENDPOINT, ObservationPoint.STACK, ObservationPoint.FROM_ENDPOINT]
    r["direction"] = [Direction.INGRESS, Direction.EGRESS, Direction.EGRESS]
    r["is_reply"] = [1, 0, 1]
    r["ifindex"] = [1, 0, 0]  # lo
    r["src_endpoint"] = [-1, 0, 0]
    r["dst_endpoint"] = [-1, 1, -1]
    r["dns_is_response"][2], r["dns_rcode"][2], r["dns_latency_us"][2] = 1, 0, 1500
    r["time_end_ns"] = T0
    b.dns = [None, None, {"query": "db.test.", "answers": ["198.18.0.7", "alias.test."], "query_type": "A"}]
    exp.consume_flows(b)
    with grpc.insecure_channel(target) as channel:
        icmp, drop, dns = [x.flow for x in ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest())]
    assert (icmp.IP.source, icmp.IP.ipVersion) == ("2001:db8::1", flow_pb2.IPv6)
    assert (icmp.l4.ICMPv6.type, icmp.l4.ICMPv6.code) == (128, 0)
    assert icmp.trace_observation_point == flow_pb2.TO_ENDPOINT and icmp.traffic_direction == flow_pb2.INGRESS
    assert icmp.is_reply.value is True and icmp.event_type.type == 4
    assert (icmp.interface.index, icmp.interface.name) == (1, "lo")
    assert icmp.time.seconds == T0 // 10**9 and icmp.node_name == "test-node"
    # Retina's mapping: a netfilter rule drop is POLICY_DENIED (133), also the drop event's sub-type as in Cilium.
    assert drop.verdict == flow_pb2.DROPPED and drop.drop_reason_desc == flow_pb2.POLICY_DENIED == 133
    assert (drop.event_type.type, drop.event_type.sub_type) == (1, 133)
    assert drop.trace_observation_point == flow_pb2.UNKNOWN_POINT
    assert icmp.drop_reason_desc == dns.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN
    assert drop.l4.TCP.flags.SYN and not drop.l4.TCP.flags.ACK
    assert (drop.source.namespace, drop.source.pod_name, list(drop.source.labels)) == ("shop", "web-1", ["app=web"])
    assert [(w.kind, w.name) for w in drop.source.workloads] == [("Deployment", "web")]
    assert (drop.source_service.name, drop.destination_service.namespace) == ("web-svc", "db")
    assert drop.destination.pod_name == "" and drop.traffic_direction == flow_pb2.EGRESS
    assert not drop.HasField("extensions")  # Hubble's clients get no retina-otel type to resolve
    assert dns.Type == flow_pb2.L7 and dns.event_type.type == 129
    assert dns.l7.type == flow_pb2.RESPONSE and dns.l7.latency_ns == 1_500_000
    assert (dns.l7.dns.query, list(dns.l7.dns.ips), list(dns.l7.dns.cnames)) == (
        "db.test.",
        ["198.18.0.7"],
        ["alias.test."],
    )
    assert list(dns.l7.dns.qtypes) == ["A"] and dns.l4.UDP.destination_port == 53
    code, out, _ = _observe("--server", target, "--verdict", "DROPPED", "-o", "json")
    shown = json.loads(out)["flow"]
    meta = shown["extensions"]
    assert code == 0 and meta["drop_reason"] == "NETFILTER_DROP" and meta["event"] == "drop"
    assert meta["tcp_flag_counts"] == {"SYN": "1"} and shown["drop_reason_desc"] == "POLICY_DENIED"
    # Hubble's filters on it: drop_reason_desc, and a drop event type with its sub-type.
    no_socket = b.select(slice(1, 2))
    no_socket.records["drop_reason"] = STRINGS.intern("NO_SOCKET")  # no Cilium code: DROP_REASON_UNKNOWN
    exp.consume_flows(no_socket)
    with grpc.insecure_channel(target) as channel:
        stub = ObserverStub(channel)

        def reasons(flt: flow_pb2.FlowFilter) -> list[int]:
            request = observer_pb2.GetFlowsRequest(whitelist=[flt])
            return [r.flow.drop_reason_desc for r in stub.GetFlows(request)]

        assert reasons(flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.POLICY_DENIED])) == [133]
        assert reasons(flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.DROP_REASON_UNKNOWN])) == [0]
        drop_133 = flow_pb2.EventTypeFilter(type=1, match_sub_type=True, sub_type=133)
        assert reasons(flow_pb2.FlowFilter(event_type=[drop_133])) == [133]
        assert reasons(flow_pb2.FlowFilter(event_type=[flow_pb2.EventTypeFilter(type=1)])) == [133, 0]
    # A dropped frame that is not IP (dropreason: ip_version 0, no addresses) has no IP message, matches no
    # address filter and is found by Hubble's IP_NOT_USED.
    not_ip = b.select(slice(1, 2))
    r = not_ip.records
    r["ip_version"], r["proto"], r["src_port"], r["dst_port"] = 0, 0, 0, 0
    r["src_ip"] = r["dst_ip"] = bytes(16)
    r["src_endpoint"] = r["dst_endpoint"] = -1
    exp.consume_flows(not_ip)
    with grpc.insecure_channel(target) as channel:
        stub = ObserverStub(channel)
        (last,) = [x.flow for x in stub.GetFlows(observer_pb2.GetFlowsRequest(number=1))]
        assert not last.HasField("IP") and not last.HasField("l4") and last.verdict == flow_pb2.DROPPED
        request = observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(ip_version=[flow_pb2.IP_NOT_USED])])
        assert [x.flow.HasField("IP") for x in stub.GetFlows(request)] == [False]
        everything = observer_pb2.GetFlowsRequest(whitelist=[flow_pb2.FlowFilter(source_ip=["::/0", "0.0.0.0/0"])])
        assert all(x.flow.HasField("IP") for x in stub.GetFlows(everything))
    code, out, _ = _observe("--server", target, "--last", "1")
    assert code == 0 and "[test-node]: - -> - drop DROPPED (NO_SOCKET)" in out, out


def test_group_by_follow_refreshes_its_table_every_second(exporter: tuple[ObserverExporter, TestHost, str]) -> None:
    from retina_otel.observe import cli
    from retina_otel.observe.groupby import GroupBy
    from retina_otel.observe.request import build_request

    exp, _, target = exporter
    out = io.StringIO()
    table = GroupBy(["destination_port"], out, io.StringIO(), follow=True)
    stop = threading.Event()
    args = argparse.Namespace(server=target)
    channel = cli.connect(args)
    thread = threading.Thread(
        target=cli.run, args=(channel, build_request([], follow=True), table), kwargs={"tick": table.tick, "stop": stop}
    )
    thread.start()
    try:
        time.sleep(0.5)
        exp.consume_flows(batch(3))
        assert wait_for(lambda: "3" in out.getvalue(), timeout=5)
        exp.consume_flows(batch(2))
        assert wait_for(lambda: out.getvalue().count("DESTINATION_PORT") >= 2 and "  5 " in out.getvalue(), timeout=5)
    finally:
        stop.set()
        thread.join(timeout=5)
        channel.close()
    tables = [t for t in out.getvalue().split("\n\n") if t.strip()]
    assert tables[-1].splitlines()[1].split() == ["53", "5", "500", "5"]


def test_clients_beyond_max_clients_are_refused_and_shutdown_ends_following_calls(tmp_path: Path) -> None:
    config = FACTORY.config_model.model_validate({"socket": f"unix://{tmp_path}/o.sock", "max_clients": 1})
    exp = FACTORY.create(CreateSettings("observer", "exporter"), config, None)
    assert isinstance(exp, ObserverExporter)
    exp.start(TestHost())
    channel = grpc.insecure_channel(f"unix://{tmp_path}/o.sock")
    try:
        stub = ObserverStub(channel)
        exp.consume_flows(batch(1))
        following = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, since={"seconds": 1}))
        assert next(following).HasField("flow")  # the one allowed call is open
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GetFlows(observer_pb2.GetFlowsRequest(number=1)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        started = time.monotonic()
        exp.shutdown()
        with pytest.raises((StopIteration, grpc.RpcError)):  # the stream ends (cleanly, or cancelled by the stop)
            next(following)
        assert time.monotonic() - started < 5
    finally:
        exp.shutdown()
        channel.close()
    assert not (tmp_path / "o.sock").exists()


def test_observe_builds_hubble_requests() -> None:
    from retina_otel.hubble import retina_pb2
    from retina_otel.observe.request import build_request, parse_time

    now = 1_800_000_000.0
    assert parse_time("90s", now) == int((now - 90) * 1e9)
    assert parse_time("2m", now) == int((now - 120) * 1e9)
    assert parse_time("2026-12-03T13:00:00Z") == int(dt.datetime(2026, 12, 3, 13, tzinfo=dt.UTC).timestamp() * 1e9)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_time("yesterday")
    assert build_request([]).number == 20  # hubble observe's default
    assert build_request([], follow=True).number == 0  # only new flows
    flags = [
        (False, "--pod", "shop/web"),
        (False, "--protocol", "tcp"),
        (True, "--drop-reason", "no_socket"),
        (False, "--from-namespace", "shop"),
    ]
    request = build_request(flags, last=5)
    assert request.number == 5
    left, right = request.whitelist
    assert list(left.source_pod) == ["shop/web"] and list(left.protocol) == ["tcp"]
    assert list(right.destination_pod) == ["shop/web"] and list(right.source_pod) == ["shop/"]
    assert list(right.protocol) == ["tcp"]
    # A pod without a namespace is looked for in the given namespaces, as hubble observe does.
    (only,) = build_request(
        [(False, "--from-pod", "web"), (False, "--from-namespace", "a"), (False, "--from-namespace", "b")]
    ).whitelist
    assert list(only.source_pod) == ["a/web", "b/web"]
    left, right = build_request([(False, "--namespace", "shop"), (False, "--pod", "web")]).whitelist
    assert (list(left.source_pod), list(right.destination_pod)) == (["shop/web"], ["shop/web"])
    extension = retina_pb2.GetFlowsExtension()
    assert request.extensions.Unpack(extension)
    assert [list(e.drop_reason) for e in extension.blacklist] == [["NO_SOCKET"]]
    assert len(request.blacklist) == 1 and not request.blacklist[0].ListFields()
    (desc,) = build_request([(False, "--drop-reason-desc", "POLICY_DENIED")]).whitelist
    assert list(desc.drop_reason_desc) == [flow_pb2.POLICY_DENIED]


def test_the_embedded_default_gets_the_observer_on_request() -> None:
    import yaml

    from retina_otel.config import default_config_text

    assert "observer" not in yaml.safe_load(default_config_text(env={}))["exporters"]  # no gRPC by default
    assert "observer" not in yaml.safe_load(default_config_text(env={"RETINA_OTEL_OBSERVER": "off"}))["exporters"]
    for value, expected in (("on", {}), ("unix:///run/obs.sock", {"socket": "unix:///run/obs.sock"})):
        text = default_config_text(env={"RETINA_OTEL_OBSERVER": value, "OTEL_EXPORTER_OTLP_ENDPOINT": "h:4317"})
        raw = yaml.safe_load(text)
        assert raw["exporters"]["observer"] == expected and "otlp" in raw["exporters"]
        pipelines = raw["service"]["pipelines"]
        assert [n for n, p in pipelines.items() if "observer" in p["exporters"]] == ["logs"]
        assert "the observer exporter" in text.splitlines()[0]
        parse_config(raw, env={})


def _proto_fields(text: str) -> dict[str, dict[str, int]]:
    """message/enum name -> {field or value name: number}, from .proto text (nested oneofs flattened)."""
    import re

    out: dict[str, dict[str, int]] = {}
    for kind_name, body in re.findall(r"(?:message|enum)\s+(\w+)\s*\{((?:[^{}]|\{[^{}]*\})*)\}", text):
        fields = re.findall(r"(\w+)\s*=\s*(\d+)\s*[;\[]", body)
        out[kind_name] = {name: int(number) for name, number in fields}
    return out


def test_our_protos_agree_with_hubbles_definitions_used_by_the_client_test() -> None:
    """Every message, field and enum value retina-otel declares in Hubble's packages has the name and number
    of tests/support/hubble_api (Hubble's files, from which the Hubble-client test builds its stubs)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for ours_file, theirs_file in (("flow.proto", "flow/flow.proto"), ("observer.proto", "observer/observer.proto"),
                                   ("relay.proto", "relay/relay.proto")):  # fmt: skip
        ours = _proto_fields((root / "retina_otel" / "hubble" / ours_file).read_text())
        theirs = _proto_fields((root / "tests" / "support" / "hubble_api" / theirs_file).read_text())
        assert ours, ours_file
        for message, fields in ours.items():
            assert message in theirs, f"{ours_file}: {message} is not one of Hubble's"
            wrong = {name: n for name, n in fields.items() if theirs[message].get(name) != n}
            assert not wrong, f"{ours_file} {message}: {wrong} differ from Hubble's {theirs[message]}"
