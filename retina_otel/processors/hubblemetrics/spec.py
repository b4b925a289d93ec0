"""Hubble's metric options, parsed as Hubble parses them.

A metric is written as Cilium's Helm value ``hubble.metrics.enabled`` writes it (and as Retina's chart
sets it): ``<handler>[:<option>[=<value>][;<option>...]]``, e.g.
``flow:sourceEgressContext=pod;destinationIngressContext=pod`` or ``dns:query;ignoreAAAA``.

Context options (Hubble's ``pkg/hubble/metrics/api/context.go``):

* ``sourceContext`` / ``destinationContext``: identifiers separated by ``|``, the first non-empty
  value wins; the series get a ``source`` / ``destination`` label.
* ``sourceEgressContext``, ``sourceIngressContext``, ``destinationEgressContext``,
  ``destinationIngressContext``: the same for flows of that traffic direction only (they override the
  direction-less option for those flows). Any of the three makes the ``source`` (or ``destination``)
  label; a flow no option applies to gets an empty value.
* ``labelsContext``: a comma-separated subset of :data:`CONTEXT_LABELS`, each its own label, always in
  Hubble's order.

Option names are case-insensitive, as in Hubble. Errors are :class:`SpecError` with the offending text.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONTEXT_LABELS",
    "HANDLERS",
    "IDENTIFIERS",
    "ContextOptions",
    "MetricSpec",
    "SpecError",
    "parse_metric",
]

HANDLERS = ("flow", "tcp", "drop", "dns", "icmp", "port-distribution")
"""Hubble handlers this agent implements (Hubble's names)."""

IDENTIFIERS = (
    "identity",
    "namespace",
    "pod",
    "pod-short",
    "pod-name",
    "dns",
    "ip",
    "reserved-identity",
    "workload-name",
    "app",
)
"""Hubble's context identifiers (``sourceContext=pod|ip``)."""

CONTEXT_LABELS = (
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_app",
    "traffic_direction",
)
"""``labelsContext`` values, in the order Hubble emits them."""

_CONTEXT_KEYS = {
    "sourcecontext": ("source", ""),
    "sourceegresscontext": ("source", "egress"),
    "sourceingresscontext": ("source", "ingress"),
    "destinationcontext": ("destination", ""),
    "destinationegresscontext": ("destination", "egress"),
    "destinationingresscontext": ("destination", "ingress"),
}
_HANDLER_FLAGS = {"dns": {"query": "query", "ignoreaaaa": "ignoreAAAA"}}  # lower-case -> Hubble's spelling
_CONTEXT_OPTION_NAMES = (
    "sourceContext",
    "sourceEgressContext",
    "sourceIngressContext",
    "destinationContext",
    "destinationEgressContext",
    "destinationIngressContext",
    "labelsContext",
)


class SpecError(ValueError):
    """A metric option Hubble would reject."""


@dataclass(frozen=True, slots=True)
class ContextOptions:
    """Parsed context options; each identifier list is a fallback chain (empty: option not set)."""

    source: tuple[str, ...] = ()
    source_egress: tuple[str, ...] = ()
    source_ingress: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    destination_egress: tuple[str, ...] = ()
    destination_ingress: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # in CONTEXT_LABELS order

    @property
    def has_source(self) -> bool:
        return bool(self.source or self.source_egress or self.source_ingress)

    @property
    def has_destination(self) -> bool:
        return bool(self.destination or self.destination_egress or self.destination_ingress)

    @property
    def by_direction(self) -> bool:
        """Whether the label values depend on the flow's traffic direction."""
        return bool(
            self.source_egress
            or self.source_ingress
            or self.destination_egress
            or self.destination_ingress
            or "traffic_direction" in self.labels
        )

    def label_names(self) -> tuple[str, ...]:
        """Hubble's order: labelsContext labels, then ``source``, then ``destination``."""
        names = list(self.labels)
        if self.has_source:
            names.append("source")
        if self.has_destination:
            names.append("destination")
        return tuple(names)

    def chain(self, side: str, direction: str) -> tuple[str, ...]:
        """The identifiers that apply to a flow of ``direction`` ("egress", "ingress", other) on ``side``."""
        if side == "source":
            specific = {"egress": self.source_egress, "ingress": self.source_ingress}.get(direction, ())
            return specific or self.source
        specific = {"egress": self.destination_egress, "ingress": self.destination_ingress}.get(direction, ())
        return specific or self.destination

    def identifiers(self) -> set[str]:
        return {
            *self.source,
            *self.source_egress,
            *self.source_ingress,
            *self.destination,
            *self.destination_egress,
            *self.destination_ingress,
        }


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One enabled Hubble handler with its options (``text`` is what the user wrote)."""

    handler: str
    context: ContextOptions
    flags: frozenset[str] = frozenset()  # handler switches, lower-case: dns "query", "ignoreaaaa"
    text: str = ""


def _chain(key: str, value: str) -> tuple[str, ...]:
    if not value:
        raise SpecError(f"{key} needs a value: identifiers separated by '|' ({', '.join(IDENTIFIERS)})")
    chain = []
    for part in value.split("|"):
        ident = part.strip().lower()
        if ident not in IDENTIFIERS:
            raise SpecError(f"unknown context {part!r} in {key}; valid: {', '.join(IDENTIFIERS)}")
        chain.append(ident)
    return tuple(chain)


def _labels(value: str) -> tuple[str, ...]:
    wanted = [v.strip() for v in value.split(",")]
    for label in wanted:
        if label not in CONTEXT_LABELS:
            raise SpecError(f"invalid labelsContext value {label!r}; valid: {', '.join(CONTEXT_LABELS)}")
    return tuple(label for label in CONTEXT_LABELS if label in wanted)


def parse_metric(text: str) -> MetricSpec:
    """``flow:sourceContext=pod|ip;labelsContext=traffic_direction`` -> :class:`MetricSpec`."""
    handler, _, rest = text.strip().partition(":")
    handler = handler.strip()
    if handler not in HANDLERS:
        raise SpecError(f"unknown Hubble metric {handler!r}; this agent has: {', '.join(HANDLERS)}")
    contexts: dict[tuple[str, str], tuple[str, ...]] = {}
    labels: tuple[str, ...] = ()
    flags: set[str] = set()
    allowed_flags = _HANDLER_FLAGS.get(handler, {})
    for option in filter(None, (o.strip() for o in rest.split(";"))):
        key, _, value = option.partition("=")
        lower = key.strip().lower()
        if lower in _CONTEXT_KEYS:
            contexts[_CONTEXT_KEYS[lower]] = _chain(key.strip(), value.strip())
        elif lower == "labelscontext":
            labels = _labels(value)
        elif lower in allowed_flags:
            flags.add(lower)
        else:
            valid = [*_CONTEXT_OPTION_NAMES, *allowed_flags.values()]
            raise SpecError(f"unknown option {key.strip()!r} for {handler}; valid: {', '.join(valid)}")
    context = ContextOptions(
        source=contexts.get(("source", ""), ()),
        source_egress=contexts.get(("source", "egress"), ()),
        source_ingress=contexts.get(("source", "ingress"), ()),
        destination=contexts.get(("destination", ""), ()),
        destination_egress=contexts.get(("destination", "egress"), ()),
        destination_ingress=contexts.get(("destination", "ingress"), ()),
        labels=labels,
    )
    return MetricSpec(handler, context, frozenset(flags), text.strip())
