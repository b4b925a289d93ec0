"""``kubectl retina capture create | list | delete | download`` (the ``kubectl-retina`` executable).

Works without the operator: ``create`` validates the capture locally, creates Secrets for blob/S3
credentials and the Jobs itself, using the operator's job builder (:mod:`retina_otel.controller.capture`).
Credentials go only into Secrets; they are never printed.
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from retina_otel.controller import kube
from retina_otel.controller.capture import (
    DEFAULT_IMAGE,
    LABEL_CAPTURE,
    LABEL_GENERATED,
    CaptureFailure,
    CaptureSettings,
    capture_labels,
    cleanup_capture,
    create_jobs,
    job_state,
    list_capture_jobs,
    plan_jobs,
)
from retina_otel.controller.kube import ApiError, KubeClient, Obj
from retina_otel.crds.capturejob import (
    BLOB_SECRET_KEY,
    S3_ACCESS_KEY_ID_KEY,
    S3_SECRET_ACCESS_KEY_KEY,
)
from retina_otel.crds.models import DEFAULT_HOST_PATH_BASE, CaptureSpec, SpecError, parse_duration, validate_spec
from retina_otel.kubectl_plugin import shell
from retina_otel.kubectl_plugin.download import capture_file_matcher, download, download_blob, download_s3

__all__ = ["build_capture", "build_parser", "capture_file_matcher", "download_blob", "download_s3", "main"]

DEFAULT_WAIT = 300.0
#: Retina's CLI defaults: capture on Linux nodes into <base>/retina when nothing else is said.
DEFAULT_NODE_SELECTORS = "kubernetes.io/os=linux"
DEFAULT_HOST_PATH = "retina"
#: Seconds finished Jobs are kept with --cleanup-after-upload and --no-wait (Retina's TTL).
CLEANUP_TTL = 300

#: Retina's boolean tcpdump flags: (flag, captureOption field, tcpdump option).
TCPDUMP_SWITCHES = (
    ("--no-resolve-dns", "noResolveDNS", "tcpdump -n"),
    ("--no-resolve-port", "noResolvePort", "tcpdump -nn"),
    ("--print-link-header", "printLinkHeader", "tcpdump -e"),
    ("--quiet-output", "quietOutput", "tcpdump -q"),
    ("--absolute-seq", "absoluteSeq", "tcpdump -S"),
    ("--dont-verify-checksum", "dontVerifyChecksum", "tcpdump -K"),
    ("--no-promiscuous", "noPromiscuous", "tcpdump -p"),
    ("--packet-buffered", "packetBuffered", "tcpdump -U"),
    ("--immediate-mode", "immediateMode", "tcpdump --immediate-mode"),
)


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _selector(text: str | None) -> dict[str, str]:
    """``a=b,c=d`` (Retina also accepts ``a:b``) -> matchLabels."""
    out: dict[str, str] = {}
    for part in _csv(text):
        sep = "=" if "=" in part else ":" if ":" in part else None
        if sep is None:
            raise SpecError(f"selector {part!r} is not key=value")
        key, value = part.split(sep, 1)
        out[key.strip()] = value.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl retina", description="Retina network captures (retina-otel)")
    _connection_options(parser, top=True)
    top = parser.add_subparsers(dest="group", required=True)
    from retina_otel.kubectl_plugin import observe

    obs = top.add_parser("observe", help="live flows of a node's agent (retina-otel observe over port-forward)")
    observe.add_arguments(obs)
    obs.set_defaults(cmd="observe")
    cap = top.add_parser("capture", help="network packet captures").add_subparsers(dest="cmd", required=True)

    c = cap.add_parser("create", help="start a capture on nodes or pods")
    c.add_argument("--name", default=None, help="capture name (default: retina-capture-<random>)")
    c.add_argument("-n", "--namespace", default="default")
    c.add_argument("--duration", default="1m", help="e.g. 30s, 1m, 1h (empty: none)")
    c.add_argument("--max-size", type=int, default=100, help="MB per capture (0: none)")
    c.add_argument("--file-count", type=int, default=0)
    c.add_argument("--packet-size", type=int, default=0)
    c.add_argument("--node-names", default="")
    c.add_argument("--node-selectors", default=None,
                   help=f"node labels (default {DEFAULT_NODE_SELECTORS} when no other target is given, as Retina)")
    c.add_argument("--pod-selectors", default="")
    c.add_argument("--namespace-selectors", default="")
    c.add_argument("--pod-names", default="", help="pods by name: name or namespace/name, comma separated")
    c.add_argument("--host-path", default=DEFAULT_HOST_PATH,
                   help="subdirectory of --host-path-base-dir on the node (Retina's default 'retina'; '' for none)")
    c.add_argument("--host-path-base-dir", default=DEFAULT_HOST_PATH_BASE, help="absolute base directory on the node")
    c.add_argument("--pvc", default="")
    c.add_argument("--blob-upload", default="", help="container SAS URL (stored in a Secret)")
    c.add_argument("--s3-bucket", default="")
    c.add_argument("--s3-region", default="")
    c.add_argument("--s3-endpoint", default="")
    c.add_argument("--s3-path", default="retina/captures")
    c.add_argument("--s3-access-key-id", default="")
    c.add_argument("--s3-secret-access-key", default="")
    c.add_argument("--pcap-filter", default="", help="BPF filter expression (captureOption.pcapFilter)")
    c.add_argument("--tcpdump-filter", default="", help="Retina's deprecated raw filter (tcpdumpFilter); ANDed")
    c.add_argument("--include-filter", default="")
    c.add_argument("--exclude-filter", default="")
    c.add_argument("--interfaces", default="")
    c.add_argument("--source-ips", default="", help="only packets from these IPs/CIDRs (comma separated)")
    c.add_argument("--destination-ips", default="", help="only packets to these IPs/CIDRs (comma separated)")
    # Retina's tcpdump switches (same names; each becomes the captureOption field of Retina's name).
    for flag, field_name, option in TCPDUMP_SWITCHES:
        c.add_argument(flag, dest=field_name, type=_bool, nargs="?", const=True, default=False, help=option)
    c.add_argument("--verbosity", default="", help="verbose, extra or max (tcpdump -v, -vv, -vvv)")
    c.add_argument("--timestamp-format", default="",
                   help="none, unformatted, delta, date or delta-since-first (tcpdump -t ... -ttttt)")
    c.add_argument("--print-data", default="", help="hex, hex-with-link, ascii or ascii-with-link (-x, -xx, -A, -AA)")
    # This project's earlier names, kept as aliases.
    c.add_argument("--no-resolve", dest="noResolvePort", type=_bool, nargs="?", const=True,
                   help="alias of --no-resolve-port")
    c.add_argument("--verbose-dump", dest="verbosity", action="store_const", const="verbose",
                   help="alias of --verbosity verbose")
    c.add_argument("--link-header", dest="printLinkHeader", action="store_true", help="alias of --print-link-header")
    c.add_argument("--quiet-dump", dest="quietOutput", action="store_true", help="alias of --quiet-output")
    c.add_argument("--include-metadata", type=_bool, nargs="?", const=True, default=True)
    c.add_argument("--job-num-limit", type=int, default=0)
    c.add_argument("--cleanup-after-upload", type=_bool, nargs="?", const=True, default=False,
                   help="delete Jobs and generated Secrets once uploaded (needs --blob-upload, --s3-bucket or --pvc)")
    c.add_argument("--debug", type=_bool, nargs="?", const=True, default=False,
                   help="run the Jobs with the image in $RETINA_AGENT_IMAGE (Retina's debug mode)")
    c.add_argument("--no-wait", type=_bool, nargs="?", const=True, default=True,
                   help="return once the Jobs exist (default true, like Retina); --no-wait=false or --wait waits")
    c.add_argument("--wait", dest="no_wait", action="store_false", help="wait for the Jobs and clean them up")
    c.add_argument("--wait-timeout", type=float, default=0.0, help="seconds (default: 2x duration or 5 min)")
    c.add_argument("--poll-interval", type=float, default=5.0)
    c.add_argument("--image", default=os.environ.get("RETINA_CAPTURE_IMAGE", DEFAULT_IMAGE))

    lst = cap.add_parser("list", help="list captures and their jobs")
    lst.add_argument("-n", "--namespace", default="default")
    lst.add_argument("-A", "--all-namespaces", action="store_true")

    d = cap.add_parser("delete", help="delete a capture's jobs, generated secrets and Capture object")
    d.add_argument("--name", required=True)
    d.add_argument("-n", "--namespace", default="default")

    dl = cap.add_parser("download", help="download a capture's tarballs from blob, S3 or a node's hostPath")
    dl.add_argument("--name", default="", help="the capture (or --all / --all-namespaces)")
    dl.add_argument("-n", "--namespace", default="default")
    dl.add_argument("--all", action="store_true", help="every capture in the namespace, each into <output>/<capture>")
    dl.add_argument("-A", "--all-namespaces", action="store_true",
                    help="every capture in every namespace, each into <output>/<namespace>/<capture>")
    dl.add_argument("-o", "--output", default=".", help="directory to write into")
    dl.add_argument("--blob-url", default="", help="SAS URL (default: from the capture's secret)")
    dl.add_argument("--helper-image", default="busybox:1.36", help="image of the hostPath helper pod")
    shell.add_parser(top)
    top.add_parser("version", help="print the plugin's version (Retina's `kubectl retina version`)").set_defaults(
        cmd="version")
    # Retina's commands take the connection flags after the command too (kubectl's ConfigFlags).
    for sub in (obs, c, lst, d, dl, top.choices["shell"]):
        _connection_options(sub)
    return parser


def _connection_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """How to reach the API server. On a command the flags default to SUPPRESS, so a flag given before the
    command stays unless it is given again after it."""
    unset: Any = None if top else argparse.SUPPRESS
    parser.add_argument("--kubeconfig", default=unset)
    parser.add_argument("--context", default=unset)
    parser.add_argument("--api-url", default=os.environ.get("RETINA_API_URL") if top else unset,
                        help="API server URL (tests, proxies)")
    parser.add_argument("--insecure-skip-tls-verify", action="store_true", dest="insecure",
                        default=False if top else unset)


def build_capture(args: argparse.Namespace) -> Obj:
    """The Capture object the flags describe (secret names filled in later); raises SpecError."""
    name = args.name or f"retina-capture-{os.urandom(3).hex()}"
    if not os.path.isabs(args.host_path_base_dir):
        raise SpecError(f"--host-path-base-dir {args.host_path_base_dir!r} must be an absolute directory")
    target: Obj = {}
    node_selectors = args.node_selectors
    if node_selectors is None:  # Retina's default applies only when nothing else is targeted
        other = args.node_names or args.pod_selectors or args.namespace_selectors or args.pod_names
        node_selectors = "" if other else DEFAULT_NODE_SELECTORS
    node_labels = _selector(node_selectors)
    if node_labels or args.node_names:
        target["nodeSelector"] = {"matchLabels": node_labels}
        if args.node_names:
            target["nodeSelector"]["matchExpressions"] = [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": _csv(args.node_names)}
            ]
    if args.pod_selectors:
        target["podSelector"] = {"matchLabels": _selector(args.pod_selectors)}
    if args.namespace_selectors:
        target["namespaceSelector"] = {"matchLabels": _selector(args.namespace_selectors)}
    if args.pod_names:
        target["podNames"] = _csv(args.pod_names)
    # Like Retina's CLI: a switch that is off is left out of the spec.
    option: Obj = {field_name: True for _, field_name, _ in TCPDUMP_SWITCHES if getattr(args, field_name)}
    for key, value in (("verbosity", args.verbosity), ("timestampFormat", args.timestamp_format),
                       ("printDataFormat", args.print_data)):
        if value:
            option[key] = value
    for key, value in (("sourceIPs", args.source_ips), ("destinationIPs", args.destination_ips)):
        if value:
            option[key] = _csv(value)
    if args.duration:
        option["duration"] = args.duration
    for key, value in (("maxCaptureSize", args.max_size), ("packetSize", args.packet_size),
                       ("fileCount", args.file_count)):
        if value:
            option[key] = value
    if args.interfaces:
        option["interfaces"] = _csv(args.interfaces)
    if args.pcap_filter:
        option["pcapFilter"] = args.pcap_filter
    conf: Obj = {"captureTarget": target, "captureOption": option, "includeMetadata": args.include_metadata}
    if args.tcpdump_filter:
        conf["tcpdumpFilter"] = args.tcpdump_filter
    if args.include_filter or args.exclude_filter:
        conf["filters"] = {"include": _csv(args.include_filter), "exclude": _csv(args.exclude_filter)}
    if args.job_num_limit:
        conf["jobNumLimit"] = args.job_num_limit
    output: Obj = {}
    if args.host_path:
        output["hostPath"] = args.host_path
    if args.pvc:
        output["persistentVolumeClaim"] = args.pvc
    if args.blob_upload:
        output["blobUpload"] = "pending"  # replaced by the generated secret's name
    if args.s3_bucket:
        output["s3Upload"] = {k: v for k, v in {
            "bucket": args.s3_bucket, "region": args.s3_region, "endpoint": args.s3_endpoint,
            "path": args.s3_path, "secretName": "pending",
        }.items() if v}
        if not (args.s3_access_key_id and args.s3_secret_access_key):
            raise SpecError("--s3-bucket needs --s3-access-key-id and --s3-secret-access-key")
    spec: Obj = {"captureConfiguration": conf, "outputConfiguration": output}
    if args.cleanup_after_upload:
        spec["cleanUpAfterUpload"] = True
    capture: Obj = {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": name, "namespace": args.namespace},
        "spec": spec,
    }
    validate_spec(CaptureSpec, capture["spec"])
    return capture


def _secret(name: str, namespace: str, capture: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {**capture_labels(capture), LABEL_GENERATED: "true"}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _remove_capture(client: KubeClient, namespace: str, name: str) -> tuple[list[str], list[str]]:
    """The capture's Jobs, then the Secrets this plugin generated for it: they have no Capture to own them
    (the plugin creates Jobs directly), so no garbage collector removes them; the plugin runs with the
    user's credentials, which may delete what the user created."""
    deleted, failed = cleanup_capture(client, namespace, name)
    for secret in client.list(kube.SECRETS, namespace, labels={**capture_labels(name), LABEL_GENERATED: "true"}):
        secret_name = str(secret["metadata"]["name"])
        try:
            client.delete(kube.SECRETS, secret_name, namespace)
            deleted.append(f"secret/{secret_name}")
        except ApiError:
            failed.append(f"secret/{secret_name}")
    return deleted, failed


