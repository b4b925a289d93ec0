"""The capture workload in the real kernel: tcpdump in a sandbox pod's namespace, scripted traffic,
the bundle, stop conditions, and uploads read back from Azurite and a moto S3 server."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retina_otel.capture import redact as redact_mod
from retina_otel.capture.cli import main
from retina_otel.capture.runner import CaptureResult, RunOptions, run_capture
from retina_otel.capture.spec import CaptureJobSpec
from retina_otel.sandbox import Pod, Sandbox
from tests.support.object_stores import Azurite, MotoS3, azurite_server, moto_s3_server

pytestmark = pytest.mark.kernel

PORTS = (5001, 5002, 5003)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    with moto_s3_server() as server:
        yield server


@dataclass
class Pods:
    a: Pod
    b: Pod
    c: Pod
    listeners: dict[tuple[str, int], socket.socket]

    def received(self, ip: str, port: int, count: int, timeout: float = 10) -> None:
        """Wait until the listener got ``count`` datagrams (so they crossed the captured interface)."""
        s = self.listeners[(ip, port)]
        s.settimeout(timeout)
        for _ in range(count):
            s.recvfrom(65536)


@pytest.fixture
def pods(sandbox: Sandbox) -> Iterator[Pods]:
    """a sends, b and c listen on every test port (so nobody answers with ICMP port unreachable)."""
    a, b, c = sandbox.add_pod("a"), sandbox.add_pod("b"), sandbox.add_pod("c")
    listeners: dict[tuple[str, int], socket.socket] = {}
    try:
        for pod in (b, c):
            with pod.entered():
                for port in PORTS:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    listeners[(pod.ipv4, port)] = s
                    s.bind((pod.ipv4, port))
        for pod in (b, c):  # resolve the gateway first: proxy ARP answers only after ~0.8 s
            a.run(["ping", "-c", "1", "-W", "5", pod.ipv4])
        yield Pods(a, b, c, listeners)
    finally:
        for s in listeners.values():
            s.close()


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    redact_mod.clear_secrets()


def send_udp(pod: Pod, dst: str, port: int, count: int, size: int = 32) -> None:
    with pod.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(bytes([i % 256]) * size, (dst, port))


def wait_captured(work_dir: Path, count: int, timeout: float = 20) -> None:
    """Wait until the (staged) pcap holds ``count`` packets: tcpdump may lag the traffic on a busy box."""
    from scapy.utils import rdpcap

    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        for pcap in work_dir.glob(".*/*/*.pcap"):
            with contextlib.suppress(Exception):
                seen = len(rdpcap(str(pcap)))
        if seen >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"tcpdump wrote {seen} of {count} packets within {timeout}s")


def start_capture(spec: CaptureJobSpec, opts: RunOptions) -> tuple[threading.Thread, threading.Event, list[Any]]:
    stop, ready = threading.Event(), threading.Event()
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(run_capture(spec, opts, stop=stop, ready=ready))
        except BaseException as exc:
            box.append(exc)
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30), "tcpdump did not start"
    return thread, stop, box


def finish(thread: threading.Thread, box: list[Any], timeout: float = 120) -> CaptureResult:
    thread.join(timeout)
    assert not thread.is_alive(), "capture did not finish"
    if isinstance(box[0], BaseException):
        raise box[0]
    result = box[0]
    assert isinstance(result, CaptureResult)
    return result


def extract(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    (top,) = list(dest.iterdir())
    return top


def udp_ports(pcap: Path) -> dict[int, int]:
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    counts: dict[int, int] = {}
    for pkt in rdpcap(str(pcap)):
        assert UDP in pkt, pkt.summary()
        counts[pkt[UDP].dport] = counts.get(pkt[UDP].dport, 0) + 1
    return counts


# ------------------------------------------------------------------ tests


def test_capture_in_pod_namespace_has_exactly_the_filtered_packets(pods: Pods, tmp_path: Path) -> None:
    spec = CaptureJobSpec.model_validate(
        {
            "includeFilters": [pods.b.ipv4],
            "excludeFilters": ["*:5002"],
            "interfaces": ["eth0"],
            "duration": 60,
            "outputs": {"hostPath": str(tmp_path / "host"), "pvcPath": str(tmp_path / "pvc")},
        }
    )
    opts = RunOptions("cap-filter", "node-1", tmp_path / "work", netns=pods.a.netns)
    thread, stop, box = start_capture(spec, opts)
    send_udp(pods.a, pods.b.ipv4, 5001, 7)
    send_udp(pods.a, pods.b.ipv4, 5002, 5)  # excluded port
    send_udp(pods.a, pods.b.ipv4, 5003, 3)
    send_udp(pods.a, pods.c.ipv4, 5001, 6)  # not included host
    for ip, port, count in ((pods.b.ipv4, 5001, 7), (pods.b.ipv4, 5002, 5), (pods.b.ipv4, 5003, 3),
                            (pods.c.ipv4, 5001, 6)):
        pods.received(ip, port, count)
    wait_captured(tmp_path / "work", 10)
    stop.set()
    result = finish(thread, box)

    assert result.ok, result.to_json()
    assert result.stop_reason == "signal"
    assert result.filter == f"((host {pods.b.ipv4})) and not ((port 5002))"
    assert result.packets_captured == 10
    assert [o.type for o in result.outputs] == ["hostPath", "persistentVolumeClaim"]
    tarball = Path(result.local_path or "")
    assert tarball.is_file()
    for out in ("host", "pvc"):
        assert (tmp_path / out / tarball.name).read_bytes() == tarball.read_bytes()

    top = extract(tarball, tmp_path / "x")
    assert top.name == tarball.name.removesuffix(".tar.gz")
    assert udp_ports(top / f"{top.name}.pcap") == {5001: 7, 5003: 3}

    # The metadata bundle, taken in the pod's namespace.
    meta = top / "metadata"
    ip_res = (meta / "ip-resources.txt").read_text()
    for section in ("addr show", "neigh show", "rule list", "-6 route show table all", "-4 route show table all"):
        assert section in ip_res
    assert pods.a.ipv4 in ip_res and pods.b.host_veth not in ip_res
    assert "iptables-save" in (meta / "iptables-rules.txt").read_text()
    assert "nft list ruleset" in (meta / "nft-ruleset.txt").read_text()
    assert "ss -tanpuei" in (meta / "socket-stats.txt").read_text()
    dev = (meta / "proc-net" / "dev").read_text()
    assert "eth0" in dev and pods.a.host_veth not in dev
    for name in ("snmp", "netstat", "snmp6", "route", "udp"):
        assert (meta / "proc-net" / name).is_file(), name
    assert (meta / "proc-sys-net" / "ipv4" / "conf" / "eth0" / "rp_filter").is_file()
    assert (meta / "proc-sys-net" / "ipv4" / "ip_forward").is_file()
    commands = json.loads((meta / "metadata-commands.json").read_text())
    assert {c["command"].split()[0] for c in commands["commands"]} >= {"ip", "iptables-save", "nft", "ss", "copy"}
    assert "listening on eth0" in (top / "tcpdump.log").read_text()
    info = json.loads((top / "capture-info.json").read_text())
    assert info["stopReason"] == "signal" and info["packetsCaptured"] == 10 and info["netns"] == pods.a.netns


def test_tarball_name_format(pods: Pods, tmp_path: Path) -> None:
    spec = CaptureJobSpec.model_validate({"duration": 0.3, "includeMetadata": False,
                                          "outputs": {"hostPath": str(tmp_path / "out")}})
    started = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = run_capture(spec, RunOptions("my-cap", "aks-node-0", tmp_path / "w", netns=pods.a.netns, started=started))
    assert result.file == "my-cap-aks-node-0-20250102030405UTC.tar.gz"
    result = run_capture(spec, RunOptions("my-cap", "aks-node-0", tmp_path / "w", netns=pods.a.netns))
    stamp = dt.datetime.strptime(result.file.removeprefix("my-cap-aks-node-0-").removesuffix("UTC.tar.gz"),
                                 "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    assert before <= stamp <= dt.datetime.now(dt.UTC)
    top = extract(Path(result.local_path or ""), tmp_path / "x")
    assert not (top / "metadata").exists()  # includeMetadata false
    assert (top / "tcpdump.log").is_file()  # tcpdump's log always


def test_stops_on_duration_with_a_valid_empty_pcap(pods: Pods, tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    spec = CaptureJobSpec.model_validate({"duration": 1.5, "interfaces": ["eth0"], "includeMetadata": False,
                                          "includeFilters": ["*:5001"],
                                          "outputs": {"hostPath": str(tmp_path / "out")}})
    start = time.monotonic()
    result = run_capture(spec, RunOptions("dur", "n", tmp_path / "w", netns=pods.a.netns))
    elapsed = time.monotonic() - start
    assert result.ok and result.stop_reason == "duration"
    assert 1.5 <= elapsed < 10
    top = extract(Path(result.local_path or ""), tmp_path / "x")
    assert len(rdpcap(str(top / f"{top.name}.pcap"))) == 0


def test_stops_on_size(pods: Pods, tmp_path: Path) -> None:
    from scapy.utils import rdpcap

    spec = CaptureJobSpec.model_validate({"duration": 120, "interfaces": ["eth0"], "includeFilters": ["*:5001"],
                                          "includeMetadata": False, "outputs": {"hostPath": str(tmp_path / "out")}})
    limit = 1_500_000
    opts = RunOptions("size", "n", tmp_path / "w", netns=pods.a.netns, max_bytes=limit)
    result = _flooded(pods, spec, opts, packets=20000)
    assert result.ok, result.to_json()
    assert result.stop_reason == "size"
    assert limit <= (result.pcap_bytes or 0) < limit + 1_000_000
    top = extract(Path(result.local_path or ""), tmp_path / "x")
    pcaps = sorted(p.name for p in top.iterdir() if ".pcap" in p.name)
    assert pcaps == [f"{top.name}.pcap"]
    assert len(rdpcap(str(top / pcaps[0]))) == result.packets_captured > 1000


def test_file_count_is_retinas_rotating_capture(pods: Pods, tmp_path: Path) -> None:
    """fileCount N with maxCaptureSize M: N files of M each reused as a ring (tcpdump -C M -W N), the oldest
    overwritten; no size stop, the capture ends at its duration (Retina's "last N files of traffic")."""
    from scapy.utils import rdpcap

    spec = CaptureJobSpec.model_validate({"duration": 4, "fileCount": 3, "interfaces": ["eth0"],
                                          "includeFilters": ["*:5001"], "includeMetadata": False,
                                          "outputs": {"hostPath": str(tmp_path / "out")}})
    opts = RunOptions("ring", "n", tmp_path / "w", netns=pods.a.netns, max_bytes=1_000_000)  # -C 1
    result = _flooded(pods, spec, opts, packets=200000)
    assert result.ok, result.to_json()
    assert result.stop_reason == "duration"
    top = extract(Path(result.local_path or ""), tmp_path / "x")
    pcaps = sorted(p.name for p in top.iterdir() if ".pcap" in p.name)
    assert pcaps == [f"{top.name}.pcap0", f"{top.name}.pcap1", f"{top.name}.pcap2"]
    kept = sum(len(rdpcap(str(top / name))) for name in pcaps)
    assert all((top / name).stat().st_size < 1_000_000 + 2000 for name in pcaps)
    assert 0 < kept < (result.packets_captured or 0)  # older packets were overwritten


def _flooded(pods: Pods, spec: CaptureJobSpec, opts: RunOptions, packets: int) -> CaptureResult:
    """Run the capture while pod a sends 1000-byte UDP datagrams to pod b's port 5001."""
    thread, _, box = start_capture(spec, opts)
    flood_stop = threading.Event()

    def flood() -> None:
        with pods.a.entered(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(packets):
                if flood_stop.is_set():
                    return
                s.sendto(b"x" * 1000, (pods.b.ipv4, 5001))
                time.sleep(0.0002)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        return finish(thread, box)
    finally:
        flood_stop.set()
        flooder.join(30)


def test_sigterm_flushes_bundles_and_uploads_everywhere(
    pods: Pods, tmp_path: Path, azurite: Azurite, moto_s3: MotoS3
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    sas_url = azurite.sas_url()
    (secrets / "blob-upload-url").write_text(sas_url + "\n")
    (secrets / "access-key-id").write_text(moto_s3.access_key)
    (secrets / "secret-access-key").write_text(moto_s3.secret_key)
    spec = {
        "includeFilters": [f"{pods.b.ipv4}:5001"],
        "interfaces": ["eth0"],
        "duration": "10m",
        "outputs": {
            "hostPath": str(tmp_path / "host"),
            "blobSasUrlFile": str(secrets / "blob-upload-url"),
            "s3": {"endpoint": moto_s3.endpoint, "bucket": moto_s3.bucket, "region": "us-east-1",
                   "path": "retina/captures", "accessKeyIdFile": str(secrets / "access-key-id"),
                   "secretAccessKeyFile": str(secrets / "secret-access-key")},
        },
    }
    env = {**os.environ, "RETINA_CAPTURE_SPEC": json.dumps(spec), "CAPTURE_NAME": "cap-term", "NODE_NAME": "node-t"}
    args = [sys.executable, "-m", "retina_otel.capture.cli", "--netns", pods.a.netns, "--work-dir", str(tmp_path / "w")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    started = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line)
            if "capture started" in line:
                started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "".join(stderr_lines)
        send_udp(pods.a, pods.b.ipv4, 5001, 4)
        send_udp(pods.a, pods.b.ipv4, 5002, 2)
        pods.received(pods.b.ipv4, 5001, 4)
        pods.received(pods.b.ipv4, 5002, 2)
        wait_captured(tmp_path / "w", 4)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    reader.join(10)
    logs = "".join(stderr_lines)
    assert proc.returncode == 0, logs + stdout
    result = json.loads(stdout)
    assert result["stopReason"] == "signal" and result["ok"] and result["failedOutputs"] == []
    assert [o["type"] for o in result["outputs"]] == ["hostPath", "blobUpload", "s3Upload"]
    name = result["file"]
    assert name.startswith("cap-term-node-t-") and name.endswith("UTC.tar.gz")
    local = Path(result["localPath"]).read_bytes()
    assert (tmp_path / "host" / name).read_bytes() == local
    assert azurite.read(name) == local
    obj = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=f"retina/captures/{name}")
    assert obj["Body"].read() == local
    top = extract(Path(result["localPath"]), tmp_path / "x")
    assert udp_ports(top / f"{top.name}.pcap") == {5001: 4}
    # No secret anywhere: logs, result, bundle.
    sig = sas_url.split("sig=", 1)[1].split("&", 1)[0]
    bundle_text = "".join(p.read_text(errors="replace") for p in top.rglob("*.json"))
    for text in (logs, stdout, bundle_text):
        assert sig not in text and moto_s3.secret_key not in text and moto_s3.access_key not in text


def test_wrong_sas_and_wrong_key_fail_clearly_and_keep_the_tarball(
    tmp_path: Path, azurite: Azurite, moto_s3: MotoS3, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    good = azurite.sas_url()
    bad_sig = "sig=" + "A" * 43 + "%3D"
    (secrets / "blob").write_text(good.split("sig=")[0] + bad_sig + "&" + good.split("sig=")[1].split("&", 1)[-1])
    (secrets / "id").write_text(moto_s3.access_key)
    (secrets / "key").write_text("wrong-secret-key-0123456789")
    spec = {
        "duration": 0.3,
        "interfaces": ["lo"],
        "includeMetadata": False,
        "outputs": {
            "hostPath": str(tmp_path / "host"),
            "blobSasUrlFile": str(secrets / "blob"),
            "s3": {"endpoint": moto_s3.endpoint, "bucket": moto_s3.bucket, "accessKeyIdFile": str(secrets / "id"),
                   "secretAccessKeyFile": str(secrets / "key")},
        },
    }
    monkeypatch.setenv("RETINA_CAPTURE_SPEC", json.dumps(spec))
    code = main(["--capture-name", "cap-bad", "--node-name", "n", "--work-dir", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert code == 1
    result = json.loads(out)
    assert result["ok"] is False
    assert result["failedOutputs"] == ["blobUpload", "s3Upload"]
    by_type = {o["type"]: o for o in result["outputs"]}
    assert by_type["hostPath"]["ok"]
    assert "refused the SAS URL" in by_type["blobUpload"]["error"]
    assert "HTTP 403 AuthorizationFailure" in by_type["blobUpload"]["error"]
    assert "SignatureDoesNotMatch" in by_type["s3Upload"]["error"]
    assert Path(result["localPath"]).is_file()
    assert "the tarball stays at" in err
    for text in (out, err):
        assert "A" * 43 not in text and "wrong-secret-key" not in text and moto_s3.access_key not in text
        assert good.split("sig=")[1].split("&")[0] not in text

    # An unknown access key id is named as such.
    (secrets / "id").write_text("AKIAUNKNOWNUNKNOWN12")
    code = main(["--capture-name", "cap-bad", "--node-name", "n", "--work-dir", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    s3_result = {o["type"]: o for o in json.loads(out)["outputs"]}["s3Upload"]
    assert code == 1 and "InvalidAccessKeyId" in s3_result["error"] and "AKIAUNKNOWN" not in out + err


def test_invalid_input_exits_2_without_capturing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETINA_CAPTURE_SPEC", raising=False)
    base = ["--work-dir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o"), "--duration", "1"]
    assert main([*base, "--include", "198.18.0.1:99999"]) == 2
    assert "outside 0-65535" in capsys.readouterr().out
    assert main([*base, "--filter", "udp and and"]) == 2
    assert "tcpdump rejects the filter" in capsys.readouterr().out
    assert main(["--work-dir", str(tmp_path / "w"), "--duration", "1"]) == 2
    assert "no output configured" in capsys.readouterr().out
    assert main([*base, "--capture-name", "../../etc"]) == 2
    assert main([*base, "--include", "198.18.0.1", "--validate-only"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["filter"] == "((host 198.18.0.1))"
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
