"""Running the operator: ``run_operator()`` and the ``retina-otel operator`` argument wiring."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading

import kopf

from retina_otel.controller.capture import DEFAULT_IMAGE, CaptureSettings
from retina_otel.controller.handlers import FINALIZER, OperatorConfig, build_registry
from retina_otel.controller.kube import KubeClient
from retina_otel.controller.metrics import OperatorMetrics
from retina_otel.controller.peering import (
    DEFAULT_LIFETIME,
    ensure_peering,
    install_peering_crds,
    random_priority,
)
from retina_otel.crds.models import DEFAULT_HOST_PATH_BASE

__all__ = ["add_operator_arguments", "main_operator", "run_operator"]


def _kopf_settings(consistency_timeout: float, peering_lifetime: int = DEFAULT_LIFETIME) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = peering_lifetime
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="retina.sh")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="retina.sh", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 1.0
    settings.execution.max_workers = 16
    settings.persistence.consistency_timeout = consistency_timeout
    return settings


def run_operator(
    *,
    namespace: str | None,
    install_crds: bool,
    api_url: str | None,
    kubeconfig: str | None = None,
    insecure: bool = False,
    token: str | None = None,
    job_num_limit: int = 0,
    capture_image: str = DEFAULT_IMAGE,
    host_path_base: str = DEFAULT_HOST_PATH_BASE,
    retina_endpoints: bool = False,
    resync_interval: float = 30.0,
    consistency_timeout: float = 5.0,
    liveness_endpoint: str | None = None,
    metrics_endpoint: str | None = None,
    peering_name: str | None = None,
    priority: int | None = None,
    peering_lifetime: int = DEFAULT_LIFETIME,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """Run the kopf operator until ``stop_flag`` is set (or SIGINT/SIGTERM in the main thread).

    ``namespace=None`` watches the whole cluster. ``api_url`` points at an API server directly
    (tests, ``kubectl proxy``); without it the kubeconfig or in-cluster credentials are used.
    Runs its own event loop, so it may be called from any thread. ``consistency_timeout`` is how
    long kopf waits for its own patch to come back on the watch; test emulators that never change
    ``resourceVersion`` want it small.

    ``peering_name=None`` runs standalone (one replica only). With a name, replicas coordinate
    through that kopf peering object (``ClusterKopfPeering``, or ``KopfPeering`` in ``namespace``;
    created here when missing): only the live replica with the highest ``priority`` (random when
    ``None``) handles events, the others pause. See :mod:`retina_otel.controller.peering`.

    ``metrics_endpoint`` (``host:port``) serves the operator's own metrics
    (:mod:`retina_otel.controller.metrics`) at ``/metrics``.
    """
    client = KubeClient.from_options(api_url=api_url, kubeconfig=kubeconfig, insecure=insecure, token=token)
    if kubeconfig and not api_url:
        os.environ.setdefault("KUBECONFIG", kubeconfig)  # for kopf's login_via_client
    cfg = OperatorConfig(
        settings=CaptureSettings(image=capture_image, host_path_base=host_path_base, job_num_limit=job_num_limit),
        install_crds=install_crds,
        retina_endpoints=retina_endpoints,
        resync_interval=resync_interval,
        api_url=api_url,
        insecure=insecure,
        token=token,
    )
    if peering_name:
        if install_crds:
            for line in install_peering_crds(client):
                logging.getLogger(__name__).info("CRD %s", line)
        ensure_peering(client, peering_name, namespace)
        if priority is None:
            priority = random_priority()
        logging.getLogger(__name__).info(
            "leader election: kopf peering %r, priority %d", peering_name, priority)
    metrics = OperatorMetrics()
    if metrics_endpoint:
        metrics.serve(metrics_endpoint)
    registry = build_registry(cfg, client, metrics)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            kopf.operator(
                registry=registry,
                settings=_kopf_settings(consistency_timeout, peering_lifetime),
                standalone=not peering_name,
                peering_name=peering_name or None,
                priority=priority if peering_name else None,
                clusterwide=namespace is None,
                namespaces=[namespace] if namespace else (),
                stop_flag=stop_flag,
                ready_flag=ready_flag,
                liveness_endpoint=liveness_endpoint,
            )
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        client.close()
        metrics.close()


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``retina-otel operator`` (environment variables give the defaults)."""
    env = os.environ.get
    parser.add_argument("--namespace", default=env("RETINA_OPERATOR_NAMESPACE"),
                        help="watch only this namespace (default: the whole cluster)")
    parser.add_argument("--install-crds", action=argparse.BooleanOptionalAction,
                        default=env("RETINA_INSTALL_CRDS", "false").lower() == "true",
                        help="create or update the retina.sh CRDs on start")
    parser.add_argument("--api-url", default=env("RETINA_API_URL"),
                        help="API server URL (default: kubeconfig or in-cluster config)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file")
    parser.add_argument("--insecure-skip-tls-verify", action="store_true", dest="insecure")
    parser.add_argument("--job-num-limit", type=int, default=int(env("RETINA_CAPTURE_JOB_NUM_LIMIT", "0")),
                        help="most Jobs one Capture may create (0: no limit)")
    parser.add_argument("--capture-image", default=env("RETINA_CAPTURE_IMAGE", DEFAULT_IMAGE),
                        help="image the capture Jobs run")
    parser.add_argument("--host-path-base", default=env("RETINA_CAPTURE_HOST_PATH_BASE", DEFAULT_HOST_PATH_BASE),
                        help="node directory under which a Capture's relative hostPath lands")
    parser.add_argument("--retina-endpoints", action=argparse.BooleanOptionalAction,
                        default=env("RETINA_ENDPOINTS", "false").lower() == "true",
                        help="maintain a RetinaEndpoint per pod (for agents in remote context)")
    parser.add_argument("--resync-interval", type=float, default=30.0,
                        help="seconds between Capture status resyncs (0 disables the timer)")
    parser.add_argument("--liveness-endpoint", default=env("RETINA_OPERATOR_LIVENESS"),
                        help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--metrics-endpoint", default=env("RETINA_OPERATOR_METRICS"),
                        help="host:port serving the operator's own metrics at /metrics, e.g. 0.0.0.0:10095 "
                             "(default: off; env RETINA_OPERATOR_METRICS)")
    election = parser.add_mutually_exclusive_group()
    election.add_argument("--peering", metavar="NAME", default=env("RETINA_OPERATOR_PEERING") or None,
                          help="leader election through this kopf peering object (several replicas; "
                               "env RETINA_OPERATOR_PEERING)")
    election.add_argument("--standalone", dest="peering", action="store_const", const=None,
                          help="no leader election: exactly one replica may run (the default)")
    parser.add_argument("--priority", type=int, default=_env_int("RETINA_OPERATOR_PRIORITY"),
                        help="peering priority; the highest live one handles events (default: random, "
                             "replicas of equal priority would all pause)")
    parser.add_argument("--peering-lifetime", type=int,
                        default=_env_int("RETINA_OPERATOR_PEERING_LIFETIME") or DEFAULT_LIFETIME,
                        help="seconds a replica's keep-alive is valid; a crashed leader is replaced "
                             "after at most this long")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def main_operator(args: argparse.Namespace) -> int:
    """Entry for ``retina-otel operator`` after ``add_operator_arguments``; returns an exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_operator(
        namespace=args.namespace,
        install_crds=args.install_crds,
        api_url=args.api_url,
        kubeconfig=args.kubeconfig,
        insecure=args.insecure,
        job_num_limit=args.job_num_limit,
        capture_image=args.capture_image,
        host_path_base=args.host_path_base,
        retina_endpoints=args.retina_endpoints,
        resync_interval=args.resync_interval,
        liveness_endpoint=args.liveness_endpoint,
        metrics_endpoint=args.metrics_endpoint,
        peering_name=args.peering,
        priority=args.priority,
        peering_lifetime=args.peering_lifetime,
    )
    return 0
