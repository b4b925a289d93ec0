"""hubblemetrics end to end: real traffic between sandbox pods -> packetparser, dropreason, dns ->
k8sattributes (file) -> hubblemetrics on its own endpoint -> Debian's Prometheus -> the queries of
Retina's Hubble dashboards.

The dashboards are Retina's own (``deploy/grafana-dashboards/hubble-dns.json``,
``hubble-pod-flows-namespace.json`` and ``hubble-pod-flows-workload.json`` in microsoft/retina, read at
commit 0db1237ed20dd22bf73ce2c3334ef8bd6c106202 / 169b0c774717f8bf34fedaf16ab0d021d5bc5ef3): every
distinct panel query is listed below with its Grafana variables (whitespace normalised). A panel "shows
data" when its query, with the variables set to one of the scenario's pods, returns a sample. The
namespace dashboard's snapshot, flow, drop and TCP panels are the workload dashboard's with
``^$namespace/.*`` in place of ``^$namespace/$workload`` (compared section by section with both files), so
both are generated from one list.

The truth for the exact checks comes from nftables counters in the client pod (every IP packet and
TCP flag it sends to / receives from the other pods), nft's drop counters in the server, and the DNS
messages the test itself sent.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_otel.config import parse_config
from retina_otel.processors.hubblemetrics import DEFAULT_METRICS
from retina_otel.sandbox import Pod, Sandbox
from retina_otel.service import Agent
from retina_otel.testing import wait_for
from tests.support.prometheus_server import PrometheusServer, prometheus_server
from tests.test_e2e_metrics import (
    MISSING_NAME,
    OK_NAME,
    DnsLog,
    Labels,
    count_table,
    dns_answer_of,
    dns_ask,
    dns_query,
    free_port,
    nft,
    nft_counters,
    parse_metrics,
    pings,
    start_dnsmasq,
    tcp_exchange,
    udp_send,
)

__all__ = ["prometheus_server"]  # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.kernel

NODE = "hubble-node"
CLUSTER = "e2e-cluster"
TCP_PORT, CLOSED_PORT, SYN_DROP_PORT, DROP_PORT, OUT_DROP_PORT = 7200, 7201, 7202, 7300, 7301
ROUND_EVENTS = 12  # per kind of event and round: enough for the dashboards' [10m] rates >= 0.01/s
PODS = {  # sandbox pod -> (namespace, Kubernetes pod name, workload kind, workload name)
    "client": ("e2e-shop", "client-6d5f7b9c4-x2k9z", "Deployment", "client"),
    "server": ("e2e-backend", "server-0", "StatefulSet", "server"),
    "dns": ("e2e-dns", "coredns-5d78c9869d-q8w7e", "Deployment", "coredns"),
}


# -- Retina's dashboards ---------------------------------------------------------------------------------

_SEL = "{cluster=\"$cluster\", instance=~\"$Nodes\""
_FLOWS = "hubble_flows_processed_total"
_FLAGS = "hubble_tcp_flags_total{cluster=~\"$cluster\", instance=~\"$Nodes\""
# Workload and namespace dashboards: {side} is source or destination, {sel} the pod selector.
POD_FLOW_TEMPLATES = [
    *(
        f"count(sum by ({{side}}) (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\", verdict=\"{v}\"}}[10m])) >= 0.01)"
        for v in ("FORWARDED", "DROPPED")
    ),
    *(
        f"round(sum (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\", verdict=\"{v}\"}}[$__rate_interval])), 0.01)"
        for v in ("FORWARDED", "DROPPED")
    ),
    f"sum(rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\"}}[$__rate_interval])) by (type, subtype)",
    f"sum(rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\"}}[$__rate_interval])) by (verdict)",
    f"topk(10, round(sum by ({{side}}) (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\"}}[$__rate_interval])), 0.01)) > 0",
    f"round(sum by ({{side}}) (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\"}}[$__rate_interval])), 0.01) > 0",
    f"topk(10, round(sum by ({{side}}) (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\", verdict=\"DROPPED\"}}"
    "[$__rate_interval])), 0.01)) > 0",
    f"round(sum by ({{side}}) (rate({_FLOWS}{_SEL}, {{side}}=~\"{{sel}}\", verdict=\"DROPPED\"}}"
    "[$__rate_interval])), 0.01)",
    *(
        q
        for flag in ("RST", "FIN")
        for q in (
            f"count(sum by ({{side}}) (rate({_FLAGS}, {{side}}=~\"{{sel}}\", flag=\"{flag}\"}}[10m])) >= 0.01)",
            f"round(sum(sum(rate({_FLAGS}, {{side}}=~\"{{sel}}\", flag=\"{flag}\"}}[$__rate_interval]))), 0.01)",
            f"topk(10, round(sum by ({{side}}) (rate({_FLAGS}, {{side}}=~\"{{sel}}\", flag=\"{flag}\"}}"
            "[$__rate_interval])), 0.01)) > 0",
            f"round(sum by ({{side}}) (rate({_FLAGS}, {{side}}=~\"{{sel}}\", flag=\"{flag}\"}}"
            "[$__rate_interval])), 0.01)",
        )
    ),
]
# Missing SYN-ACKs: SYNs a pod sent (source) minus SYN-ACKs it received (destination), per pod. Only the
# count panel parenthesises `> 0`; in the others PromQL reads `A > 0 - B` as `A > (0 - B)`, kept as is.
_SYN = f"sum(rate({_FLAGS}, source=~\"{{sel}}\", flag=\"SYN\"}}[{{w}}])) by (source)"
_SYNACK = (
    f"sum(label_replace(sum(rate({_FLAGS}, destination=~\"{{sel}}\", flag=\"SYN-ACK\"}}[{{w}}])) by (destination), "
    "\"source\", \"$1\", \"destination\", \"(.*)\")) without (destination)"
)
_RI = "$__rate_interval"
MISSING_SYNACK_TEMPLATES = [
    f"count((({_SYN} > 0) - {_SYNACK}) >= 0.01)".replace("{w}", "10m"),
    f"round(sum({_SYN} > 0 - {_SYNACK}), 0.01)".replace("{w}", _RI),
    f"round(sum({_SYN} > 0 - {_SYNACK}), 0.01) > 0".replace("{w}", _RI),
    f"topk(10, round({_SYN} > 0 - {_SYNACK}, 0.01)) > 0".replace("{w}", _RI),
    f"round({_SYN} > 0 - {_SYNACK}, 0.01)".replace("{w}", _RI),
]
TOP_NAMESPACES = [
    f"topk(10, round(sum by (namespace) (label_replace(sum by ({side}) (rate({_FLOWS}{_SEL}, {side}=~\".*/.*\"{v}}}"
    f"[$__rate_interval])), \"namespace\", \"$1\", \"{side}\", \"([-a-z0-9]+)/.+\")), 0.01)) > 0"
    for side in ("source", "destination")
    for v in ("", ", verdict=\"DROPPED\"")
]
_DQ = "hubble_dns_queries_total" + _SEL
_DR = "hubble_dns_responses_total" + _SEL
DNS_QUERIES = [
    f"sum (rate({_DQ}}}[$__rate_interval])) by (qtypes) > 0",
    f"(1 - (sum ({_DR}}}) by (qtypes) / sum ({_DQ}}}) by (qtypes))) * 100 * ((sum (rate({_DR}}}"
    "[$__rate_interval])) by (qtypes)) > bool 0) > 0",
    f"sum(rate({_DR}, rcode=\"No Error\"}}[$__rate_interval])) by (ips_returned) > 0",
    f"label_replace(label_replace(sum by (rcode, qtypes) (rate({_DR}, rcode!=\"NoError\"}}[$__rate_interval])) > 0, "
    "\"rcode\", \"non-existent domain\", \"rcode\", \"nxdomain\"), "
    "\"rcode\", \"server failure\", \"rcode\", \"servfail\")",
    f"round(topk(10, sum (60*rate({_DQ}}}[$__rate_interval])) by (query, qtypes)), 1)",
    f"round(topk(10, sum (60*rate({_DR}}}[$__rate_interval])) by (query, qtypes)), 1)",
    f"label_replace(label_replace(sum by (query, qtypes, response, rcode) (60*rate({_DR}, ips_returned!=\"0\"}}"
    "[$__rate_interval])), \"rcode\", \"non-existent domain\", \"rcode\", \"nxdomain\"), \"rcode\", \"success\", "
    "\"rcode\", \"noerror\")",
    f"sum(rate({_DR}, rcode!=\"No Error\", destination=~\".*/.*\"}}[1m])) by (destination)",
]
VARIABLES = [  # the dashboards' variable queries (label_values(...) as the PromQL behind it)
    "group by (cluster) (up)",
    "group by (instance) (up{cluster=\"$cluster\"})",
    "group by (cluster) (hubble_flows_processed_total)",
    "group by (instance) (hubble_flows_processed_total{cluster=\"$cluster\"})",
    "label_replace(hubble_flows_processed_total{cluster=\"$cluster\", instance=~\"$Nodes\"}, \"ns\", \"$1\", "
    "\"destination\", \"(.*)\") or label_replace(hubble_flows_processed_total{cluster=\"$cluster\", "
    "instance=~\"$Nodes\"}, \"ns\", \"$1\", \"source\", \"(.*)\")",
]


def fill(template: str, side: str, sel: str) -> str:
    return template.replace("{side}", side).replace("{sel}", sel)


def dashboard_queries() -> dict[str, list[str]]:
    """Panel queries by dashboard, with Grafana's variables still in them."""
    pods = [fill(t, side, "^$namespace/$workload") for t in POD_FLOW_TEMPLATES for side in ("source", "destination")]
    missing = [fill(t, "", "^$namespace/$workload") for t in MISSING_SYNACK_TEMPLATES]
    return {
        "hubble-dns": DNS_QUERIES,
        "hubble-pod-flows-workload": pods + missing,
        "hubble-pod-flows-namespace": TOP_NAMESPACES
        + [q.replace("^$namespace/$workload", "^$namespace/.*") for q in pods + missing],
    }


