"""Configuration of the k8sattributes processor (and of the cache it builds when none is shared)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from retina_otel.component import ComponentConfig

__all__ = ["DEFAULT_POD_LABELS", "K8sAttributesConfig"]

DEFAULT_POD_LABELS = ("app", "app.kubernetes.io/name", "app.kubernetes.io/component", "k8s-app", "version")


class K8sAttributesConfig(ComponentConfig):
    source: Literal["kubernetes", "file"] = Field(
        "kubernetes",
        description="Where metadata comes from: the API server (watch) or a YAML file. Default kubernetes.",
    )
    file_path: str = Field("", description="YAML endpoints file when source is file (see docs). Default none.")
    file_poll_interval: float = Field(1.0, gt=0, description="Seconds between checks of the file's mtime. Default 1.")
    api_url: str = Field(
        "", description="API server URL (development, tests). Default: the kubeconfig if there is one, else in-cluster."
    )
    kubeconfig: str = Field("", description="Path of a kubeconfig file. Default $KUBECONFIG, else ~/.kube/config.")
    context: str = Field("", description="kubeconfig context. Default the current one.")
    insecure_skip_tls_verify: bool = Field(False, description="Skip TLS verification with api_url. Default false.")
    node_name: str = Field("", description="This agent's node. Default the host's node name (NODE_NAME).")
    remote_context: bool = Field(
        False,
        description="Watch every pod of the cluster (remote context) instead of only this node's. Default false.",
    )
    use_retina_endpoints: bool = Field(
        False,
        description="In remote context, watch RetinaEndpoints (retina.sh/v1alpha1) instead of Pods. Default false.",
    )
    watch_services: bool = Field(True, description="Watch Services (IP -> service, pod -> service). Default true.")
    watch_nodes: bool = Field(True, description="Watch Nodes (IP -> node, node -> zone). Default true.")
    watch_namespaces: bool = Field(True, description="Watch Namespaces (opt-in annotation). Default true.")
    pod_labels: tuple[str, ...] = Field(
        DEFAULT_POD_LABELS,
        description="Pod label keys copied as k8s.pod.label.<key> (allow-list). Default: common app labels.",
    )
    grace_period: float = Field(
        60.0, ge=0, description="Seconds a deleted pod (and its IP claim) stays resolvable for late flows. Default 60."
    )
    ip_history: int = Field(4, ge=1, le=64, description="Pod claims remembered per IP (IP reuse). Default 4.")
    wait_for_sync: bool = Field(
        True, description="Report STARTING until the first full list of every watched kind. Default true."
    )
    sync_timeout: float = Field(
        60.0, gt=0, description="Seconds before an unsynced cache is reported FAILED (it keeps trying). Default 60."
    )
    enable_annotations: bool = Field(
        False,
        description="Observe only pods opted in by annotation retina.sh=observe (pod or namespace). Default false.",
    )
    namespaces_include: tuple[str, ...] = Field((), description="Observe only these namespaces. Default all.")
    namespaces_exclude: tuple[str, ...] = Field((), description="Never observe these namespaces. Default none.")
    watch_timeout: int = Field(300, gt=0, description="Server-side watch timeout, seconds. Default 300.")
    backoff_base: float = Field(0.5, gt=0, description="First retry delay after an API error, seconds. Default 0.5.")
    backoff_max: float = Field(30.0, gt=0, description="Largest retry delay, seconds. Default 30.")

    @model_validator(mode="after")
    def _check(self) -> K8sAttributesConfig:
        if self.source == "file" and not self.file_path:
            raise ValueError("source: file needs file_path")
        if self.namespaces_include and self.namespaces_exclude:
            raise ValueError("namespaces_include and namespaces_exclude are exclusive")
        return self