def _create(client: KubeClient, args: argparse.Namespace) -> int:
    try:
        capture = build_capture(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name, ns = capture["metadata"]["name"], args.namespace
    out = capture["spec"]["outputConfiguration"]
    secrets: list[str] = []
    try:
        if args.blob_upload:
            secret_name = f"{name}-blob-upload"[:253]
            client.create(kube.SECRETS, _secret(secret_name, ns, name, {BLOB_SECRET_KEY: args.blob_upload}), ns)
            secrets.append(secret_name)
            out["blobUpload"] = secret_name
        if args.s3_bucket:
            secret_name = f"{name}-s3-upload"[:253]
            client.create(kube.SECRETS, _secret(secret_name, ns, name, {
                S3_ACCESS_KEY_ID_KEY: args.s3_access_key_id, S3_SECRET_ACCESS_KEY_KEY: args.s3_secret_access_key,
            }), ns)
            secrets.append(secret_name)
            out["s3Upload"]["secretName"] = secret_name
        image = args.image
        if args.debug:
            image = os.environ.get("RETINA_AGENT_IMAGE") or image
            print(f"debug: capture jobs run {image}")
        settings = CaptureSettings(image=image, job_num_limit=args.job_num_limit,
                                   host_path_base=args.host_path_base_dir)
        planned = plan_jobs(client, capture, settings)
        if args.cleanup_after_upload and args.no_wait:
            # Retina's --cleanup-after-upload without waiting: Kubernetes removes finished Jobs after a TTL
            # and, through the owner references set below, the generated Secrets with them.
            for job in planned:
                job["spec"]["ttlSecondsAfterFinished"] = CLEANUP_TTL
        jobs = create_jobs(client, planned)
        if args.cleanup_after_upload and args.no_wait:
            _own_secrets(client, ns, secrets, jobs)
    except (CaptureFailure, ApiError) as exc:
        for secret_name in secrets:
            client.delete(kube.SECRETS, secret_name, ns)
        reason = exc.reason if isinstance(exc, CaptureFailure) else "ApiError"
        print(f"error ({reason}): {exc}", file=sys.stderr)
        return 1
    for job in jobs:
        node = job["spec"]["template"]["spec"]["nodeName"]
        print(f"created job {ns}/{job['metadata']['name']} on node {node}")
    if args.no_wait:
        print(f"capture {name!r} started; see `kubectl retina capture list -n {ns}`, "
              f"remove it with `kubectl retina capture delete --name {name} -n {ns}`")
        return 0
    duration = parse_duration(args.duration) if args.duration else 0.0
    timeout = args.wait_timeout or (2 * duration if duration else DEFAULT_WAIT)
    return _wait(client, ns, name, timeout, args.poll_interval)


def _own_secrets(client: KubeClient, ns: str, secrets: list[str], jobs: list[Obj]) -> None:
    """Make the capture's Jobs own its generated Secrets, so garbage collection removes them together."""
    owners = [{"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"], "uid": j["metadata"]["uid"]}
              for j in jobs if j["metadata"].get("uid")]
    for secret_name in secrets if owners else []:
        client.patch(kube.SECRETS, secret_name, {"metadata": {"ownerReferences": owners}}, ns)


