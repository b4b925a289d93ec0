"""``retina-otel observe`` and the Observer API against the real agent and real traffic.

One scenario (module fixture ``scene``): pods ``client`` (namespace obs-shop), ``server`` (obs-backend)
and ``dns`` (obs-dns, a dnsmasq), known to k8sattributes through a ``source: file`` endpoints YAML,
on host veths with this module's own prefix (``ob<token>p<n>``, never the default patterns). Traffic:
UDP and TCP client -> server, UDP dropped by an nft rule in the server (NETFILTER_DROP), a TCP transfer
losing every fifth data segment to another rule (retransmissions), ICMP, DNS queries answered and
NXDOMAIN. The agent runs packetparser, dropreason, tcpretrans and dns -> k8sattributes ->
the observer exporter AND an OTLP exporter into a real OTLP/gRPC sink, in the same logs pipeline:
the sink's records are the truth every answer of the Observer API is compared with.

dropreason reads every drop of the host (the kfree_skb tracepoint is not per interface), so a
concurrent run of this module, or any test dropping to the same port, adds drop records of its own
addresses. The scene makes that happen on purpose: a ``neighbour`` sandbox (veths outside the agent's
pattern) drops the same 7 datagrams to DROP_PORT, and checks that count the scene's drops select them
by the pods' addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_otel.config import parse_config
from retina_otel.observe.cli import add_arguments, main_from_args
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.otlp_sink import OtlpSink
from tests.test_e2e_metrics import (
    MISSING_NAME,
    OK_NAME,
    DnsLog,
    dns_answer_of,
    dns_ask,
    nft,
    nft_counters,
    pings,
    start_dnsmasq,
    tcp_exchange,
    udp_send,
    udp_sink,
)

pytestmark = pytest.mark.kernel

NODE = "observe-node"
UDP_PORT, DROP_PORT, TCP_PORT, LOSS_PORT = 7510, 7520, 7530, 7540
DROPPED = 7  # datagrams to DROP_PORT, dropped by the server's nft rule
DROP_RULES = (
    "table ip obs_drop {\n counter dropped { }\n chain input { type filter hook input priority 0;\n"
    f'  udp dport {DROP_PORT} counter name "dropped" drop\n }}\n}}\n'
)
# every fifth data segment to LOSS_PORT (never SYN/FIN/RST, so the handshake stays quick): retransmissions
LOSS_RULES = (
    "table ip obs_loss {\n chain input { type filter hook input priority 10;\n"
    f"  tcp dport {LOSS_PORT} tcp flags & (syn | fin | rst) == 0 ip length > 200 numgen inc mod 5 == 1 drop\n"
    " }\n}\n"
)
NAMESPACES = {"client": "obs-shop", "server": "obs-backend", "dns": "obs-dns"}
Key = tuple[Any, ...]


def agent_config(endpoints: Path, socket_path: Path, otlp_port: int, token: str) -> dict[str, Any]:
    receivers = ["packetparser", "dropreason", "tcpretrans", "dns"]
    return {
        "receivers": {
            "packetparser": {
                "aggregation": "high",
                "interfaces": [f"ob{token}*"],
                "host_interface": "none",
                "report_interval": 300,
                "batch_interval": 0.2,
            },
            "dropreason": {"interval": 300},
            "tcpretrans": {"interval": 300},
            "dns": {"interval": 300, "query_timeout": 0.5},
        },
        "processors": {
            "k8sattributes": {"source": "file", "file_path": str(endpoints), "node_name": NODE, "grace_period": 600}
        },
        "exporters": {
            "observer": {"socket": f"unix://{socket_path}", "buffer_size": 200_000},
            "otlp": {
                "endpoint": f"127.0.0.1:{otlp_port}",
                "tls": {"insecure": True},
                "signals": ["logs"],
                "flush_interval": 0.2,
            },
        },
        "service": {
            "telemetry": {"node_name": NODE, "health": {"endpoint": ""}},
            "pipelines": {
                "logs": {"receivers": receivers, "processors": ["k8sattributes"], "exporters": ["observer", "otlp"]}
            },
        },
    }


@dataclass
class Scene:
    agent: Agent
    sink: OtlpSink
    socket: Path
    components: dict[str, Any]
    client: Pod
    server: Pod
    dns: Pod

    @property
    def server_arg(self) -> str:
        return f"unix://{self.socket}"

    def flush(self) -> None:
        for name in ("packetparser", "dropreason", "tcpretrans", "dns"):
            self.components[name].flush()

    def settle(self) -> None:
        """Flush, and wait until the sink has every record the observer has seen (same pipeline)."""
        self.flush()
        ring = self.components["observer"].ring
        lost = self.agent.metrics.get("controlplane_networkobservability_lost_events_counter")
        assert wait_for(lambda: len(self.sink.log_records()) == ring.head, timeout=20), (
            len(self.sink.log_records()),
            ring.head,
            lost.snapshot().series if lost is not None else None,
        )


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("observe")
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(Sandbox())
        client = sandbox.add_pod("client", veth_prefix="ob")
        server = sandbox.add_pod("server", veth_prefix="ob")
        dns = sandbox.add_pod("dns", ipv6=False, veth_prefix="ob")
        endpoints = tmp / "endpoints.yaml"
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "nodes": [{"name": NODE, "ips": []}],
                    "endpoints": [
                        {
                            "name": pod.name,
                            "namespace": NAMESPACES[pod.name],
                            "ips": [ip for ip in (pod.ipv4, pod.ipv6) if ip],
                            "node": NODE,
                            "labels": {"app": pod.name},
                        }
                        for pod in (client, server, dns)
                    ],
                }
            )
        )
        nft(server, DROP_RULES)
        nft(server, LOSS_RULES)
        start_dnsmasq(dns, dns_answer_of(dns))
        for src, dst in ((client, server), (client, dns), (server, client)):
            assert wait_for(lambda s=src, d=dst: pings(s, d.ipv4)), f"{src.name} cannot reach {dst.name}"
        sink = OtlpSink()
        sink.start()
        stack.callback(sink.stop)
        socket_path = tmp / "observer.sock"
        agent = Agent(parse_config(agent_config(endpoints, socket_path, sink.port, sandbox.token), env={}))
        stack.callback(agent.shutdown)
        agent.start()
        assert wait_for(lambda: agent.readiness()[0], timeout=60), agent.readiness()[1]
        states = {s.id: s for s in agent.states()}
        failed = {k: s.detail for k, s in states.items() if s.status.value != "ok"}
        assert not failed, failed
        components = {k: s.component for k, s in states.items()}
        pp = components["packetparser"]
        assert wait_for(
            lambda: {client.host_veth, server.host_veth, dns.host_veth} <= set(pp.attached_interfaces().values()),
            timeout=20,
        )
        # -- traffic --
        with udp_sink(server, UDP_PORT) as sock:
            udp_send(client, server.ipv4, UDP_PORT, [b"u" * size for size in (10, 100, 1000)])
            for _ in range(3):
                sock.recv(2048)
        udp_send(client, server.ipv4, DROP_PORT, [b"d" * 64] * DROPPED)
        # Another "run" on the same host: the same drops between pods the agent does not watch.
        neighbour = stack.enter_context(Sandbox())
        n_client = neighbour.add_pod("client", ipv6=False, veth_prefix="ox")
        n_server = neighbour.add_pod("server", ipv6=False, veth_prefix="ox")
        nft(n_server, DROP_RULES)
        assert wait_for(lambda: pings(n_client, n_server.ipv4)), "the neighbour's pods cannot reach each other"
        udp_send(n_client, n_server.ipv4, DROP_PORT, [b"d" * 64] * DROPPED)
        tcp_exchange(client, server, TCP_PORT, send=2000, reply=3000)
        tcp_exchange(client, server, LOSS_PORT, send=100_000, reply=10, nodelay=False)
        assert server.ipv6
        client.run(["ping", "-c2", "-i0.2", "-W2", server.ipv6])
        dns_ask(client, dns.ipv4, OK_NAME, 2, DnsLog(), first_id=300)
        dns_ask(client, dns.ipv4, MISSING_NAME, 1, DnsLog(), first_id=400)
        scene = Scene(agent, sink, socket_path, components, client, server, dns)
        scene.settle()
        yield scene


# -- the two views of the same records --------------------------------------------------------------------


def observe(scene: Scene, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--server", scene.server_arg, *argv])
    out, err = io.StringIO(), io.StringIO()
    code = main_from_args(args, out, err)
    return code, out.getvalue(), err.getvalue()


def observe_json(scene: Scene, *argv: str) -> list[dict[str, Any]]:
    code, out, err = observe(scene, "-o", "json", "--last", "1000000", *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _ns(text: str) -> int:
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


def flow_key(response: dict[str, Any]) -> Key:
    flow = response["flow"]
    l4 = flow.get("l4", {})
    kind = next(iter(l4), "")
    ports = l4.get(kind, {}) if kind in ("TCP", "UDP") else {}
    meta = flow.get("extensions", {})
    return (
        meta.get("event", ""),
        flow.get("IP", {}).get("source", "::"),  # a non-IP record has no IP; the sink's record says "::"
        flow.get("IP", {}).get("destination", "::"),
        int(ports.get("source_port", 0)),
        int(ports.get("destination_port", 0)),
        int(meta.get("packets", 0)),
        int(meta.get("bytes", 0)),
        flow.get("verdict", ""),
        meta.get("drop_reason", ""),
        _ns(flow["time"]),
    )


def sink_key(attrs: dict[str, Any], record: Any) -> Key:
    return (
        str(record.body.string_value).removeprefix("retina.flow."),
        attrs["source.address"],
        attrs["destination.address"],
        int(attrs.get("source.port", 0)),
        int(attrs.get("destination.port", 0)),
        int(attrs["retina.flow.packets"]),
        int(attrs["retina.flow.bytes"]),
        str(attrs["retina.flow.verdict"]).upper(),
        attrs.get("retina.drop.reason", ""),
        int(record.time_unix_nano),
    )


def sink_records(scene: Scene) -> list[tuple[dict[str, Any], Any]]:
    return [(attrs, record) for _, attrs, record in scene.sink.log_records()]


def expected(scene: Scene, keep: Callable[[dict[str, Any], str], bool]) -> Counter[Key]:
    return Counter(sink_key(a, r) for a, r in sink_records(scene) if keep(a, str(r.body.string_value)))


def agree(
    scene: Scene, flags: list[str], keep: Callable[[dict[str, Any], str], bool]
) -> tuple[Counter[Key], Counter[Key]]:
    """(observer's answer, the sink's records filtered here), from the same moment: the pods' own
    background traffic (IPv6 neighbour discovery) can add a record between the two reads, so both are
    read again, settled, until they agree (at most a few times)."""
    for _ in range(5):
        scene.settle()
        want = expected(scene, keep)
        got = Counter(flow_key(r) for r in observe_json(scene, *flags) if "flow" in r)
        if got == want and len(scene.sink.log_records()) == scene.components["observer"].ring.head:
            break
    return got, want


# -- tests ------------------------------------------------------------------------------------------------


def test_last_returns_exactly_the_records_the_agent_exported(scene: Scene) -> None:
    got, want = agree(scene, [], lambda a, e: True)
    assert got == want
    kinds = {k[0] for k in want}
    assert {"flow", "drop", "dns", "retransmit"} <= kinds, kinds
    code, out, _ = observe(scene, "--last", "3")
    assert code == 0 and len(out.splitlines()) == 3


def _pod(side: str, namespace: str, prefix: str) -> Callable[[dict[str, Any], str], bool]:
    return lambda a, e: (
        a.get(f"{side}.k8s.namespace.name") == namespace and str(a.get(f"{side}.k8s.pod.name", "")).startswith(prefix)
    )


def _any(*tests: Callable[[dict[str, Any], str], bool]) -> Callable[[dict[str, Any], str], bool]:
    return lambda a, e: any(t(a, e) for t in tests)


def _in_net(side: str, net: str) -> Callable[[dict[str, Any], str], bool]:
    import ipaddress

    network = ipaddress.ip_network(net)
    return lambda a, e: ipaddress.ip_address(a[f"{side}.address"]) in network


def _port(side: str, port: int) -> Callable[[dict[str, Any], str], bool]:
    return lambda a, e: a["network.transport"] in ("tcp", "udp") and a.get(f"{side}.port") == port


def _cases(scene: Scene) -> list[tuple[list[str], Callable[[dict[str, Any], str], bool]]]:
    c, s = scene.client, scene.server
    subnet = c.ipv4.rsplit(".", 1)[0] + ".0/24"
    shop, backend = NAMESPACES["client"], NAMESPACES["server"]
    src_client, dst_server = _pod("source", shop, "client"), _pod("destination", backend, "server")
    return [
        (["--from-pod", f"{shop}/client"], src_client),
        (["--to-pod", f"{backend}/serv"], dst_server),
        (["--pod", f"{backend}/server"], _any(_pod("source", backend, "server"), dst_server)),
        (["--from-namespace", shop], _pod("source", shop, "")),
        (["--to-namespace", NAMESPACES["dns"]], _pod("destination", NAMESPACES["dns"], "")),
        (["--namespace", backend], _any(_pod("source", backend, ""), _pod("destination", backend, ""))),
        (["--from-ip", c.ipv4], _in_net("source", c.ipv4)),
        (["--to-ip", subnet], _in_net("destination", subnet)),
        (["--ip", s.ipv4], _any(_in_net("source", s.ipv4), _in_net("destination", s.ipv4))),
        (["--ip", f"{s.ipv6}/128"], _any(_in_net("source", f"{s.ipv6}/128"), _in_net("destination", f"{s.ipv6}/128"))),
        (["--port", "53"], _any(_port("source", 53), _port("destination", 53))),
        (["--to-port", str(TCP_PORT)], _port("destination", TCP_PORT)),
        (["--from-port", str(TCP_PORT)], _port("source", TCP_PORT)),
        (["--protocol", "tcp"], lambda a, e: a["network.transport"] == "tcp"),
        (["--protocol", "icmp"], lambda a, e: a["network.transport"] == "icmp"),
        (["--verdict", "DROPPED"], lambda a, e: a["retina.flow.verdict"] == "dropped"),
        (["--drop-reason", "NETFILTER_DROP"], lambda a, e: a.get("retina.drop.reason") == "NETFILTER_DROP"),
        (["--drop-reason-desc", "POLICY_DENIED"], lambda a, e: a.get("retina.drop.reason") == "NETFILTER_DROP"),
        (
            ["--tcp-flags", "SYN"],
            lambda a, e: (
                a["network.transport"] == "tcp"
                and bool(a.get("retina.tcp.flags.syn") or a.get("retina.tcp.flags.synack"))
            ),
        ),
        (["--traffic-direction", "ingress"], lambda a, e: a["retina.flow.direction"] == "ingress"),
        (["--type", "dns"], lambda a, e: e == "retina.flow.dns"),
        (["--type", "drop"], lambda a, e: e == "retina.flow.drop"),
        (["--type", "retransmit"], lambda a, e: e == "retina.flow.retransmit"),
        (
            ["--type", "retransmit", "--to-port", str(LOSS_PORT)],
            lambda a, e: e == "retina.flow.retransmit" and _port("destination", LOSS_PORT)(a, e),
        ),
        (["--not", "--protocol", "udp"], lambda a, e: a["network.transport"] != "udp"),
        (["--not", "--type", "flow"], lambda a, e: e != "retina.flow.flow"),
        (
            ["--from-pod", f"{shop}/client", "--not", "--to-namespace", backend],
            lambda a, e: src_client(a, e) and not _pod("destination", backend, "")(a, e),
        ),
        (
            ["--type", "flow", "--protocol", "udp", "--to-ip", s.ipv4],
            lambda a, e: (
                e == "retina.flow.flow" and a["network.transport"] == "udp" and a["destination.address"] == s.ipv4
            ),
        ),
    ]


def test_every_filter_and_not_match_the_same_records_filtered_here(scene: Scene) -> None:
    for flags, keep in _cases(scene):
        got, want = agree(scene, flags, keep)
        assert got == want, flags
        assert want, f"{flags}: the scenario has no such record, the check proves nothing"


def test_dns_flows_show_the_query(scene: Scene) -> None:
    flows = [r["flow"] for r in observe_json(scene, "--type", "dns")]
    queries = Counter((f["l7"]["type"], f["l7"]["dns"]["query"]) for f in flows)
    assert queries[("REQUEST", OK_NAME + ".")] >= 2 and queries[("REQUEST", MISSING_NAME + ".")] >= 1, queries
    answered = [f for f in flows if f["l7"]["type"] == "RESPONSE" and f["l7"]["dns"]["query"] == OK_NAME + "."]
    assert answered and all(f["l7"]["dns"]["ips"] == [dns_answer_of(scene.dns)] for f in answered)
    missing = [f for f in flows if f["l7"]["type"] == "RESPONSE" and f["l7"]["dns"]["query"] == MISSING_NAME + "."]
    assert missing and all(f["l7"]["dns"].get("rcode", 0) == 3 for f in missing)
    code, out, _ = observe(scene, "--type", "dns", "--last", "50")
    assert code == 0 and f"DNS Query {OK_NAME}. A" in out


def test_a_drop_shows_the_kernels_reason(scene: Scene) -> None:
    c, s = scene.client.ipv4, scene.server.ipv4
    ours = ["--from-ip", c, "--to-ip", s, "--to-port", str(DROP_PORT)]
    code, out, _ = observe(scene, "--verdict", "DROPPED", *ours, "--last", "100")
    assert code == 0
    lines = out.splitlines()
    assert lines and all("DROPPED (NETFILTER_DROP)" in line for line in lines), out
    # Hubble's own field: a netfilter rule drop is POLICY_DENIED, as Retina reports it.
    shown = observe_json(scene, "--verdict", "DROPPED", *ours)
    assert shown and all(r["flow"]["drop_reason_desc"] == "POLICY_DENIED" for r in shown), shown
    assert all(r["flow"]["event_type"] == {"type": 1, "sub_type": 133} for r in shown), shown
    got, want = agree(
        scene,
        [*ours, "--verdict", "DROPPED"],
        lambda a, e: (
            (a["source.address"], a["destination.address"], a.get("destination.port")) == (c, s, DROP_PORT)
            and a["retina.flow.verdict"] == "dropped"
        ),
    )
    assert got == want
    dropped = sum(key[5] * count for key, count in got.items())  # packets
    assert dropped == nft_counters(scene.server)["dropped"][0] == DROPPED, (got, nft_counters(scene.server))
    # The host's other drops to that port (at least the neighbour sandbox's) are records too: only the
    # addresses make the count above the scene's own.
    everywhere = agree(
        scene,
        ["--to-port", str(DROP_PORT), "--verdict", "DROPPED"],
        lambda a, e: a.get("destination.port") == DROP_PORT and a["retina.flow.verdict"] == "dropped",
    )[0]
    assert sum(key[5] * count for key, count in everywhere.items()) >= 2 * DROPPED, everywhere


def _sink_groups(scene: Scene) -> dict[tuple[str, str], tuple[int, int, int]]:
    want: dict[tuple[str, str], list[int]] = {}
    for attrs, record in sink_records(scene):
        pod = attrs.get("source.k8s.pod.name")
        name = f"{attrs['source.k8s.namespace.name']}/{pod}" if pod else "-"
        proto = "dns" if str(record.body.string_value) == "retina.flow.dns" else attrs["network.transport"]
        if proto == "icmp":
            proto = "icmpv6" if attrs["network.type"] == "ipv6" else "icmpv4"
        elif proto.isdigit():  # no L4 the flow message has (e.g. a non-IP drop): an empty column
            proto = "-"
        totals = want.setdefault((name, proto), [0, 0, 0])
        totals[0] += int(attrs["retina.flow.packets"])
        totals[1] += int(attrs["retina.flow.bytes"])
        totals[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in want.items()}


def test_group_by_totals_equal_the_sinks(scene: Scene) -> None:
    for _ in range(5):  # read both at one moment (see agree)
        scene.settle()
        want = _sink_groups(scene)
        code, out, _ = observe(scene, "--last", "1000000", "--group-by", "source_pod,protocol")
        assert code == 0
        rows = [line.split() for line in out.splitlines()[1:]]
        got = {(r[0], r[1]): (int(r[2]), int(r[3]), int(r[4])) for r in rows}
        if got == want:
            break
    assert got == want


def test_follow_shows_a_flow_within_two_seconds(scene: Scene) -> None:
    lines: list[tuple[float, str]] = []

    class Lines(io.StringIO):
        def write(self, text: str) -> int:
            for line in text.splitlines():
                if line.strip():
                    lines.append((time.monotonic(), line))
            return len(text)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--server", scene.server_arg, "--follow", "--to-port", "7599"])
    stop = threading.Event()
    done: list[int] = []

    def follow() -> None:
        from retina_otel.observe import cli

        channel = cli.connect(args)
        from retina_otel.observe.output import Printer
        from retina_otel.observe.request import build_request

        request = build_request(args.filter_flags, follow=True)
        printer = Printer("compact", Lines(), io.StringIO(), True)
        cli.run(channel, request, printer, stop=stop)
        channel.close()
        done.append(1)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the call is open before the traffic
        with udp_sink(scene.server, 7599) as sock:
            udp_send(scene.client, scene.server.ipv4, 7599, [b"f" * 33])
            sock.recv(100)
        reported = time.monotonic()
        scene.flush()
        assert wait_for(lambda: bool(lines), timeout=5)
        assert lines[0][0] - reported <= 2.0, lines[0][0] - reported
        assert ":7599" in lines[0][1]
    finally:
        stop.set()
        thread.join(timeout=5)
    assert done
    scene.settle()


def test_retina_otel_observe_runs_as_a_command(scene: Scene) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "retina_otel", "observe", "--server", scene.server_arg, "--last", "2", "-o", "table"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["TIMESTAMP", "SOURCE", "DESTINATION"]
    assert len(proc.stdout.splitlines()) == 3
    bad = subprocess.run(
        [sys.executable, "-m", "retina_otel", "observe", "--server", "unix:///nonexistent/x.sock", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "no socket at /nonexistent/x.sock" in bad.stderr


HUBBLE_CLIENT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import grpc
    from google.protobuf import json_format
    from flow import flow_pb2
    from observer import observer_pb2, observer_pb2_grpc
    from relay import relay_pb2
    channel = grpc.insecure_channel(sys.argv[2])
    stub = observer_pb2_grpc.ObserverStub(channel)
    status = stub.ServerStatus(observer_pb2.ServerStatusRequest())
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest())
    request = observer_pb2.GetFlowsRequest(number=int(sys.argv[3]))
    flows = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in stub.GetFlows(request)]
    policy = flow_pb2.FlowFilter(drop_reason_desc=[flow_pb2.POLICY_DENIED], destination_ip=[sys.argv[4]])
    request = observer_pb2.GetFlowsRequest(number=1000, whitelist=[policy])
    drops = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in stub.GetFlows(request)]
    print(json.dumps({"seen": status.seen_flows, "max": status.max_flows,
                      "nodes": [(n.name, relay_pb2.NodeState.Name(n.state)) for n in nodes.nodes],
                      "flows": flows, "drops": drops}))
    """
)


