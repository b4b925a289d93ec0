"""flowmetrics' node_metrics and the receivers that write the same node-level families cannot be in one
agent: the configuration is rejected, naming the field and the receiver."""

from __future__ import annotations

from typing import Any

import pytest

from retina_otel.config import ConfigError, parse_config
from retina_otel.pipelinecheck import NODE_METRIC_RECEIVERS


def _config(receiver: str, node_metrics: bool) -> dict[str, Any]:
    return {
        "receivers": {receiver: {}, "synthetic": {}},
        "processors": {"flowmetrics": {"node_metrics": node_metrics}},
        "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}, "debug": {}},
        "service": {
            "pipelines": {
                "logs": {"receivers": ["synthetic"], "processors": ["flowmetrics"], "exporters": ["debug"]},
                "metrics": {"receivers": [receiver], "exporters": ["prometheus"]},
            }
        },
    }


@pytest.mark.parametrize("receiver", sorted(NODE_METRIC_RECEIVERS))
def test_node_metrics_with_a_writer_of_the_same_families_is_rejected(receiver: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(receiver, node_metrics=True), env={})
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problems[0].startswith("processors.flowmetrics.node_metrics")
    assert f"receivers.{receiver} ({receiver}) writes" in problems[0]


@pytest.mark.parametrize("receiver", sorted(NODE_METRIC_RECEIVERS))
def test_either_alone_is_fine(receiver: str) -> None:
    parse_config(_config(receiver, node_metrics=False), env={})
    alone = _config(receiver, node_metrics=True)
    alone["service"]["pipelines"]["metrics"]["receivers"] = ["synthetic"]
    del alone["receivers"][receiver]
    parse_config(alone, env={})
