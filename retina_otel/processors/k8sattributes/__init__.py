"""k8sattributes: Kubernetes metadata of both endpoints of every flow (see docs/processors/k8sattributes.md).

The processor builds, starts and stops its own cache from its config (or uses a :class:`K8sCache` given
to its constructor, whose lifecycle the caller owns) and offers itself as the ``k8s_cache`` extension;
the same processor id in a second pipeline shares the first one's cache. It keeps the ``ip_filter``
extension (a :class:`retina_otel.k8s.IpFilter`) in sync with the observed pods' addresses.
"""

from __future__ import annotations

from retina_otel.component import CreateSettings, Factory, FlowConsumer, Lifecycle
from retina_otel.extension_keys import K8S_CACHE
from retina_otel.processors.k8sattributes.config import DEFAULT_POD_LABELS, K8sAttributesConfig
from retina_otel.processors.k8sattributes.processor import K8sAttributesProcessor, LookupTable

__all__ = ["DEFAULT_POD_LABELS", "FACTORY", "K8sAttributesConfig", "K8sAttributesProcessor", "LookupTable"]


def _create(settings: CreateSettings, config: K8sAttributesConfig, next_consumer: FlowConsumer | None) -> Lifecycle:
    return K8sAttributesProcessor(settings, config, next_consumer)


FACTORY: Factory[K8sAttributesConfig] = Factory(
    type="k8sattributes",
    kind="processor",
    config_model=K8sAttributesConfig,
    create=_create,
    description="Kubernetes metadata (pod, workload, service, node, zone) on both ends of every flow",
    mutates_data=True,
    provides=(K8S_CACHE,),
    sums_flows=True,
)
