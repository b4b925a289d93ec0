"""Dependencies where they belong: the agent's install pulls only what the agent needs; the operator and
capture commands name the extra to install when theirs is missing."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from retina_otel.extras import EXTRAS, MissingExtraError, missing_modules, require_extra

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for req in requirements:
        name = req.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        out.add(name.strip().lower().replace("_", "-"))
    return out


def _distribution_of(module: str) -> str:
    top = module.split(".")[0]
    candidates = packages_distributions().get(top, [])
    if top == "opentelemetry":  # a namespace package: several distributions
        return "opentelemetry-" + "-".join(module.split(".")[1:]).replace("_", "-")
    assert candidates, f"{module} is not installed"
    return candidates[0].lower().replace("_", "-")


def test_each_extra_lists_the_distributions_of_its_modules_and_the_agent_needs_none_of_them() -> None:
    extras = PROJECT["optional-dependencies"]
    core = _names(PROJECT["dependencies"])
    for extra, modules in EXTRAS.items():
        listed = _names(extras[extra])
        for module in modules:
            dist = _distribution_of(module)
            assert dist in listed, f"{module} ({dist}) is not in the '{extra}' extra"
            assert dist not in core, f"{dist} is an agent dependency, but only '{extra}' needs it"
    assert "retina-otel[operator,capture]" in extras["all"]
    assert "retina-otel[all]" in extras["dev"]


def test_every_agent_dependency_is_imported_by_the_package() -> None:
    """A dependency nothing imports is not installed with the agent (the OTLP exporter's own
    dependencies, e.g. opentelemetry-proto, come with it)."""
    sources = "\n".join(p.read_text() for p in (ROOT / "retina_otel").rglob("*.py"))
    imports = {
        "opentelemetry-api": "opentelemetry.trace",
        "opentelemetry-sdk": "opentelemetry.sdk",
        "opentelemetry-exporter-otlp": "opentelemetry.exporter.otlp",
        "pydantic": "pydantic",
        "pyyaml": "yaml",
        "numpy": "numpy",
        "pyroute2": "pyroute2",
        "kubernetes": "kubernetes",
        "dnspython": "dns.",
        "grpcio": "grpc",
        "protobuf": "google.protobuf",
    }
    assert _names(PROJECT["dependencies"]) == set(imports)
    for dist, module in imports.items():
        assert f"import {module}" in sources or f"from {module}" in sources, f"nothing imports {dist}"


def test_require_extra_names_the_extra_to_install() -> None:
    assert missing_modules("json", "retina_otel_no_such_module", "no_such_parent.child") == [
        "retina_otel_no_such_module",
        "no_such_parent.child",
    ]
    require_extra("operator", "the operator")  # installed by the dev set-up
    with pytest.raises(MissingExtraError, match=r"pip install 'retina-otel\[capture\]'") as info:
        require_extra("capture", "the S3 upload", "retina_otel_no_such_module")
    assert "the S3 upload needs retina_otel_no_such_module" in str(info.value)


_HIDE_KOPF = """
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "kopf" or name.startswith("kopf."):
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, _Hide())
from retina_otel.cli import main
sys.exit(main(["operator"]))
"""


def test_operator_without_its_extra_exits_2_with_the_extra_to_install() -> None:
    proc = subprocess.run([sys.executable, "-c", _HIDE_KOPF], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'retina-otel[operator]'" in proc.stderr
    assert "Traceback" not in proc.stderr
