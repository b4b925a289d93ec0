"""Config validation: every problem named by its full path, with what would be valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retina_otel.config import ConfigError, load_config, parse_config

GOOD = {
    "receivers": {"synthetic": {"interval": 0.5}},
    "processors": {},
    "exporters": {"prometheus": {"endpoint": "127.0.0.1:0"}, "debug": {}},
    "service": {
        "pipelines": {
            "metrics": {"receivers": ["synthetic"], "exporters": ["prometheus"]},
            "logs": {"receivers": ["synthetic"], "exporters": ["debug"]},
        }
    },
}


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return [str(p) for p in info.value.problems]


def test_good_config_parses() -> None:
    config = parse_config(GOOD, env={})
    assert set(config.receivers) == {"synthetic"}
    assert config.service.telemetry.health.endpoint == "0.0.0.0:18081"


def test_unknown_component_type_lists_valid_types() -> None:
    raw = {**GOOD, "receivers": {"packetsniffer": {}}}
    found = problems(raw)
    assert any(
        p.startswith("receivers.packetsniffer: unknown receiver type 'packetsniffer'; valid types:") for p in found
    )
    assert any("synthetic" in p for p in found)


def test_unknown_key_names_field_and_valid_keys() -> None:
    raw = {**GOOD, "receivers": {"synthetic": {"intervall": 1}}}
    (problem,) = [p for p in problems(raw) if "intervall" in p]
    assert problem.startswith("receivers.synthetic.intervall: unknown key; valid keys:")
    assert "interval" in problem


def test_wrong_type_names_field() -> None:
    raw = {**GOOD, "receivers": {"synthetic": {"interval": "soon"}}}
    assert any(p.startswith("receivers.synthetic.interval: Input should be a valid number") for p in problems(raw))


def test_dangling_pipeline_reference() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["service"]["pipelines"]["logs"]["exporters"] = ["debug", "otlp/missing"]
    found = problems(raw)
    assert any(
        p.startswith("service.pipelines.logs.exporters[1]: references 'otlp/missing', which is not defined")
        for p in found
    )


def test_all_problems_reported_at_once() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["receivers"]["synthetic"] = {"interval": -1, "bogus": True}
    raw["service"]["pipelines"]["metrics"]["exporters"] = []
    raw["extra"] = 1
    found = problems(raw)
    assert len(found) >= 4, found


def test_bad_pipeline_name_and_unknown_section() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["service"]["pipelines"]["profiles"] = {"receivers": ["synthetic"], "exporters": ["debug"]}
    found = problems(raw)
    assert any(p.startswith("service.pipelines.profiles: pipeline names start with") for p in found)


def test_env_substitution() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["exporters"]["prometheus"]["endpoint"] = "${env:PROM_ADDR:-127.0.0.1:9999}"
    assert parse_config(raw, env={}).exporters["prometheus"].config.endpoint == "127.0.0.1:9999"  # type: ignore[attr-defined]
    assert (
        parse_config(raw, env={"PROM_ADDR": "0.0.0.0:1"}).exporters["prometheus"].config.endpoint  # type: ignore[attr-defined]
        == "0.0.0.0:1"
    )


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "receivers": {"synthetic": {"records_per_batch": 0}}}))
    ok = subprocess.run(
        [sys.executable, "-m", "retina_otel", "validate", "--config", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "retina_otel", "validate", "--config", str(bad)], capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert "receivers.synthetic.records_per_batch: Input should be greater than 0" in failed.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "retina_otel", "validate", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_embedded_default_config_is_valid() -> None:
    load_config(None, env={})
    load_config(None, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})


def test_bad_endpoint_is_a_config_error() -> None:
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw["exporters"]["prometheus"]["endpoint"] = "localhost"
    assert any(
        p.startswith("exporters.prometheus.endpoint: Value error, 'localhost' is not host:port") for p in problems(raw)
    )
