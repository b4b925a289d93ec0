"""A small synchronous Kubernetes REST client that speaks plain dicts.

It rides on the ``kubernetes`` package for configuration, authentication and TLS (kubeconfig,
in-cluster, or an explicit URL), but sends and returns raw JSON, so objects are not forced through
the client's generated models (which reject partial objects and know nothing about our CRDs).

Label selectors are sent to the server *and* applied here: some servers (and test emulators)
ignore them, and filtering twice costs nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from retina_otel import kubeclient

__all__ = ["ApiError", "KubeClient", "Obj", "Resource", "labels_match", "object_meta"]

Obj = dict[str, Any]


class ApiError(Exception):
    """A failed API call: ``status`` is the HTTP code, ``reason`` the server's short reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class Resource:
    """A resource kind's URL parts."""

    def __init__(self, group: str, version: str, plural: str, namespaced: bool) -> None:
        self.group, self.version, self.plural, self.namespaced = group, version, plural, namespaced

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if sub:
                base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods", True)
NODES = Resource("", "v1", "nodes", False)
NAMESPACES = Resource("", "v1", "namespaces", False)
SECRETS = Resource("", "v1", "secrets", True)
EVENTS = Resource("", "v1", "events", True)
JOBS = Resource("batch", "v1", "jobs", True)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False)
CAPTURES = Resource("retina.sh", "v1alpha1", "captures", True)
METRICS_CONFIGS = Resource("retina.sh", "v1alpha1", "metricsconfigurations", False)
TRACES_CONFIGS = Resource("retina.sh", "v1alpha1", "tracesconfigurations", False)
RETINA_ENDPOINTS = Resource("retina.sh", "v1alpha1", "retinaendpoints", True)


def object_meta(obj: Obj) -> dict[str, Any]:
    """An object's ``metadata`` (empty when it has none)."""
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def labels_match(labels: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in wanted.items())


class KubeClient:
    """Plain-dict CRUD over the Kubernetes API."""

    def __init__(self, api_client: k8s_client.ApiClient, timeout: float = 30.0) -> None:
        self._api = api_client
        self._timeout = timeout

    @classmethod
    def from_options(
        cls,
        *,
        api_url: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        insecure: bool = False,
        token: str | None = None,
    ) -> KubeClient:
        """Explicit URL, else kubeconfig (``--kubeconfig`` / ``$KUBECONFIG``), else in-cluster."""
        return cls(
            kubeclient.api_client(
                api_url=api_url, kubeconfig=kubeconfig, context=context, insecure=insecure, token=token
            )
        )

    @property
    def api_client(self) -> k8s_client.ApiClient:
        """The ``kubernetes`` client underneath (for calls this class does not wrap, e.g. exec)."""
        return self._api

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # -- transport ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        full = path + (("?" + urlencode(query)) if query else "")
        _, url, headers, _, _ = self._api.param_serialize(
            method, full, header_params=headers, auth_settings=["BearerToken"]
        )
        try:  # the REST layer JSON-encodes dict bodies for every application/*json content type
            resp = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=self._timeout)
            resp.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _api_error(exc.status or 0, exc.reason or "", exc.body) from None
        status = int(resp.status)
        data = resp.data
        if status >= 400:
            raise _api_error(status, str(resp.reason or ""), data)
        if not data:
            return None
        return json.loads(data)

    # -- CRUD --------------------------------------------------------------------------------------

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        out: Obj = self.request("GET", res.path(namespace, name))
        return out

    def get_or_none(self, res: Resource, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return self.get(res, name, namespace)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list(self, res: Resource, namespace: str | None = None, labels: dict[str, str] | None = None) -> list[Obj]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        data = self.request("GET", res.path(namespace), query=query) or {}
        items: list[Obj] = list(data.get("items") or [])
        if namespace is not None and res.namespaced:
            items = [o for o in items if (o.get("metadata") or {}).get("namespace") in (namespace, None)]
        if labels:
            items = [o for o in items if labels_match((o.get("metadata") or {}).get("labels"), labels)]
        return items

    def create(self, res: Resource, body: Obj, namespace: str | None = None) -> Obj:
        body = dict(body)
        body.setdefault("apiVersion", res.api_version)
        out: Obj = self.request("POST", res.path(namespace), body=body)
        return out

    def patch(self, res: Resource, name: str, patch: Obj, namespace: str | None = None, sub: str | None = None) -> Obj:
        out: Obj = self.request(
            "PATCH", res.path(namespace, name, sub), body=patch, content_type="application/merge-patch+json"
        )
        return out

    def patch_status(self, res: Resource, name: str, status: Obj, namespace: str | None = None) -> Obj:
        return self.patch(res, name, {"status": status}, namespace, sub="status")

    def delete(self, res: Resource, name: str, namespace: str | None = None, *, missing_ok: bool = True) -> bool:
        """Delete with background propagation; ``False`` when it was already gone."""
        try:
            self.request(
                "DELETE",
                res.path(namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.not_found and missing_ok:
                return False
            raise
        return True


def _api_error(status: int, reason: str, body: Any) -> ApiError:
    message = ""
    if body:
        try:
            data = json.loads(body)
            message = str(data.get("message") or "")
            reason = str(data.get("reason") or reason)
        except (ValueError, AttributeError, TypeError):
            message = str(body)[:300]
    return ApiError(status, reason, message)