def test_a_client_generated_from_hubbles_protos_streams_flows(scene: Scene, tmp_path: Path) -> None:
    from importlib import resources

    from grpc_tools import protoc

    protos = Path(__file__).parent / "support" / "hubble_api"
    include = str(resources.files("grpc_tools") / "_proto")
    files = ["flow/flow.proto", "relay/relay.proto", "observer/observer.proto"]
    code = protoc.main(
        ["protoc", f"-I{protos}", f"-I{include}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", *files]
    )
    assert code == 0
    for package in ("flow", "relay", "observer"):
        (tmp_path / package / "__init__.py").touch()
    # A process of its own: Hubble's messages have the same full names as retina-otel's (that is the point),
    # so both cannot live in one descriptor pool.
    proc = subprocess.run(
        [sys.executable, "-c", HUBBLE_CLIENT, str(tmp_path), scene.server_arg, "5", scene.server.ipv4],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["nodes"] == [[NODE, "NODE_CONNECTED"]]
    assert answer["max"] == 200_000 and answer["seen"] == scene.components["observer"].ring.head
    assert len(answer["flows"]) == 5
    ours = observe_json(scene, "--last", "5")
    for theirs, mine in zip(answer["flows"], ours, strict=True):
        assert theirs["flow"].get("IP") == mine["flow"].get("IP")
        assert theirs["flow"]["time"] == mine["flow"]["time"]
        assert theirs["flow"].get("l4") == mine["flow"].get("l4")
        assert theirs["flow"]["node_name"] == NODE
    # Hubble's drop_reason_desc filter and field, in Hubble's own enum: the scene's nft drops (and the lost
    # segments of the LOSS_PORT transfer) are POLICY_DENIED, exactly those our client finds the same way.
    drops = [r["flow"] for r in answer["drops"]]
    assert drops and all(f["verdict"] == "DROPPED" and f["drop_reason_desc"] == "POLICY_DENIED" for f in drops)
    assert all(f["event_type"] == {"type": 1, "sub_type": 133} for f in drops)
    ours = observe_json(scene, "--drop-reason-desc", "POLICY_DENIED", "--to-ip", scene.server.ipv4, "--last", "1000")
    assert [f["time"] for f in drops] == [r["flow"]["time"] for r in ours]
    assert {f["destination"]["pod_name"] for f in drops} == {"server"}


def test_server_status_and_nodes(scene: Scene) -> None:
    import grpc

    from retina_otel.hubble import observer_pb2
    from retina_otel.hubble.api import ObserverStub

    with grpc.insecure_channel(scene.server_arg) as channel:
        stub = ObserverStub(channel)
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest())
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest())
    ring = scene.components["observer"].ring
    assert status.max_flows == 200_000 and status.num_flows == ring.head == status.seen_flows
    assert [n.name for n in nodes.nodes] == [NODE]
    assert oct(os.stat(scene.socket).st_mode & 0o777) == "0o600"
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(scene.socket))
