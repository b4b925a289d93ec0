"""Writes the chart's Grafana dashboards (JSON next to this file). Not packaged (.helmignore).

Run: .venv/bin/python charts/retina-otel/dashboards/generate.py
Queries use only the agent's metric names (checked by tests/test_dashboards.py). Pod-level panels
accept both contexts: local (`podname`, `namespace`) and remote (`source_`/`destination_` prefixes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
P = "networkobservability_"


def variables(*extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "instance", "label": "Node (agent)", "type": "query", "datasource": DS,
             "query": {"query": f"label_values({P}forward_count, instance)", "refId": "instance"},
             "definition": f"label_values({P}forward_count, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
            *extra,
        ]
    }


def label_var(name: str, label: str, metric: str, lbl: str) -> dict[str, Any]:
    q = f"label_values({P}{metric}, {lbl})"
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": q, "refId": name}, "definition": q,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0}


class Board:
    def __init__(self, uid: str, title: str, description: str, templating: dict[str, Any]) -> None:
        self.uid, self.title, self.description, self.templating = uid, title, description, templating
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
              width: int = 12, description: str = "") -> None:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        panel: dict[str, Any] = {
            "type": kind, "title": title, "id": len(self.panels) + 1, "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else {},
            "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i),
                         **({"format": "heatmap"} if kind == "heatmap" else {})}
                        for i, (expr, legend) in enumerate(targets)],
        }
        if description:
            panel["description"] = description
        self.panels.append(panel)
        self.x += width

    def write(self) -> None:
        doc = {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["retina-otel", "k8s:network-observability"], "editable": True, "schemaVersion": 39,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "", "graphTooltip": 1,
            "links": [{"type": "dashboards", "tags": ["retina-otel"], "asDropdown": True,
                       "title": "retina-otel", "includeVars": False, "keepTime": True}],
            "annotations": {"list": []}, "templating": self.templating, "panels": self.panels,
        }
        (HERE / f"{self.uid.removeprefix('retina-otel-')}.json").write_text(json.dumps(doc, indent=2) + "\n")


I = 'instance=~"$instance"'
R = "[$__rate_interval]"

# -- cluster -----------------------------------------------------------------------------------------
b = Board("retina-otel-cluster", "retina-otel / Cluster", "Node-level traffic, drops and TCP/IP statistics.",
          variables())
b.row("Traffic")
b.panel("Forwarded packets by node and direction", [(f"sum by (instance, direction) (rate({P}forward_count{{{I}}}{R}))", "{{instance}} {{direction}}")], "pps")
b.panel("Forwarded bytes by node and direction", [(f"sum by (instance, direction) (rate({P}forward_bytes{{{I}}}{R}))", "{{instance}} {{direction}}")], "Bps")
b.panel("Cluster ingress/egress", [(f"sum by (direction) (rate({P}forward_bytes{{{I}}}{R}))", "{{direction}}")], "Bps", width=8)
b.panel("Dropped packets (all reasons)", [(f"sum(rate({P}drop_count{{{I}}}{R}))", "drops/s")], "pps", kind="stat", width=8)
b.panel("Conntrack connections", [(f"sum by (instance) ({P}conntrack_total_connections{{{I}}})", "{{instance}}")], width=8)
b.row("Drops")
b.panel("Drops by reason", [(f"sum by (reason, direction) (rate({P}drop_count{{{I}}}{R}))", "{{reason}} {{direction}}")], "pps")
b.panel("Dropped bytes by node", [(f"sum by (instance) (rate({P}drop_bytes{{{I}}}{R}))", "{{instance}}")], "Bps")
b.row("TCP and IP")
b.panel("TCP sockets by state", [(f"sum by (state) ({P}tcp_state{{{I}}})", "{{state}}")])
b.panel("Top remote addresses by TCP sockets", [(f"topk(10, sum by (address) ({P}tcp_connection_remote{{{I}}}))", "{{address}}")])
b.panel("TCP statistics (netstat)", [(f"sum by (statistic_name) (rate({P}tcp_connection_stats{{{I}}}{R}))", "{{statistic_name}}")], "ops")
b.panel("IP statistics", [(f"sum by (statistic_name) (rate({P}ip_connection_stats{{{I}}}{R}))", "{{statistic_name}}")], "ops")
b.panel("UDP statistics", [(f"sum by (statistic_name) (rate({P}udp_connection_stats{{{I}}}{R}))", "{{statistic_name}}")], "ops")
b.panel("Interface errors and drops", [(f"sum by (instance, interface_name, statistic_name) (rate({P}interface_stats{{{I}}}{R}))", "{{instance}} {{interface_name}} {{statistic_name}}")], "ops")
b.row("Agent")
b.panel("Lost events", [(f"sum by (type, reason) (rate(controlplane_{P}lost_events_counter{{{I}}}{R}))", "{{type}} {{reason}}")], "ops")
b.panel("Parsed packets", [(f"sum by (instance) (rate(controlplane_{P}parsed_packets_counter{{{I}}}{R}))", "{{instance}}")], "pps")
b.write()

# -- namespace ---------------------------------------------------------------------------------------
NS = 'namespace=~"$namespace"'
SNS = 'source_namespace=~"$namespace"'
DNS_ = 'destination_namespace=~"$namespace"'
b = Board("retina-otel-namespace", "retina-otel / Namespace",
          "Pod-level (adv_*) traffic per namespace. Local context uses `namespace`; remote context "
          "`source_namespace`/`destination_namespace`.",
          variables(label_var("namespace", "Namespace", "adv_forward_bytes", "namespace")))
b.row("Traffic (local context)")
b.panel("Bytes by namespace and direction", [(f"sum by (namespace, direction) (rate({P}adv_forward_bytes{{{NS},{I}}}{R}))", "{{namespace}} {{direction}}")], "Bps")
b.panel("Packets by namespace and direction", [(f"sum by (namespace, direction) (rate({P}adv_forward_count{{{NS},{I}}}{R}))", "{{namespace}} {{direction}}")], "pps")
b.panel("Top pods by bytes", [(f"topk(10, sum by (namespace, podname) (rate({P}adv_forward_bytes{{{NS},{I}}}{R})))", "{{namespace}}/{{podname}}")], "Bps")
b.panel("Drops by namespace and reason", [(f"sum by (namespace, reason) (rate({P}adv_drop_count{{{NS},{I}}}{R}))", "{{namespace}} {{reason}}")], "pps")
b.panel("Retransmissions by namespace", [(f"sum by (namespace) (rate({P}adv_tcpretrans_count{{{NS},{I}}}{R}))", "{{namespace}}")], "ops")
b.panel("TCP flags by namespace", [(f"sum by (namespace, flag) (rate({P}adv_tcpflags_count{{{NS},{I}}}{R}))", "{{namespace}} {{flag}}")], "pps")
b.row("Namespace to namespace (remote context)")
b.panel("Bytes from namespace to namespace", [(f"sum by (source_namespace, destination_namespace) (rate({P}adv_forward_bytes{{{SNS},{I}}}{R}))", "{{source_namespace}} -> {{destination_namespace}}")], "Bps")
b.panel("Drops into namespace", [(f"sum by (source_namespace, destination_namespace, reason) (rate({P}adv_drop_count{{{DNS_},{I}}}{R}))", "{{source_namespace}} -> {{destination_namespace}} {{reason}}")], "pps")
b.write()

# -- pod -----------------------------------------------------------------------------------------------
POD = 'namespace=~"$namespace", podname=~"$pod"'
SP = 'source_podname=~"$pod"'
DP = 'destination_podname=~"$pod"'
b = Board("retina-otel-pod", "retina-otel / Pod", "Pod-level (adv_*) traffic, drops, TCP flags and retransmissions.",
          variables(label_var("namespace", "Namespace", "adv_forward_bytes", "namespace"),
                    label_var("pod", "Pod", "adv_forward_bytes", "podname")))
b.row("Traffic")
b.panel("Bytes by pod and direction", [(f"sum by (podname, direction) (rate({P}adv_forward_bytes{{{POD}}}{R}))", "{{podname}} {{direction}}")], "Bps")
b.panel("Packets by pod and direction", [(f"sum by (podname, direction) (rate({P}adv_forward_count{{{POD}}}{R}))", "{{podname}} {{direction}}")], "pps")
b.panel("Outgoing packets (remote context)", [(f"sum by (source_podname, destination_podname) (rate({P}adv_forward_count{{{SP}}}{R}))", "{{source_podname}} -> {{destination_podname}}")], "pps")
b.panel("Incoming packets (remote context)", [(f"sum by (source_podname, destination_podname) (rate({P}adv_forward_count{{{DP}}}{R}))", "{{source_podname}} -> {{destination_podname}}")], "pps")
b.row("Health")
b.panel("Drops by pod and reason", [(f"sum by (podname, reason, direction) (rate({P}adv_drop_count{{{POD}}}{R}))", "{{podname}} {{reason}} {{direction}}")], "pps")
b.panel("Dropped bytes by pod", [(f"sum by (podname) (rate({P}adv_drop_bytes{{{POD}}}{R}))", "{{podname}}")], "Bps")
b.panel("TCP flags", [(f"sum by (podname, flag) (rate({P}adv_tcpflags_count{{{POD}}}{R}))", "{{podname}} {{flag}}")], "pps")
b.panel("TCP retransmissions", [(f"sum by (podname, direction) (rate({P}adv_tcpretrans_count{{{POD}}}{R}))", "{{podname}} {{direction}}")], "ops")
b.write()

# -- DNS -------------------------------------------------------------------------------------------------
b = Board("retina-otel-dns", "retina-otel / DNS", "DNS requests, responses, return codes and latency.",
          variables(label_var("namespace", "Namespace", "adv_dns_request_count", "namespace")))
b.row("Node level")
b.panel("DNS requests and responses", [(f"sum(rate({P}dns_request_count{{{I}}}{R}))", "requests"),
                                        (f"sum(rate({P}dns_response_count{{{I}}}{R}))", "responses")], "reqps")
b.panel("Unanswered share", [(f"1 - sum(rate({P}dns_response_count{{{I}}}{R})) / clamp_min(sum(rate({P}dns_request_count{{{I}}}{R})), 1e-9)", "unanswered")], "percentunit")
b.row("Pod level")
b.panel("Requests by query type", [(f"sum by (query_type) (rate({P}adv_dns_request_count{{{NS},{I}}}{R}))", "{{query_type}}")], "reqps")
b.panel("Responses by return code", [(f"sum by (return_code) (rate({P}adv_dns_response_count{{{NS},{I}}}{R}))", "{{return_code}}")], "reqps")
b.panel("Top queries", [(f"topk(10, sum by (query) (rate({P}adv_dns_request_count{{{NS},{I}}}{R})))", "{{query}}")], "reqps", kind="bargauge")
b.panel("Top failing queries", [(f'topk(10, sum by (query, return_code) (rate({P}adv_dns_response_count{{{NS},{I},return_code!~"(?i)noerror"}}{R})))', "{{query}} {{return_code}}")], "reqps", kind="bargauge")
b.panel("DNS latency p50/p99", [(f"histogram_quantile(0.5, sum by (le) (rate({P}adv_dns_latency_ms_bucket{{{I}}}{R})))", "p50"),
                                (f"histogram_quantile(0.99, sum by (le) (rate({P}adv_dns_latency_ms_bucket{{{I}}}{R})))", "p99")], "ms",
        width=24, description="Query-to-response latency matched on id and endpoints (retina-otel only).")
b.write()

# -- drops ---------------------------------------------------------------------------------------------
b = Board("retina-otel-drops", "retina-otel / Drops", "Packet drops by the kernel's own drop reasons.",
          variables(label_var("reason", "Reason", "drop_count", "reason")))
RS = 'reason=~"$reason"'
b.row("Node level")
b.panel("Drops by reason", [(f"sum by (reason) (rate({P}drop_count{{{RS},{I}}}{R}))", "{{reason}}")], "pps")
b.panel("Dropped bytes by reason", [(f"sum by (reason) (rate({P}drop_bytes{{{RS},{I}}}{R}))", "{{reason}}")], "Bps")
b.panel("Drops by node and direction", [(f"sum by (instance, direction) (rate({P}drop_count{{{RS},{I}}}{R}))", "{{instance}} {{direction}}")], "pps")
b.panel("Top reasons (1h)", [(f"topk(10, sum by (reason) (increase({P}drop_count{{{RS},{I}}}[1h])))", "{{reason}}")], kind="bargauge")
b.row("Pod level")
b.panel("Drops by pod (local context)", [(f"topk(10, sum by (namespace, podname, reason) (rate({P}adv_drop_count{{{RS},{I}}}{R})))", "{{namespace}}/{{podname}} {{reason}}")], "pps")
b.panel("Drops between pods (remote context)", [(f"topk(10, sum by (source_podname, destination_podname, reason) (rate({P}adv_drop_count{{{RS},{I}}}{R})))", "{{source_podname}} -> {{destination_podname}} {{reason}}")], "pps")
b.write()

# -- retransmissions ---------------------------------------------------------------------------------
b = Board("retina-otel-retransmissions", "retina-otel / TCP retransmissions", "Retransmitted segments by pod and the kernel's TCP loss statistics.",
          variables(label_var("namespace", "Namespace", "adv_tcpretrans_count", "namespace")))
b.panel("Retransmissions by pod", [(f"topk(10, sum by (namespace, podname, direction) (rate({P}adv_tcpretrans_count{{{NS},{I}}}{R})))", "{{namespace}}/{{podname}} {{direction}}")], "ops")
b.panel("Retransmissions between pods (remote context)", [(f"topk(10, sum by (source_podname, destination_podname) (rate({P}adv_tcpretrans_count{{{I}}}{R})))", "{{source_podname}} -> {{destination_podname}}")], "ops")
b.panel("Retransmitted share of SYNs", [(f'sum(rate({P}adv_tcpretrans_count{{{I}}}{R})) / clamp_min(sum(rate({P}adv_tcpflags_count{{flag="SYN",{I}}}{R})), 1e-9)', "retrans per SYN")], "percentunit")
b.panel("Kernel loss statistics", [(f'sum by (statistic_name) (rate({P}tcp_connection_stats{{statistic_name=~"TCPTimeouts|TCPLossProbes|TCPLostRetransmit",{I}}}{R}))', "{{statistic_name}}")], "ops")
b.panel("RST and FIN flags by pod", [(f'topk(10, sum by (podname, flag) (rate({P}adv_tcpflags_count{{flag=~"RST|FIN",{NS},{I}}}{R})))', "{{podname}} {{flag}}")], "pps", width=24)
b.write()

# -- API server --------------------------------------------------------------------------------------
b = Board("retina-otel-apiserver", "retina-otel / API server latency", "Latency from each node to the Kubernetes API server.",
          variables())
b.panel("Request latency p50/p90/p99", [(f"histogram_quantile({q}, sum by (le) (rate({P}adv_node_apiserver_latency_bucket{{{I}}}{R})))", f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)], "ms")
b.panel("Request latency by node (p90)", [(f"histogram_quantile(0.9, sum by (le, instance) (rate({P}adv_node_apiserver_latency_bucket{{{I}}}{R})))", "{{instance}}")], "ms")
b.panel("TCP handshake latency p50/p99", [(f"histogram_quantile({q}, sum by (le) (rate({P}adv_node_apiserver_tcp_handshake_latency_bucket{{{I}}}{R})))", f"p{int(q * 100)}") for q in (0.5, 0.99)], "ms")
b.panel("Requests without response", [(f"sum by (instance) (rate({P}adv_node_apiserver_no_response{{{I}}}{R}))", "{{instance}}")], "ops")
b.panel("Latency distribution", [(f"sum by (le) (rate({P}adv_node_apiserver_latency_bucket{{{I}}}{R}))", "{{le}}")], "ms", kind="heatmap", width=24)
b.write()
