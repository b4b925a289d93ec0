"""hubblemetrics: Hubble's option syntax, context semantics and label values, on hand-made flow batches,
served on the processor's own endpoint (the kernel path is in test_hubblemetrics_e2e)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from retina_otel.component import CreateSettings
from retina_otel.config import ConfigError, parse_config
from retina_otel.flows import STRINGS, Direction, EndpointTable, Event, FlowBatch, ObservationPoint, TcpFlag, Verdict
from retina_otel.flows import ip_to_bytes as ip
from retina_otel.flowschema import (
    ENDPOINT_KIND,
    ENDPOINT_LOCAL,
    K8S_NAMESPACE,
    K8S_POD_LABEL_PREFIX,
    K8S_POD_NAME,
    K8S_WORKLOAD_KIND,
    K8S_WORKLOAD_NAME,
)
from retina_otel.processors.hubblemetrics import HubbleMetricsConfig, HubbleMetricsProcessor, SpecError, parse_metric
from retina_otel.processors.hubblemetrics.endpoints import short_pod_name
from retina_otel.processors.hubblemetrics.icmp import icmp_type_name
from retina_otel.testing import CollectingConsumer, TestHost
from tests.test_e2e_metrics import Labels, lab, parse_metrics

CLIENT, SERVER, DNS, WORLD = "198.18.1.2", "198.18.1.3", "198.18.1.4", "198.18.9.9"
ENTRIES = (
    {K8S_NAMESPACE: "shop", K8S_POD_NAME: "client-5d8f-x2k9z", K8S_WORKLOAD_KIND: "Deployment",
     K8S_WORKLOAD_NAME: "client", ENDPOINT_KIND: "pod", ENDPOINT_LOCAL: True, K8S_POD_LABEL_PREFIX + "app": "web"},
    {K8S_NAMESPACE: "backend", K8S_POD_NAME: "server-0", K8S_WORKLOAD_KIND: "StatefulSet",
     K8S_WORKLOAD_NAME: "server", ENDPOINT_KIND: "pod", ENDPOINT_LOCAL: True},
    {K8S_NAMESPACE: "kube-system", K8S_POD_NAME: "coredns-abc12-def34", K8S_WORKLOAD_KIND: "Deployment",
     K8S_WORKLOAD_NAME: "coredns", ENDPOINT_KIND: "pod", ENDPOINT_LOCAL: False},
)
SLOT = {CLIENT: 0, SERVER: 1, DNS: 2, WORLD: -1}
C, S, D = "shop/client-5d8f-x2k9z", "backend/server-0", "kube-system/coredns-abc12-def34"


def _row(batch: FlowBatch, i: int, src: str, dst: str, **values: Any) -> None:
    r = batch.records
    r["src_ip"][i] = ip(src)
    r["dst_ip"][i] = ip(dst)
    r["src_endpoint"][i] = SLOT[src]
    r["dst_endpoint"][i] = SLOT[dst]
    r["ip_version"][i] = 4
    for key, value in values.items():
        if key.startswith("flag_"):
            r["tcp_flags"][i, TcpFlag[key[5:]]] = value
        else:
            r[key][i] = value


def scenario() -> FlowBatch:
    """Client -> server TCP seen leaving the client and entering the server, a drop at the server, DNS
    with a query and two responses, ICMP to an address with no metadata."""
    batch = FlowBatch.empty(8, receiver="test")
    flow = {"event": Event.FLOW, "verdict": Verdict.FORWARDED, "proto": 6, "src_port": 40000, "dst_port": 80}
    _row(batch, 0, CLIENT, SERVER, **flow, direction=Direction.EGRESS,
         observation_point=ObservationPoint.FROM_ENDPOINT, packets=5, flag_SYN=1, flag_ACK=4, flag_FIN=1)
    _row(batch, 1, CLIENT, SERVER, **flow, direction=Direction.INGRESS,
         observation_point=ObservationPoint.TO_ENDPOINT, packets=5, flag_SYN=1, flag_ACK=4, flag_FIN=1)
    _row(batch, 2, SERVER, CLIENT, **{**flow, "src_port": 80, "dst_port": 40000}, is_reply=1,
         direction=Direction.EGRESS, observation_point=ObservationPoint.FROM_ENDPOINT, packets=4, flag_SYNACK=1,
         flag_ACK=4, flag_RST=1)
    _row(batch, 3, CLIENT, SERVER, event=Event.DROP, verdict=Verdict.DROPPED, proto=17, direction=Direction.INGRESS,
         observation_point=ObservationPoint.STACK, packets=3, drop_reason=STRINGS.intern("NETFILTER_DROP"),
         dst_port=7300)
    dns = {"event": Event.DNS, "verdict": Verdict.FORWARDED, "proto": 17, "packets": 1, "dns_qtype": 1}
    _row(batch, 4, CLIENT, DNS, **dns, direction=Direction.EGRESS, dst_port=53)
    _row(batch, 5, DNS, CLIENT, **dns, direction=Direction.INGRESS, is_reply=1, dns_is_response=1,
         dns_answer_count=3, src_port=53)
    _row(batch, 6, DNS, CLIENT, **dns, direction=Direction.INGRESS, is_reply=1, dns_is_response=1, dns_rcode=3,
         src_port=53)
    _row(batch, 7, CLIENT, WORLD, event=Event.FLOW, verdict=Verdict.FORWARDED, proto=1, direction=Direction.EGRESS,
         observation_point=ObservationPoint.FROM_ENDPOINT, packets=2, src_port=8, dst_port=0)
    batch.dns = [None, None, None, None,
                 {"query": "ok.e2e.test", "query_type": "A", "answers": []},
                 {"query": "ok.e2e.test", "query_type": "A", "answers": ["198.18.1.200", "x.e2e.test", "2001:db8::1"]},
                 {"query": "missing.e2e.test", "query_type": "A", "answers": []},
                 None]
    batch.endpoints = EndpointTable(ENTRIES)
    return batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run() -> Iterator[Any]:
    started: list[HubbleMetricsProcessor] = []

    def make(metrics: list[str] | None = None, cluster: str = "", **cfg: Any) -> dict[str, dict[Labels, float]]:
        config = HubbleMetricsConfig(endpoint=f"127.0.0.1:{free_port()}", **cfg,
                                     **({"metrics": metrics} if metrics is not None else {}))
        downstream = CollectingConsumer()
        proc = HubbleMetricsProcessor(CreateSettings("hubblemetrics", "processor"), config, downstream)
        started.append(proc)
        proc.start(TestHost(cluster_name=cluster))
        batch = scenario()
        proc.consume_flows(batch)
        assert downstream.batches == [batch], "the batch is passed on unchanged"
        host, port = proc.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            return parse_metrics(response.read().decode())

    try:
        yield make
    finally:
        for proc in started:
            proc.shutdown()


def test_retina_default_options_split_egress_and_ingress(run: Any) -> None:
    """Retina's chart default: source on egress observations only, destination on ingress only."""
    m = run()
    assert m["hubble_flows_processed_total"] == {
        lab(protocol="TCP", type="Trace", subtype="to-stack", verdict="FORWARDED", source=C, destination=""): 5,
        lab(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED", source="", destination=S): 5,
        lab(protocol="TCP", type="Trace", subtype="to-stack", verdict="FORWARDED", source=S, destination=""): 4,
        lab(protocol="UDP", type="Drop", subtype="", verdict="DROPPED", source="", destination=S): 3,
        lab(protocol="DNS", type="L7", subtype="DNS", verdict="16", source=C, destination=""): 1,
        lab(protocol="DNS", type="L7", subtype="DNS", verdict="16", source="", destination=C): 2,
        lab(protocol="ICMPv4", type="Trace", subtype="to-stack", verdict="FORWARDED", source=C, destination=""): 2,
    }
    assert m["hubble_tcp_flags_total"] == {
        lab(flag="SYN", family="IPv4", source=C, destination=""): 1,
        lab(flag="FIN", family="IPv4", source=C, destination=""): 1,
        lab(flag="SYN", family="IPv4", source="", destination=S): 1,
        lab(flag="FIN", family="IPv4", source="", destination=S): 1,
        lab(flag="SYN-ACK", family="IPv4", source=S, destination=""): 1,
        lab(flag="RST", family="IPv4", source=S, destination=""): 1,
    }
    assert m["hubble_drop_total"] == {lab(source="", destination=S, reason="NETFILTER_DROP", protocol="UDP"): 3}
    assert m["hubble_dns_queries_total"] == {
        lab(source=C, destination="", rcode="", qtypes="A", ips_returned="0", query="ok.e2e.test."): 1,
    }
    assert m["hubble_dns_responses_total"] == {
        lab(source="", destination=C, rcode="No Error", qtypes="A", ips_returned="2", query="ok.e2e.test."): 1,
        lab(source="", destination=C, rcode="Non-Existent Domain", qtypes="A", ips_returned="0",
            query="missing.e2e.test."): 1,
    }
    assert "hubble_icmp_total" not in m and "hubble_port_distribution_total" not in m


def test_fallbacks_labels_context_and_other_handlers(run: Any) -> None:
    m = run([
        "flow:sourceContext=workload-name|ip;destinationContext=namespace|reserved-identity;"
        "labelsContext=source_namespace,source_app,traffic_direction",
        "icmp:sourceContext=pod-short;destinationContext=dns|ip",
        "port-distribution:destinationContext=pod-name",
        "dns:ignoreAAAA;sourceContext=identity;destinationContext=app|pod",
        "drop:labelsContext=destination_workload,source_ip",
        "tcp",
    ])
    flows = m["hubble_flows_processed_total"]
    icmp_flow = lab(protocol="ICMPv4", type="Trace", subtype="to-stack", verdict="FORWARDED", source="client",
                    destination="reserved:world", source_namespace="shop", source_app="web", traffic_direction="egress")
    assert flows[icmp_flow] == 2
    tcp_in = lab(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED", source="client",
                 destination="backend", source_namespace="shop", source_app="web", traffic_direction="ingress")
    assert flows[tcp_in] == 5
    assert m["hubble_icmp_total"] == {
        lab(family="IPv4", type="EchoRequest", source="shop/client", destination=WORLD): 2}
    # Replies are not counted (the server's port-80 answers), both observations of the request are; ICMP is port 0.
    assert m["hubble_port_distribution_total"] == {
        lab(protocol="TCP", port="80", destination="server-0"): 10, lab(protocol="ICMPv4", port="0", destination=""): 2}
    identity = "k8s:app=web,k8s:io.kubernetes.pod.namespace=shop"
    assert m["hubble_dns_queries_total"] == {
        lab(source=identity, destination=D, rcode="", qtypes="A", ips_returned="0"): 1}
    assert m["hubble_drop_total"] == {
        lab(destination_workload="server", source_ip=CLIENT, reason="NETFILTER_DROP", protocol="UDP"): 3}
    assert m["hubble_tcp_flags_total"][lab(flag="SYN", family="IPv4")] == 2
    assert m["hubble_tcp_flags_total"][lab(flag="SYN-ACK", family="IPv4")] == 1


def test_cluster_label_on_the_hubble_endpoint(run: Any) -> None:
    m = run(["drop"], cluster="prod")
    assert m["hubble_drop_total"] == {lab(reason="NETFILTER_DROP", protocol="UDP", cluster="prod"): 3}


def test_option_syntax_is_hubbles() -> None:
    spec = parse_metric("dns:query;ignoreAAAA;SourceContext=pod|IP;labelsContext=traffic_direction,source_pod")
    assert spec.handler == "dns" and spec.flags == {"query", "ignoreaaaa"}
    assert spec.context.source == ("pod", "ip")
    assert spec.context.labels == ("source_pod", "traffic_direction")  # Hubble's order, not the user's
    assert spec.context.label_names() == ("source_pod", "traffic_direction", "source")
    for bad, message in (
        ("http", "unknown Hubble metric 'http'"),
        ("flow:sourceContext=pod|nodename", "unknown context 'nodename'"),
        ("flow:labelsContext=source_node", "invalid labelsContext value 'source_node'"),
        ("tcp:query", "unknown option 'query' for tcp"),
        ("flow:sourceContext=", "sourceContext needs a value"),
    ):
        with pytest.raises(SpecError, match=message):
            parse_metric(bad)


def test_bad_metric_is_a_config_error_naming_the_field() -> None:
    raw = {
        "receivers": {"synthetic": {}},
        "processors": {"hubblemetrics": {"metrics": ["flow", "dns:sourceContext=podname", "flow"]}},
        "exporters": {"nop": {}},
        "service": {"pipelines": {"logs": {"receivers": ["synthetic"], "processors": ["hubblemetrics"],
                                           "exporters": ["nop"]}}},
    }
    with pytest.raises(ConfigError, match=r"processors\.hubblemetrics\.metrics.*unknown context 'podname'"):
        parse_config(raw, env={})


def test_names_as_hubble_prints_them() -> None:
    assert short_pod_name("client-5d8f-x2k9z") == "client" and short_pod_name("server-0") == "server"
    assert icmp_type_name(False, 3, 3) == "DestinationUnreachable(Port)"
    assert icmp_type_name(False, 8, 0) == "EchoRequest" and icmp_type_name(False, 8, 1) == "EchoRequest(Code: 1)"
    assert icmp_type_name(True, 129, 0) == "EchoReply" and icmp_type_name(True, 200, 1) == "200(1)"


def test_connector_form_publishes_only_on_its_metrics_pipeline() -> None:
    """connectors: hubblemetrics from a logs pipeline into `metrics/hubble`, whose prometheus exporter (the
    :9965 of a deployment) serves the hubble_* families and nothing else; the agent's own endpoint
    (`metrics` pipeline) does not show them."""
    from retina_otel.receivers.synthetic import make_batch
    from retina_otel.service import Agent
    from retina_otel.testing import wait_for

    hubble_port, main_port = free_port(), free_port()
    raw = {
        "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 50, "max_batches": 4}},
        "connectors": {"hubblemetrics": {"metrics": ["flow:sourceContext=ip", "tcp"]}},
        "exporters": {
            "prometheus": {"endpoint": f"127.0.0.1:{main_port}"},
            "prometheus/hubble": {"endpoint": f"127.0.0.1:{hubble_port}"},
        },
        "service": {
            "cluster_name": "c1",
            "telemetry": {"health": {"endpoint": ""}},
            "pipelines": {
                "logs": {"receivers": ["synthetic"], "exporters": ["hubblemetrics"]},
                "metrics/hubble": {"receivers": ["hubblemetrics"], "exporters": ["prometheus/hubble"]},
                "metrics": {"receivers": ["synthetic"], "exporters": ["prometheus"]},
            },
        },
    }
    agent = Agent(parse_config(raw, env={}))
    agent.start()
    try:
        def scrape(port: int) -> dict[str, dict[Labels, float]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return parse_metrics(response.read().decode())

        want = sum(int(make_batch(50, 16, i).records["packets"].sum()) for i in range(4))

        def counted() -> bool:
            flows = scrape(hubble_port).get("hubble_flows_processed_total", {})
            return sum(flows.values()) == want

        assert wait_for(counted, timeout=15), scrape(hubble_port)
        hubble, main = scrape(hubble_port), scrape(main_port)
        # (No SYN/FIN/RST in the batches: no tcp series. The agent's own telemetry is on every exporter.)
        data = {name for name in hubble if not name.startswith("controlplane_")}
        assert data == {"hubble_flows_processed_total"}, data
        some = next(iter(hubble["hubble_flows_processed_total"]))
        assert dict(some)["cluster"] == "c1" and dict(some)["source"].startswith("198.18.0.")
        assert not any(name.startswith("hubble_") for name in main)
        assert "controlplane_networkobservability_synthetic_records" in main
    finally:
        agent.shutdown()


class _Cache:
    """k8sattributes' k8s_cache extension as hubblemetrics sees it."""

    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.cache = None

    def api_settings(self) -> None:
        return None

    def set_namespace_filter(self, include: Any = (), exclude: Any = ()) -> None:
        return None

    def add_pod_deletion_listener(self, listener: Any) -> None:
        self.listeners.append(listener)


def test_a_deleted_pods_series_go_as_in_hubble() -> None:
    """Hubble removes the series whose pod-context source or destination is a deleted pod; here after
    k8sattributes' grace period (its delay), at the next batch."""
    import time

    cache = _Cache()
    proc = HubbleMetricsProcessor(
        CreateSettings("hubblemetrics", "processor"), HubbleMetricsConfig(endpoint=""), None
    )
    proc.start(TestHost(extensions={"k8s_cache": cache}))
    try:
        proc.consume_flows(scenario())
        flows = proc.store.get("hubble_flows_processed_total")
        assert flows is not None and len(cache.listeners) == 1

        def with_pod(pod: str) -> int:
            return sum(1 for labels, _, _ in flows.snapshot().series if pod in labels)

        # server: TCP in, its replies out, the UDP drop; client: TCP out, ICMP out, DNS both ways
        assert with_pod(S) == 3 and with_pod(C) == 4
        assert cache.listeners[0](["server-0", SERVER], delay_seconds=0.2) == 0  # k8sattributes' grace period
        proc.consume_flows(FlowBatch.empty(0))
        assert with_pod(S) == 3
        time.sleep(0.25)
        proc.consume_flows(FlowBatch.empty(0))
        assert with_pod(S) == 0 and with_pod(C) == 4
        assert cache.listeners[0](["client-5d8f-x2k9z", CLIENT]) == 4 + 2 + 3  # flows, tcp flags, dns
        assert with_pod(C) == 0
    finally:
        proc.shutdown()


def test_receivers_threads_and_endpoint_table_generations() -> None:
    """Receivers hand batches from their own threads, with endpoint tables of different generations
    (k8sattributes rebuilds them): every batch is counted with its own table's names."""
    import threading

    config = HubbleMetricsConfig(endpoint="", metrics=["flow:sourceContext=pod"])
    proc = HubbleMetricsProcessor(CreateSettings("hubblemetrics", "processor"), config, None)
    proc.start(TestHost())
    rounds = 60

    def feed() -> None:
        for _ in range(rounds):
            batch = scenario()
            batch.endpoints = EndpointTable(tuple(dict(e) for e in ENTRIES))  # a new generation each time
            proc.consume_flows(batch)

    threads = [threading.Thread(target=feed) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flows = proc.store.get("hubble_flows_processed_total")
    assert flows is not None
    per_source: dict[str, float] = {}
    for labels, value, _ in flows.snapshot().series:
        source = dict(zip(flows.label_names, labels, strict=True))["source"]
        per_source[source] = per_source.get(source, 0.0) + float(value)  # type: ignore[arg-type]
    # One scenario: client sends 5 TCP + 5 (seen entering the server) + 2 ICMP + 1 DNS query + 3 dropped;
    # the server 4; the DNS pod 2 responses.
    n = 3 * rounds
    assert per_source == {C: 16 * n, S: 4 * n, D: 2 * n}
    proc.shutdown()
