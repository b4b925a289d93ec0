"""Capture workload, no kernel needed: filter translation, spec parsing, naming, redaction."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from retina_otel.capture import redact as redact_mod
from retina_otel.capture.filters import FilterError, build_filter, check_compiles, endpoint_group, parse_endpoint
from retina_otel.capture.outputs import OutputResult, upload_blob, upload_s3
from retina_otel.capture.redact import MASK, RedactingFilter, redact, redact_error, register_secret
from retina_otel.capture.runner import bundle_name
from retina_otel.capture.spec import CaptureJobSpec, S3Output, SpecError, parse_duration

# ------------------------------------------------------------------ include / exclude entries


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("198.18.0.1", "(host 198.18.0.1)"),
        ("198.18.0.1:80", "(host 198.18.0.1 and port 80)"),
        ("198.18.0.1:*", "(host 198.18.0.1)"),
        ("*:53", "(port 53)"),
        (":53", "(port 53)"),
        ("*:8000-8080", "(portrange 8000-8080)"),
        ("198.18.0.1:0", "(host 198.18.0.1 and port 0)"),
        ("198.18.0.1:65535", "(host 198.18.0.1 and port 65535)"),
        ("2001:db8::1", "(host 2001:db8::1)"),
        ("2001:0db8:0000::0001", "(host 2001:db8::1)"),
        ("[2001:db8::1]:443", "(host 2001:db8::1 and port 443)"),
        ("[2001:db8::1]", "(host 2001:db8::1)"),
        ("[2001:db8::1]:*", "(host 2001:db8::1)"),
        ("  198.18.0.1:80 ", "(host 198.18.0.1 and port 80)"),
        ("80", "(port 80)"),  # Retina reads an entry without '.' or ':' as a port
        ("1000-2000", "(portrange 1000-2000)"),
    ],
)
def test_endpoint_entries(entry: str, expected: str) -> None:
    assert parse_endpoint(entry).expression() == expected


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("", "empty"),
        ("*", "matches everything"),
        ("*:*", "matches everything"),
        ("198.18.0.256", "not an IPv4 or IPv6 address"),
        ("198.18.0.1:65536", "outside 0-65535"),
        ("198.18.0.1:-1", "not a number"),
        ("198.18.0.1:http", "not a number"),
        ("198.18.0.1:90-80", "ends before it starts"),
        ("host 1.2.3.4 or 1", "not an IPv4 or IPv6 address"),
        ("198.18.0.1:80 or port 22", "not a number"),
        ("[198.18.0.1]:80", "only IPv6"),
        ("[2001:db8::1:80", "missing ']'"),
        ("[2001:db8::1]80", "expected ':port'"),
        ("fe80::1%eth0", "scoped"),
        ("example.com:80", "not an IPv4 or IPv6 address"),
        ("198.18.0.0/24", "not an IPv4 or IPv6 address"),
        ("198.18.0.1:80:90", "not an IPv4 or IPv6 address"),
        ("99999", "outside 0-65535"),
    ],
)
def test_invalid_endpoint_entries(entry: str, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_endpoint(entry)
    assert fragment in str(info.value)


def test_group_deduplicates_and_keeps_order() -> None:
    assert endpoint_group(["198.18.0.2", "*:53", "198.18.0.2", " "]) == "((host 198.18.0.2) or (port 53))"
    assert endpoint_group([]) == ""


def _spec(**kw: object) -> CaptureJobSpec:
    return CaptureJobSpec.model_validate({"duration": 10, **kw})


def test_include_and_exclude_combine_like_retina() -> None:
    spec = _spec(includeFilters=["198.18.0.1", "*:80"], excludeFilters=["198.18.0.1:22", "*:53"])
    assert build_filter(spec) == (
        "((host 198.18.0.1) or (port 80)) and not ((host 198.18.0.1 and port 22) or (port 53))"
    )


def test_only_exclude() -> None:
    assert build_filter(_spec(excludeFilters=["*:22"])) == "not ((port 22))"


def test_everything_combined() -> None:
    spec = _spec(
        includeFilters=["198.18.0.1"],
        excludeFilters=["*:22"],
        sourceIPs=["198.18.0.5", "2001:db8::5"],
        destinationIPs=["198.18.0.6"],
        podIPs=["198.18.0.7", "198.18.0.7"],
        pcapFilter="udp or icmp",
    )
    assert build_filter(spec) == (
        "((host 198.18.0.1)) and not ((port 22)) and (src host 198.18.0.5 or src host 2001:db8::5)"
        " and (dst host 198.18.0.6) and (host 198.18.0.7) and (udp or icmp)"
    )
    assert build_filter(_spec(excludeFilters=["*:22"], pcapFilter="tcp")) == "(not ((port 22))) and (tcp)"


def test_no_filters_capture_everything() -> None:
    assert build_filter(_spec()) == ""


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("sourceIPs", ["198.18.0.300"], "sourceIP"),
        ("destinationIPs", ["bad"], "destinationIP"),
        ("podIPs", ["1.2.3.4 or host 5.6.7.8"], "pod IP"),
        ("pcapFilter", "-w /etc/passwd", "not tcpdump options"),
        ("pcapFilter", "tcp\nudp", "single line"),
        ("pcapFilter", "(tcp", "unbalanced"),
    ],
)
def test_invalid_other_filters(field: str, value: object, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        build_filter(_spec(**{field: value}))
    assert fragment in str(info.value)


@pytest.mark.kernel  # tcpdump is one of the kernel tests' tools (tests/support/requirements.py)
def test_tcpdump_compiles_or_rejects() -> None:
    check_compiles("((host 198.18.0.1) or (portrange 80-90)) and not ((host 2001:db8::1 and port 22))")
    check_compiles("")
    with pytest.raises(FilterError, match="tcpdump rejects the filter"):
        check_compiles("udp and port nonsense_port_name")
    with pytest.raises(FilterError, match="syntax error"):
        check_compiles("udp and and")


# ------------------------------------------------------------------ spec


def test_spec_accepts_camel_and_snake_case() -> None:
    camel = CaptureJobSpec.from_json(
        json.dumps(
            {
                "includeFilters": ["198.18.0.1"],
                "sourceIPs": ["198.18.0.2"],
                "podIPs": ["198.18.0.3"],
                "maxCaptureSize": 5,
                "duration": "1m30s",
                "packetSize": 96,
                "fileCount": 2,
                "interfaces": ["eth0", "eth0"],
                "includeMetadata": False,
                "outputs": {
                    "hostPath": "/captures",
                    "pvcPath": "/mnt/pvc",
                    "blobSasUrlFile": "/secrets/blob/blob-upload-url",
                    "s3": {
                        "endpoint": "http://127.0.0.1:9000",
                        "bucket": "caps",
                        "region": "eu-west-1",
                        "path": "/a/b/",
                        "accessKeyIdFile": "/secrets/s3/access-key-id",
                        "secretAccessKeyFile": "/secrets/s3/secret-access-key",
                    },
                },
            }
        )
    )
    snake = CaptureJobSpec.model_validate(camel.model_dump())
    assert snake == camel
    assert camel.duration == 90.0
    assert camel.interfaces == ("eth0",)
    assert camel.outputs.s3 is not None and camel.outputs.s3.path == "a/b"
    assert camel.outputs.configured() == ["hostPath", "persistentVolumeClaim", "blobUpload", "s3Upload"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"duration": None, "maxCaptureSize": None}, "at least one of duration and maxCaptureSize"),
        ({"duration": "soon"}, "duration"),
        ({"duration": -1}, "positive"),
        ({"maxCaptureSize": 0}, "maxCaptureSize"),
        ({"interfaces": ["eth0; rm -rf /"]}, "interface name"),
        ({"interfaces": ["-w"]}, "interface name"),
        ({"interfaces": ["any", "eth0"]}, "cannot be combined"),
        ({"surprise": 1}, "surprise"),
        ({"outputs": {"hostPath": "relative/dir"}}, "absolute"),
        ({"outputs": {"hostPath": "/a/../etc"}}, "absolute"),
        ({"outputs": {"s3": {"bucket": "b", "path": "../x", "accessKeyIdFile": "a", "secretAccessKeyFile": "b"}}},
         "bucket"),
        ({"outputs": {"s3": {"bucket": "bkt", "endpoint": "ftp://x", "accessKeyIdFile": "a",
                             "secretAccessKeyFile": "b"}}}, "endpoint"),
    ],
)
def test_invalid_specs(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        CaptureJobSpec.from_json(json.dumps(data))
    assert fragment in str(info.value)


def test_spec_is_frozen() -> None:
    spec = _spec()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        spec.duration = 5  # type: ignore[misc]


def test_not_json() -> None:
    with pytest.raises(SpecError, match="not valid JSON"):
        CaptureJobSpec.from_json("{nope")


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), (12, 12.0), ("1m", 60.0), ("1h2m3s", 3723.0),
                                               ("1.5s", 1.5), ("500ms", 0.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


# ------------------------------------------------------------------ naming


def test_bundle_name_uses_utc_start_time() -> None:
    start = dt.datetime(2024, 3, 9, 23, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert bundle_name("cap-1", "node-a", start) == "cap-1-node-a-20240310010405UTC"
    with pytest.raises(SpecError):
        bundle_name("../etc", "node-a", start)
    with pytest.raises(SpecError):
        bundle_name("cap", "node/a", start)
    with pytest.raises(ValueError):
        bundle_name("cap", "node", dt.datetime(2024, 1, 1))  # naive: ambiguous


# ------------------------------------------------------------------ redaction

SAS = (
    "https://acct.blob.core.windows.net/captures?sv=2023-11-03&ss=b&srt=co&sp=rwlc"
    "&se=2030-01-01T00%3A00%3A00Z&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789%2BabcDEF%3D"
)


@pytest.fixture(autouse=True)
def _forget_secrets() -> None:
    redact_mod.clear_secrets()


def test_redacts_sas_urls_even_unregistered() -> None:
    out = redact(f"upload to {SAS} failed")
    assert "sig=" not in out and "AbCdEf" not in out and "sp=rwlc" not in out
    assert "https://acct.blob.core.windows.net/captures?***" in out


def test_redacts_registered_secrets_in_any_form() -> None:
    register_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    register_secret(SAS)
    sig = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+abcDEF="
    for text in (
        "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY here",
        "quoted wJalrXUtnFEMI%2FK7MDENG%2FbPxRfiCYEXAMPLEKEY",
        f"signature alone: {sig}",
        f"the query: {SAS.split('?', 1)[1]}",
    ):
        out = redact(text)
        assert "wJalrXUtnFEMI" not in out and "AbCdEfGh" not in out, out
        assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "sig=abcdefghijk&se=2030",
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5;EndpointSuffix=x",
        "aws_secret_access_key = wJalrXUtnFEMI",
        "AKIAIOSFODNN7EXAMPLE was used",
        "X-Amz-Signature=deadbeef",
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIA...",
    ],
)
def test_redacts_patterns(text: str) -> None:
    out = redact(text)
    for secret in ("abcdefghijk", "c2VjcmV0a2V5", "wJalrXUtnFEMI", "AKIAIOSFODNN7EXAMPLE", "deadbeef", "HMAC"):
        assert secret not in out, out


def test_redact_keeps_harmless_text() -> None:
    text = "copied to /captures/cap-node-20240101000000UTC.tar.gz (HTTP 403 AuthenticationFailed)"
    assert redact(text) == text


def test_redact_error_and_log_filter(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("s3cr3t-value-123")
    assert "s3cr3t" not in redact_error(RuntimeError(f"boom {SAS} s3cr3t-value-123"))
    logger = logging.getLogger("test.capture.redact")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.capture.redact"):
            logger.info("url %s key %s", SAS, "s3cr3t-value-123")
            try:
                raise ValueError(f"in exception {SAS}")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.filters.clear()
    text = caplog.text
    assert "AbCdEf" not in text and "s3cr3t" not in text and "sig=" not in text
    assert "failed" in text


def test_output_result_is_redacted() -> None:
    result = OutputResult("blobUpload", SAS, False, f"error at {SAS}")
    data = json.dumps(result.to_dict())
    assert "AbCdEf" not in data and "sig=" not in data


# ------------------------------------------------------------------ outputs that fail before any network


def test_blob_secret_problems_are_clear(tmp_path: object) -> None:
    from pathlib import Path

    base = Path(str(tmp_path))
    tarball = base / "x.tar.gz"
    tarball.write_bytes(b"data")
    missing = upload_blob(tarball, str(base / "nope"))
    assert not missing.ok and "does not exist" in (missing.error or "")
    (base / "notaurl").write_text("just-a-token-sig=abc\n")
    bad = upload_blob(tarball, str(base / "notaurl"))
    assert not bad.ok and "SAS URL" in (bad.error or "") and "abc" not in json.dumps(bad.to_dict())
    (base / "nosig").write_text("https://acct.blob.core.windows.net/c?sv=1&sp=w\n")
    nosig = upload_blob(tarball, str(base / "nosig"))
    assert not nosig.ok and "no SAS token" in (nosig.error or "")
    (base / "empty").write_text("\n")
    assert "empty" in (upload_blob(tarball, str(base / "empty")).error or "")
    s3 = S3Output(bucket="caps", accessKeyIdFile=str(base / "no-id"), secretAccessKeyFile=str(base / "no-key"))
    res = upload_s3(tarball, s3)
    assert not res.ok and "access key id file" in (res.error or "")


# ------------------------------------------------------------------ the operator's Job contract


def test_adapts_the_operator_job_contract() -> None:
    from retina_otel.crds import capturejob as contract

    job = contract.CaptureJobSpec(
        capture_name="cap",
        capture_namespace="default",
        filter=contract.CaptureFilter(include=["198.18.0.1:80"], exclude=["*:22"], source_ips=["198.18.0.2"],
                                      destination_ips=["198.18.0.3"], pod_ips=["198.18.0.4"], pcap_filter="tcp"),
        duration_seconds=30,
        packet_size=128,
        file_count=2,
        interfaces=["eth0"],
        include_metadata=False,
        outputs=contract.CaptureOutputs(
            host_path=contract.HOST_PATH_MOUNT,
            host_path_on_node="/var/log/retina/captures/x",
            pvc_mount_path=contract.PVC_MOUNT,
            blob=contract.BlobOutput(sas_url_file="/retina/secrets/blob/blob-upload-url"),
            s3=contract.S3Output(bucket="caps", endpoint="http://127.0.0.1:9000", access_key_id_file="/a",
                                 secret_access_key_file="/b"),
        ),
    )
    spec = CaptureJobSpec.from_json(job.to_json())
    assert spec.capture_name == "cap" and spec.work_dir == contract.WORK_DIR
    assert spec.duration == 30 and spec.max_capture_size_mb == 100  # Retina's default
    assert spec.packet_size == 128 and spec.file_count == 2 and spec.interfaces == ("eth0",)
    assert spec.include_metadata is False
    assert spec.outputs.host_path == contract.HOST_PATH_MOUNT and spec.outputs.pvc_path == contract.PVC_MOUNT
    assert spec.outputs.blob_sas_url_file == "/retina/secrets/blob/blob-upload-url"
    assert spec.outputs.s3 is not None and spec.outputs.s3.path == "" and spec.outputs.s3.bucket == "caps"
    assert build_filter(spec) == (
        "((host 198.18.0.1 and port 80)) and not ((port 22)) and (src host 198.18.0.2) and (dst host 198.18.0.3)"
        " and (host 198.18.0.4) and (tcp)"
    )
    with pytest.raises(SpecError, match="captureNamespace"):
        CaptureJobSpec.from_json(json.dumps({"captureName": "cap", "durationSeconds": 1}))


def test_cli_entry_points_exist() -> None:
    import argparse

    from retina_otel.capture import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--duration", "5", "--include", "198.18.0.1", "-i", "eth0", "--output-dir", "/x"])
    assert args.duration == "5" and args.include == ["198.18.0.1"] and args.interfaces == ["eth0"]
    assert cli.main_from_args is cli.run_from_args
