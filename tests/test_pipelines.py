"""Collector semantics of the service: fan-out copies, signal checks, connectors, typed extensions,
status per pipeline instance and metrics scoped to their pipelines."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml

from retina_otel.component import ComponentStatus
from retina_otel.config import ConfigError, load_config, parse_config
from retina_otel.hubble import observer_pb2
from retina_otel.hubble.api import ObserverStub
from retina_otel.receivers.synthetic import make_batch
from retina_otel.service import Agent
from retina_otel.signals import LOGS, FanOut, connect
from retina_otel.testing import CollectingConsumer, wait_for
from tests.support.otlp_sink import OtlpSink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sinks() -> Iterator[tuple[OtlpSink, OtlpSink]]:
    a, b = OtlpSink(), OtlpSink()
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


def _endpoints(path: Path) -> Path:
    """Synthetic flows run between 198.18.0.1..17: name them all as pods of namespace shop."""
    pods = [{"name": f"pod-{i}", "namespace": "shop", "ips": [f"198.18.0.{i}"], "node": "node-a"} for i in range(1, 20)]
    path.write_text(yaml.safe_dump({"endpoints": pods}))
    return path


def _k8s(path: Path) -> dict[str, Any]:
    return {"source": "file", "file_path": str(path), "node_name": "node-a", "wait_for_sync": False}


def _otlp(sink: OtlpSink) -> dict[str, Any]:
    return {"endpoint": f"127.0.0.1:{sink.port}", "tls": {"insecure": True}, "signals": ["logs"], "flush_interval": 0.1}


# -- fan-out -------------------------------------------------------------------------------------------


class Mutator(CollectingConsumer):
    def consume_flows(self, batch: Any) -> None:
        batch.records["packets"] = 0
        super().consume_flows(batch)


def test_fanout_copies_for_mutating_consumers_and_freezes_what_readers_share() -> None:
    reader_a, reader_b, mutator_a, mutator_b = CollectingConsumer(), CollectingConsumer(), Mutator(), Mutator()
    fan = FanOut(LOGS, [(reader_a, False), (mutator_a, True), (reader_b, False), (mutator_b, True)])
    batch = make_batch(10)
    packets = batch.records["packets"].copy()
    fan.consume_flows(batch)
    assert reader_a.batches[0] is batch and reader_b.batches[0] is batch
    assert batch.read_only  # two readers share it: nobody may change it any more
    np.testing.assert_array_equal(batch.records["packets"], packets)  # the mutators changed copies
    for m in (mutator_a, mutator_b):
        assert m.batches[0] is not batch and not m.batches[0].records["packets"].any()
    with pytest.raises(ValueError):
        batch.records["packets"] = 1


def test_one_consumer_gets_the_batch_itself() -> None:
    mutator = Mutator()
    batch = make_batch(10)
    connect(LOGS, [(mutator, True)]).consume_flows(batch)  # type: ignore[attr-defined]
    assert mutator.batches[0] is batch  # the default single pipeline pays no copy
    reader = CollectingConsumer()
    assert connect(LOGS, [(reader, False)]) is reader
    frozen = make_batch(4)
    frozen.mark_read_only()
    connect(LOGS, [(mutator, True)]).consume_flows(frozen)  # type: ignore[attr-defined]
    assert mutator.batches[-1] is not frozen  # a read-only batch is copied before a mutator gets it


def test_two_logs_pipelines_never_see_each_others_enrichment(tmp_path: Path, sinks: tuple[OtlpSink, OtlpSink]) -> None:
    enriched, plain = sinks
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 50, "max_batches": 6}},
            "processors": {"k8sattributes": _k8s(_endpoints(tmp_path / "endpoints.yaml"))},
            "exporters": {"otlp/enriched": _otlp(enriched), "otlp/plain": _otlp(plain)},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs/enriched": {
                        "receivers": ["synthetic"],
                        "processors": ["k8sattributes"],
                        "exporters": ["otlp/enriched"],
                    },
                    "logs/plain": {"receivers": ["synthetic"], "exporters": ["otlp/plain"]},
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        assert wait_for(lambda: len(enriched.log_records()) >= 300 and len(plain.log_records()) >= 300, timeout=20)
    finally:
        agent.shutdown()
    assert len(enriched.log_records()) == len(plain.log_records()) == 300
    assert all(a.get("source.k8s.pod.name", "").startswith("pod-") for _, a, _ in enriched.log_records())
    assert not any(k.startswith(("source.k8s", "destination.k8s")) for _, a, _ in plain.log_records() for k in a)


# -- validation ----------------------------------------------------------------------------------------


def _problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return {p.path: p.message for p in info.value.problems}


def test_component_in_a_pipeline_of_a_signal_it_cannot_handle_is_rejected(tmp_path: Path) -> None:
    problems = _problems(
        {
            "receivers": {"synthetic": {}, "packetforward": {}},
            "processors": {"k8sattributes": _k8s(tmp_path / "e.yaml")},
            "exporters": {"prometheus": {}, "nop": {}},
            "service": {
                "pipelines": {
                    "metrics": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
                    "logs": {"receivers": ["packetforward"], "exporters": ["prometheus"]},
                }
            },
        }
    )
    assert "handles logs, not metrics" in problems["service.pipelines.metrics.processors[0]"]
    assert "handles metrics, not logs" in problems["service.pipelines.logs.exporters[0]"]
    assert "handles metrics, not logs" in problems["service.pipelines.logs.receivers[0]"]
    assert len(problems) == 3


def test_validate_exits_2_naming_the_wrong_signal_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "receivers": {"synthetic": {}},
                "processors": {"k8sattributes": _k8s(tmp_path / "e.yaml")},
                "exporters": {"prometheus": {}},
                "service": {
                    "pipelines": {
                        "metrics": {
                            "receivers": ["synthetic"],
                            "processors": ["k8sattributes"],
                            "exporters": ["prometheus"],
                        }
                    }
                },
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "retina_otel", "validate", "--config", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2, done
    assert "service.pipelines.metrics.processors[0]" in done.stderr + done.stdout


def test_connector_rules() -> None:
    base: dict[str, Any] = {
        "receivers": {"synthetic": {}},
        "connectors": {"flowmetrics": {}},
        "exporters": {"prometheus": {}, "nop": {}},
    }
    only_exporter = _problems(
        {**base, "service": {"pipelines": {"logs": {"receivers": ["synthetic"], "exporters": ["flowmetrics"]}}}}
    )
    assert "must be a receiver of some pipeline too" in only_exporter["connectors.flowmetrics"]
    wrong_pair = _problems(
        {
            **base,
            "service": {
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "exporters": ["flowmetrics"]},
                    "logs/2": {"receivers": ["flowmetrics"], "exporters": ["nop"]},
                }
            },
        }
    )
    assert "cannot connect logs (logs) to logs/2 (logs)" in wrong_pair["connectors.flowmetrics"]
    both = _problems(
        {
            **base,
            "exporters": {"flowmetrics": {}, "prometheus": {}},
            "service": {
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "exporters": ["flowmetrics"]},
                    "metrics": {"receivers": ["flowmetrics"], "exporters": ["prometheus"]},
                }
            },
        }
    )
    assert "defined under both" in both["service.pipelines.logs.exporters[0]"]


def test_embedded_default_uses_the_flowmetrics_connector_and_no_nop() -> None:
    config = load_config(None, env={})
    assert "flowmetrics" in config.connectors and "nop" not in config.exporters
    assert "flowmetrics" not in config.processors
    otlp = load_config(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    assert set(otlp.exporters) == {"prometheus", "otlp"}


def test_two_components_offering_one_extension_is_a_config_error(tmp_path: Path) -> None:
    problems = _problems(
        {
            "receivers": {"synthetic": {}},
            "processors": {"k8sattributes": _k8s(tmp_path / "e.yaml"), "k8sattributes/b": _k8s(tmp_path / "e.yaml")},
            "exporters": {"nop": {}},
            "service": {
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
                    "logs/b": {"receivers": ["synthetic"], "processors": ["k8sattributes/b"], "exporters": ["nop"]},
                }
            },
        }
    )
    assert "'k8s_cache' extension" in problems["processors.k8sattributes/b"]


# -- instances, extensions, status ---------------------------------------------------------------------


def test_one_processor_id_in_two_pipelines_shares_one_cache_and_reports_per_instance(tmp_path: Path) -> None:
    from retina_otel.extension_keys import K8S_CACHE

    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "processors": {"k8sattributes": _k8s(_endpoints(tmp_path / "e.yaml"))},
            "exporters": {"nop": {}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs/a": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
                    "logs/b": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["nop"]},
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        a = next(s.component for s in agent.states() if s.pipelines == ["logs/a"])
        b = next(s.component for s in agent.states() if s.pipelines == ["logs/b"])
        assert agent.get_extension(K8S_CACHE) is a  # the first pipeline's instance is the registered one
        assert a.cache is b.cache  # type: ignore[attr-defined]
        host = agent.host_of("k8sattributes@logs/b")
        assert host is not None
        host.report_status("k8sattributes", ComponentStatus.FAILED, "only b")
        status = {tuple(s.pipelines): (s.status, s.detail) for s in agent.states() if s.id == "k8sattributes"}
        assert status[("logs/b",)] == (ComponentStatus.FAILED, "only b")
        assert status[("logs/a",)][0] is ComponentStatus.OK
    finally:
        agent.shutdown()


# -- metrics per pipeline ------------------------------------------------------------------------------


def _scrape(agent: Agent, exporter_id: str) -> str:
    exporter = next(s.component for s in agent.states() if s.id == exporter_id)
    host, port = exporter.address  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_node_and_pod_metrics_on_two_prometheus_endpoints(tmp_path: Path) -> None:
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 20, "max_batches": 3}},
            "processors": {"k8sattributes": _k8s(_endpoints(tmp_path / "e.yaml"))},
            "connectors": {"flowmetrics": {"metrics": [{"metric_name": "forward", "source_labels": ["podname"]}]}},
            "exporters": {
                "prometheus/node": {"endpoint": f"127.0.0.1:{free_port()}"},
                "prometheus/pods": {"endpoint": f"127.0.0.1:{free_port()}"},
            },
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "processors": ["k8sattributes"], "exporters": ["flowmetrics"]},
                    "metrics/node": {"receivers": ["synthetic"], "exporters": ["prometheus/node"]},
                    "metrics/pods": {"receivers": ["flowmetrics"], "exporters": ["prometheus/pods"]},
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        assert wait_for(lambda: "networkobservability_adv_forward_count{" in _scrape(agent, "prometheus/pods"))
        assert wait_for(
            lambda: "controlplane_networkobservability_synthetic_records 60" in _scrape(agent, "prometheus/node")
        )
        node, pods = _scrape(agent, "prometheus/node"), _scrape(agent, "prometheus/pods")
    finally:
        agent.shutdown()
    assert "networkobservability_adv_forward_count" not in node
    assert "synthetic_records" not in pods
    assert 'podname="pod-1"' in pods


def test_the_pipelines_page_example_is_valid() -> None:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "pipelines.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert example is not None
    config = parse_config(yaml.safe_load(example.group(1)), env={})
    assert set(config.connectors) == {"flowmetrics"}
    assert config.service.pipelines["metrics/pods"].receivers == ["flowmetrics"]


def test_an_exporter_in_logs_pipelines_only_sends_no_metrics(sinks: tuple[OtlpSink, OtlpSink]) -> None:
    sink, _ = sinks
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 0.05, "records_per_batch": 10, "max_batches": 2}},
            "exporters": {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "tls": {"insecure": True}, "interval": 0.1}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {"logs": {"receivers": ["synthetic"], "exporters": ["otlp"]}},
            },
        },
        env={},
    )
    agent = Agent(config)
    agent.start()
    try:
        assert wait_for(lambda: len(sink.log_records()) >= 20)
    finally:
        agent.shutdown()
    assert not sink.metric_requests


def test_extensions_register_under_the_typed_keys_their_factories_declare(tmp_path: Path) -> None:
    import dataclasses

    from retina_otel.extension_keys import IP_FILTER, K8S_CACHE
    from retina_otel.extensions import ExtensionKey

    config = parse_config(
        {
            "receivers": {"packetparser": {"interfaces": ["rotelnone*"], "host_interface": "none"}},
            "processors": {"k8sattributes": _k8s(_endpoints(tmp_path / "e.yaml"))},
            "exporters": {"nop": {}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {"receivers": ["packetparser"], "processors": ["k8sattributes"], "exporters": ["nop"]}
                },
            },
        },
        env={},
    )
    agent = Agent(config)  # built, never started: constructors do no I/O
    try:
        receiver = next(s.component for s in agent.states() if s.id == "packetparser")
        assert agent.get_extension(IP_FILTER) is receiver  # offered and stored under the typed key
        assert agent.get_extension(K8S_CACHE) is not None
    finally:
        agent.shutdown()

    entry = config.processors["k8sattributes"]

    def with_provides(*keys: ExtensionKey[Any]) -> Any:
        factory = dataclasses.replace(entry.factory, provides=keys)
        return dataclasses.replace(
            config, processors={"k8sattributes": dataclasses.replace(entry, factory=factory)}
        )

    with pytest.raises(TypeError, match="does not list in provides"):
        Agent(with_provides())  # offers k8s_cache without declaring it: the duplicate check could not see it
    with pytest.raises(TypeError, match="not a"):
        Agent(with_provides(ExtensionKey("k8s_cache", int)))  # declared with another type


# -- processors whose output nothing reads -----------------------------------------------------------


def test_default_config_leaves_tcplatency_out_until_an_exporter_reads_rtt() -> None:
    """The default logs pipeline ends in flowmetrics, which reads no RTT: the RTT join would be work
    nobody sees. With OTLP flow logs (which carry srtt_us and handshake_us) the processor runs."""
    agent = Agent(load_config(None, env={}))
    assert set(agent.bypassed) == {"tcplatency@logs"}
    assert "reads srtt_us, handshake_us" in agent.bypassed["tcplatency@logs"]
    assert not [s for s in agent.states() if s.id == "tcplatency" and s.kind == "processor"]
    assert agent.readiness()[1]["bypassed"] == agent.bypassed
    with_otlp = Agent(load_config(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}))
    assert not with_otlp.bypassed
    assert [s.pipelines for s in with_otlp.states() if s.id == "tcplatency" and s.kind == "processor"] == [["logs"]]


def _rtt_pipeline(processors: list[str], exporters: list[str]) -> Agent:
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "processors": {"tcplatency": {}, "filter": {"include": [{"network.transport": "tcp"}]}},
            "connectors": {"flowmetrics": {"metrics": [{"metric_name": "forward", "source_labels": ["podname"]}]}},
            "exporters": {"nop": {}, "prometheus": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {"receivers": ["synthetic"], "processors": processors, "exporters": exporters},
                    "metrics": {"receivers": ["flowmetrics"], "exporters": ["prometheus"]},
                },
            },
        },
        env={},
    )
    return Agent(config)


@pytest.mark.parametrize(
    ("processors", "exporters", "left_out"),
    [
        (["tcplatency"], ["flowmetrics"], True),  # flowmetrics declares what it reads: no RTT
        (["tcplatency"], ["flowmetrics", "nop"], False),  # an exporter that declares nothing reads anything
        (["tcplatency", "filter"], ["flowmetrics"], False),  # so does a later processor
        (["filter", "tcplatency"], ["flowmetrics"], True),  # an earlier one does not matter
    ],
)
def test_a_processor_is_left_out_only_when_nothing_after_it_reads_its_fields(
    processors: list[str], exporters: list[str], left_out: bool
) -> None:
    agent = _rtt_pipeline(processors, exporters)
    assert ("tcplatency@logs" in agent.bypassed) is left_out
    running = [s.id for s in agent.states() if s.kind == "processor"]
    assert ("tcplatency" not in running) is left_out
    assert "filter" in running or "filter" not in processors


# -- receivers whose records are only summed --------------------------------------------------------


def test_default_config_tells_packetparser_its_records_are_only_summed() -> None:
    """The default logs pipeline ends in flowmetrics (through k8sattributes): packetparser may write fewer,
    larger records. OTLP flow logs read each record: Retina's report rule again."""
    agent = Agent(load_config(None, env={}))
    assert {"packetparser", "dropreason", "tcpretrans", "dns"} <= agent.only_sums
    with_otlp = Agent(load_config(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}))
    assert not with_otlp.only_sums & {"packetparser", "dropreason", "tcpretrans", "dns"}