def substitute(query: str, namespace: str, workload: str) -> str:
    values = {"cluster": CLUSTER, "Nodes": ".*", "namespace": namespace, "workload": workload,
              "__rate_interval": "1m"}
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), query)


# -- the scenario -----------------------------------------------------------------------------------------


@dataclass
class Scenario:
    agent: Agent
    pods: dict[str, Pod]
    hubble: str  # host:port of the hubble endpoint
    components: dict[str, Any]
    dns_log: DnsLog = field(default_factory=DnsLog)
    unanswered: int = 0  # DNS queries to an address with no DNS server

    def scrape(self) -> dict[str, dict[Labels, float]]:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.hubble}/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode())

    def flush(self) -> None:
        for name in ("packetparser", "dropreason", "dns"):
            self.components[name].flush()


def k8s_name(pod: Pod) -> str:
    namespace, name, _, _ = PODS[pod.name]
    return f"{namespace}/{name}"


def endpoints_yaml(pods: dict[str, Pod]) -> str:
    return yaml.safe_dump({
        "nodes": [{"name": NODE, "ips": []}],
        "endpoints": [
            {"name": name, "namespace": ns, "ips": [pods[key].ipv4], "node": NODE,
             "workload": {"kind": kind, "name": workload}}
            for key, (ns, name, kind, workload) in PODS.items()
        ],
    })


