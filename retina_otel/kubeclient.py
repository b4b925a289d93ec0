"""One way to build a ``kubernetes.client.ApiClient`` for the agent, the operator and the kubectl plugin.

Where the connection comes from, first match wins:

1. ``api_url``: that server, with ``token`` as a bearer token and TLS verification unless ``insecure``;
2. ``kubeconfig``: that file (and ``context``); its errors are raised;
3. the default kubeconfig (``$KUBECONFIG``, else ``~/.kube/config``) when there is one, else the
   in-cluster service account (what a pod uses).

``kubernetes`` is imported on call: the component registry and the pipeline core must not import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["api_client"]


def api_client(
    *,
    api_url: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    insecure: bool = False,
    token: str | None = None,
    pool_maxsize: int | None = None,
) -> Any:
    """A ``kubernetes.client.ApiClient`` (see the module docstring for the order).

    ``pool_maxsize`` caps the client's connection pool (a watch holds one connection while it runs).
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url.rstrip("/")
        configuration.verify_ssl = not insecure
        if token:
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
    else:
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or None, context=context or None, client_configuration=configuration
            )
        except (config.ConfigException, FileNotFoundError, TypeError):
            if kubeconfig:
                raise
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    if pool_maxsize is not None:
        configuration.connection_pool_maxsize = pool_maxsize
    return client.ApiClient(configuration)