@pytest.mark.parametrize(
    ("processors", "exporters", "only_sums"),
    [
        (["tcplatency"], ["flowmetrics"], True),
        ([], ["flowmetrics", "nop"], False),  # an exporter that declares nothing sees each record
        (["filter"], ["flowmetrics"], False),  # a filter may test a record's counts
    ],
)
def test_a_receiver_is_told_its_records_are_only_summed_when_every_consumer_sums_them(
    processors: list[str], exporters: list[str], only_sums: bool
) -> None:
    agent = _rtt_pipeline(processors, exporters)
    assert ("synthetic" in agent.only_sums) is only_sums


@pytest.mark.parametrize(
    ("observer", "on_demand"),
    [({}, True), ({"event_records": "always"}, False)],
)
def test_the_observer_asks_for_event_records_only_while_a_client_follows(
    observer: dict[str, Any], on_demand: bool, tmp_path: Path
) -> None:
    """Records that reach flowmetrics and the observer: the receiver is told they are only summed, except
    while the agent's event demand is held (the observer holds it while a client follows live flows); the
    tcplatency processor, whose fields only the observer reads, fills them only then."""
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "processors": {"tcplatency": {}},
            "connectors": {"flowmetrics": {"metrics": [{"metric_name": "forward", "source_labels": ["podname"]}]}},
            "exporters": {
                "observer": {"socket": f"unix://{tmp_path}/observer.sock", **observer},
                "prometheus": {"endpoint": f"127.0.0.1:{free_port()}"},
            },
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {
                    "logs": {
                        "receivers": ["synthetic"],
                        "processors": ["tcplatency"],
                        "exporters": ["flowmetrics", "observer"],
                    },
                    "metrics": {"receivers": ["flowmetrics"], "exporters": ["prometheus"]},
                },
            },
        },
        env={},
    )
    agent = Agent(config)
    assert "synthetic" not in agent.only_sums
    assert ("synthetic" in agent.events_on_demand) is on_demand
    assert ("tcplatency@logs" in agent.fills_on_demand) is on_demand
    assert "tcplatency@logs" not in agent.bypassed
    agent.start()
    try:
        with grpc.insecure_channel(f"unix://{tmp_path}/observer.sock") as channel:
            call = ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True))

            def read_until_cancelled() -> None:
                with contextlib.suppress(grpc.RpcError):
                    list(call)

            following = threading.Thread(target=read_until_cancelled, daemon=True)
            following.start()
            if on_demand:
                assert wait_for(lambda: agent.event_demand.wanted, timeout=10)
            else:
                time.sleep(0.5)
                assert not agent.event_demand.wanted
            call.cancel()
            following.join(10)
            assert wait_for(lambda: not agent.event_demand.wanted, timeout=10)  # the client left: close rule again
    finally:
        agent.shutdown()


def test_a_receiver_in_no_logs_pipeline_has_nobody_reading_its_records() -> None:
    config = parse_config(
        {
            "receivers": {"synthetic": {"interval": 3600}},
            "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{free_port()}"}},
            "service": {
                "telemetry": {"health": {"endpoint": ""}},
                "pipelines": {"metrics": {"receivers": ["synthetic"], "exporters": ["prometheus"]}},
            },
        },
        env={},
    )
    assert "synthetic" in Agent(config).only_sums