def agent_config(endpoints: Path, hubble_port: int, token: str) -> dict[str, Any]:
    receivers = ["packetparser", "dropreason", "dns"]
    return {
        "receivers": {
            "packetparser": {"aggregation": "high", "interfaces": [f"ro{token}*"], "host_interface": "none",
                             "report_interval": 300, "batch_interval": 0.2},
            "dropreason": {"interval": 300},
            "dns": {"interval": 300, "query_timeout": 0.5},
        },
        "processors": {
            "k8sattributes": {"source": "file", "file_path": str(endpoints), "node_name": NODE, "grace_period": 600},
            "hubblemetrics": {"endpoint": f"127.0.0.1:{hubble_port}",
                              "metrics": [*DEFAULT_METRICS, "icmp:sourceContext=pod", "port-distribution"]},
        },
        "exporters": {"nop": {}},
        "service": {
            "cluster_name": CLUSTER,
            "telemetry": {"node_name": NODE, "health": {"endpoint": ""}, "expiry_interval": 3600},
            "pipelines": {"logs": {"receivers": receivers, "processors": ["k8sattributes", "hubblemetrics"],
                                   "exporters": ["nop"]}},
        },
    }


def nowhere(dns: Pod) -> str:
    """An address in the sandbox's range that no pod has (the client's output chain drops what goes there)."""
    return dns_answer_of(dns)