def _wait(client: KubeClient, ns: str, name: str, timeout: float, interval: float) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        jobs = list_capture_jobs(client, ns, name)
        states = [job_state(j) for j in jobs]
        line = (f"capture {name}: {states.count('active')} running, {states.count('succeeded')} completed, "
                f"{states.count('failed')} failed of {len(jobs)}")
        if line != last:
            print(line, flush=True)
            last = line
        if jobs and "active" not in states:
            break
        if time.monotonic() >= deadline:
            print(f"not all jobs finished within {timeout:.0f}s; they are kept. Delete them with "
                  f"`kubectl retina capture delete --name {name} -n {ns}`", file=sys.stderr)
            return 1
        time.sleep(interval)
    if "failed" in states:
        print(f"{states.count('failed')} capture job(s) failed; jobs kept for their logs", file=sys.stderr)
        return 1
    deleted, failed = _remove_capture(client, ns, name)
    print(f"all jobs completed; removed {', '.join(deleted)}")
    if failed:
        print(f"could not remove {', '.join(failed)}; delete them by hand", file=sys.stderr)
    return 0


def _list(client: KubeClient, args: argparse.Namespace) -> int:
    ns = None if args.all_namespaces else args.namespace
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job in list_capture_jobs(client, ns):
        meta = job["metadata"]
        key = (meta.get("namespace", ""), meta["labels"].get(LABEL_CAPTURE, "?"))
        row = rows.setdefault(key, {"active": 0, "succeeded": 0, "failed": 0, "nodes": [], "state": ""})
        row[job_state(job)] += 1
        row["nodes"].append(job["spec"]["template"]["spec"].get("nodeName", "?"))
    try:
        for cap in client.list(kube.CAPTURES, ns):
            meta = cap["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            row = rows.setdefault(key, {"active": 0, "succeeded": 0, "failed": 0, "nodes": [], "state": ""})
            conds = {c["type"]: c for c in (cap.get("status") or {}).get("conditions") or []}
            if conds.get("error", {}).get("status") == "True":
                row["state"] = f"Error: {conds['error'].get('reason')}"
            elif "complete" in conds:
                row["state"] = conds["complete"].get("reason", "")
    except ApiError as exc:
        if not exc.not_found:
            raise
    print(f"{'NAMESPACE':<16} {'CAPTURE':<32} {'ACTIVE':>6} {'SUCCEEDED':>9} {'FAILED':>6}  {'STATE':<20} NODES")
    for (namespace, name), row in sorted(rows.items()):
        state = row["state"] or ("Running" if row["active"] else "Failed" if row["failed"] else "Completed")
        print(f"{namespace:<16} {name:<32} {row['active']:>6} {row['succeeded']:>9} {row['failed']:>6}  "
              f"{state:<20} {','.join(sorted(row['nodes']))}")
    return 0


def _delete(client: KubeClient, args: argparse.Namespace) -> int:
    removed_cr = False
    try:
        removed_cr = client.delete(kube.CAPTURES, args.name, args.namespace)
    except ApiError as exc:
        if not exc.not_found:
            raise
    deleted, failed = _remove_capture(client, args.namespace, args.name)
    if not deleted and not removed_cr:
        print(f"no capture {args.namespace}/{args.name} found", file=sys.stderr)
        return 1
    if removed_cr:
        print(f"deleted capture {args.namespace}/{args.name}")
    for item in deleted:
        print(f"deleted {item}")
    for item in failed:
        print(f"could not delete {item}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "version":
        print(importlib.metadata.version("retina-otel"))
        return 0
    client = KubeClient.from_options(
        api_url=args.api_url, kubeconfig=args.kubeconfig, context=args.context, insecure=args.insecure
    )
    try:
        if args.cmd == "shell":
            return shell.run_shell(client, args)
        if args.cmd == "observe":
            from retina_otel.kubectl_plugin import observe

            return observe.run(client, args)
        handler = {"create": _create, "list": _list, "delete": _delete, "download": download}[args.cmd]
        return handler(client, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

