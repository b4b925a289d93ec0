"""A real Prometheus server (Debian's ``/usr/bin/prometheus``) scraping targets on loopback, for tests.

``PrometheusServer(targets).start()`` writes a scrape config (``scrape_interval`` 1 s), starts
Prometheus on a free loopback port with its TSDB in a temporary directory, and waits until it is
ready. ``query(promql)`` runs an instant query over the HTTP API; ``wait_for_target_up()`` waits for
the first successful scrape. ``stop()`` kills the process and removes the directory (also used by the
``prometheus_server`` fixture factory on teardown, whatever the test did).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from retina_otel.testing import wait_for

__all__ = ["PROMETHEUS", "PrometheusServer", "prometheus_server"]

PROMETHEUS = "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One Prometheus process with its own config and TSDB directory."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        job: str = "retina-otel",
        scrape_interval: str = "1s",
        labels: dict[str, str] | None = None,
        honor_labels: bool = False,
    ) -> None:
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.labels = dict(labels or {})  # target labels (on `up` too), as a scrape config adds them
        self.honor_labels = honor_labels
        self.port = 0
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="rotel-prometheus-"))
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "honor_labels": self.honor_labels,
                    "static_configs": [{"targets": self.targets, "labels": self.labels}],
                }
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.workdir / "prometheus.log").open("wb")
        # A port can be taken between choosing and binding it: try a few.
        for _ in range(5):
            self.port = _free_port()
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            if wait_for(self._ready_or_dead, timeout=timeout, interval=0.1) and self.process.poll() is None:
                log.close()
                return self
            self._kill()
        log.close()
        raise RuntimeError(f"prometheus did not become ready: {self.log_tail()}")

    def _ready_or_dead(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.workdir is None:
            return ""
        path = self.workdir / "prometheus.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- HTTP API -----------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector as ``[{"metric": {...}, "value": [ts, "v"]}, ...]``."""
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_value(self, promql: str) -> float | None:
        """The value of a query that returns exactly one sample, else None."""
        result = self.query(promql)
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])

    def targets_health(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_for_target_up(self, timeout: float = 30.0) -> bool:
        return wait_for(
            lambda: bool(self.targets_health()) and all(t["health"] == "up" for t in self.targets_health()),
            timeout=timeout,
            interval=0.2,
        )

    # -- teardown -----------------------------------------------------------------------------------
    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@pytest.fixture
def prometheus_server() -> Iterator[Any]:
    """A factory: ``prometheus_server(["127.0.0.1:PORT"])`` starts one; all are stopped at teardown."""
    started: list[PrometheusServer] = []

    def start(targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(targets, **kwargs)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            with contextlib.suppress(Exception):
                server.stop()