def one_round(s: Scenario) -> None:
    """Every kind of event the dashboards show, ROUND_EVENTS times or more."""
    client, server, dns = s.pods["client"], s.pods["server"], s.pods["dns"]
    for _ in range(3):
        tcp_exchange(client, server, TCP_PORT, send=2000, reply=3000)
    for port in [CLOSED_PORT] * ROUND_EVENTS + [SYN_DROP_PORT] * ROUND_EVENTS:
        with client.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock, contextlib.suppress(OSError):
            sock.settimeout(0.2)  # refused at once (RST) or unanswered (SYN dropped): one SYN each
            sock.connect((server.ipv4, port))
    udp_send(client, server.ipv4, DROP_PORT, [b"d" * 64] * ROUND_EVENTS)
    # Dropped on the way out of the client (its own output chain): an outgoing drop of the client.
    with client.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for _ in range(ROUND_EVENTS):
            with contextlib.suppress(OSError):  # EPERM: the output hook dropped it
                sock.sendto(b"o" * 64, (nowhere(s.pods["dns"]), OUT_DROP_PORT))
    first = 1000 + sum(s.dns_log.sent.values())
    dns_ask(client, dns.ipv4, OK_NAME, ROUND_EVENTS, s.dns_log, first_id=first)
    dns_ask(client, dns.ipv4, MISSING_NAME, ROUND_EVENTS, s.dns_log, first_id=first + 100)
    # Queries to the server, where no DNS server listens: asked, never answered.
    udp_send(client, server.ipv4, 53, [dns_query(OK_NAME, 3000 + i) for i in range(3)])
    s.unanswered += 3
    client.run(["ping", "-c", "3", "-i", "0.05", "-W", "2", server.ipv4], check=False)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("hubble")
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(Sandbox())
        pods = {name: sandbox.add_pod(name, ipv6=False) for name in PODS}
        client, server, dns = pods["client"], pods["server"], pods["dns"]
        endpoints = tmp / "endpoints.yaml"
        endpoints.write_text(endpoints_yaml(pods))
        nft(server, "table ip hubble_drop {\n counter dropped { }\n chain input { type filter hook input priority 0;\n"
                    f'  udp dport {DROP_PORT} counter name "dropped" drop\n'
                    f'  tcp dport {SYN_DROP_PORT} counter name "dropped" drop\n }}\n}}\n')
        nft(client, "table ip hubble_out {\n chain output { type filter hook output priority 0;\n"
                    f"  ip daddr {nowhere(dns)} udp dport {OUT_DROP_PORT} drop\n }}\n}}\n")
        start_dnsmasq(dns, dns_answer_of(dns))
        for src, dst in ((client, server), (client, dns), (server, client), (dns, client)):
            assert wait_for(partial(pings, src, dst.ipv4)), f"{src.name} cannot reach {dst.name}"
        nft(client, count_table([server.ipv4, dns.ipv4]))
        hubble_port = free_port()
        agent = Agent(parse_config(agent_config(endpoints, hubble_port, sandbox.token), env={}))
        stack.callback(agent.shutdown)
        agent.start()
        assert wait_for(lambda: agent.readiness()[0], timeout=60), agent.readiness()[1]
        states = {st.id: st for st in agent.states()}
        failed = {k: st.detail for k, st in states.items() if st.status.value != "ok"}
        assert not failed, failed
        components = {k: st.component for k, st in states.items()}
        pp = components["packetparser"]
        veths = {p.host_veth for p in pods.values()}
        assert wait_for(lambda: veths <= set(pp.attached_interfaces().values()), timeout=20)
        yield Scenario(agent, pods, f"127.0.0.1:{hubble_port}", components)


def settle(s: Scenario, check: Callable[[], bool]) -> bool:
    def done() -> bool:
        s.flush()
        return check()

    return wait_for(done, timeout=30, interval=0.5)


def _sum(series: dict[Labels, float], **match: str) -> float:
    return sum(v for labels, v in series.items() if all(dict(labels).get(k) == w for k, w in match.items()))


# -- the tests ------------------------------------------------------------------------------------------


def test_counts_are_exact_against_the_pods_own_counters(scenario: Scenario) -> None:
    """Retina's default options on real traffic: what left the client (source) and what reached it
    (destination) equal its own nft counters, packet for packet and per TCP flag; drops equal nft's."""
    s = scenario
    one_round(s)
    client = k8s_name(s.pods["client"])
    server = k8s_name(s.pods["server"])
    got: dict[str, Any] = {}

    def exact() -> bool:
        counters = nft_counters(s.pods["client"])
        dropped = nft_counters(s.pods["server"])["dropped"][0]
        m = s.scrape()
        flows = m.get("hubble_flows_processed_total", {})
        flags = m.get("hubble_tcp_flags_total", {})
        got.clear()
        got.update({
            "out": (_sum(flows, source=client, type="Trace"), counters["out_all"][0]),
            "in": (_sum(flows, destination=client, type="Trace"), counters["in_all"][0]),
            "SYN out": (_sum(flags, source=client, flag="SYN"), counters["out_SYN"][0]),
            "SYN-ACK in": (_sum(flags, destination=client, flag="SYN-ACK"), counters["in_SYNACK"][0]),
            "FIN out": (_sum(flags, source=client, flag="FIN"), counters["out_FIN"][0]),
            "RST in": (_sum(flags, destination=client, flag="RST"), counters["in_RST"][0]),
            "drops": (_sum(m.get("hubble_drop_total", {}), destination=server, reason="NETFILTER_DROP"), dropped),
            "queries": (_sum(m.get("hubble_dns_queries_total", {}), source=client),
                        sum(s.dns_log.sent.values()) + s.unanswered),
            "responses": (_sum(m.get("hubble_dns_responses_total", {}), destination=client),
                          sum(s.dns_log.answered.values())),
        })
        return all(a == b for a, b in got.values()) and got["drops"][1] >= 2 * ROUND_EVENTS

    assert settle(s, exact), {k: v for k, v in got.items() if v[0] != v[1]} or got
    m = s.scrape()
    nx = [dict(k) for k in m["hubble_dns_responses_total"] if dict(k)["rcode"] == "Non-Existent Domain"]
    assert nx and all(r["query"] == MISSING_NAME + "." and r["ips_returned"] == "0" for r in nx)
    ok = [dict(k) for k in m["hubble_dns_responses_total"] if dict(k)["rcode"] == "No Error"]
    assert ok and all(r["query"] == OK_NAME + "." and r["ips_returned"] == "1" for r in ok)
    assert all(dict(k)["cluster"] == CLUSTER for k in m["hubble_flows_processed_total"])
    icmp = {dict(k)["type"] for k in m["hubble_icmp_total"]}
    assert {"EchoRequest", "EchoReply", "DestinationUnreachable(Port)"} <= icmp, icmp
    assert _sum(m["hubble_port_distribution_total"], protocol="TCP", port=str(TCP_PORT)) > 0


def test_retina_hubble_dashboards_show_data(
    scenario: Scenario, prometheus_server: Callable[..., PrometheusServer]
) -> None:
    """Debian's Prometheus scrapes the hubble endpoint (the cluster as a target label too, as a managed
    Prometheus adds it, so the dashboards' `up` variables resolve); every panel query of Retina's three
    Hubble dashboards returns data for one of the scenario's pods."""
    s = scenario
    prom = prometheus_server([s.hubble], labels={"cluster": CLUSTER}, honor_labels=True)
    assert prom.wait_for_target_up(timeout=30), prom.targets_health()
    # Two rounds after the first scrape, so every rate has an increase between two samples.
    for _ in range(2):
        time.sleep(2.5)
        one_round(s)
        s.flush()
    time.sleep(3)
    choices = [PODS[name] for name in ("client", "server", "dns")]
    empty: list[str] = []
    for dashboard, queries in dashboard_queries().items():
        for query in queries:
            if not any(prom.query(substitute(query, ns, pod)) for ns, pod, _, _ in choices):
                empty.append(f"{dashboard}: {query}")
    for query in VARIABLES:
        if not prom.query(substitute(query, "", "")):
            empty.append(f"variable: {query}")
    assert not empty, "\n".join(empty)
    # And each drop is on the right side: the client's output chain drops are its outgoing drops, the
    # server's input chain drops its incoming ones, and neither has the other kind.
    drops = POD_FLOW_TEMPLATES[1]  # count(... verdict="DROPPED" ...[10m]) >= 0.01

    def has(side: str, pod: str) -> bool:
        return bool(prom.query(substitute(fill(drops, side, "^$namespace/$workload"), *PODS[pod][:2])))

    assert has("source", "client") and has("destination", "server")
    assert not has("source", "server"), prom.query('hubble_drop_total{source!=""}')
    # The client's incoming drops are the server's port-unreachable answers to the queries sent to it,
    # which reach a socket already closed.
    incoming = prom.query('hubble_drop_total{destination=~"e2e-shop/.*"}')
    assert {(r["metric"]["reason"], r["metric"]["protocol"]) for r in incoming} == {("NO_SOCKET", "ICMPv4")}
