"""The retina.sh/v1alpha1 CustomResourceDefinitions as data: the one source for operator, chart, tests.

Schemas are structural (every node has a ``type``; no ``additionalProperties`` next to
``properties``) and carry the checks an API server can make on admission: required fields, enums,
patterns, bounds and CEL rules (``x-kubernetes-validations``) for the one-of constraints. The
operator repeats every check with :mod:`retina_otel.crds.models` so objects that bypassed admission
still get a clear status message.
"""

from __future__ import annotations

import copy
from typing import Any

from retina_otel.crds.models import ADVANCED_METRICS, DURATION_PATTERN, NAME_PATTERN

__all__ = ["CRDS", "GROUP", "KINDS", "VERSION", "crd", "crd_names"]

GROUP = "retina.sh"
VERSION = "v1alpha1"

Schema = dict[str, Any]


def _str(**kw: Any) -> Schema:
    return {"type": "string", **kw}


def _int(**kw: Any) -> Schema:
    return {"type": "integer", **kw}


def _bool(**kw: Any) -> Schema:
    return {"type": "boolean", **kw}


def _arr(items: Schema, **kw: Any) -> Schema:
    return {"type": "array", "items": items, **kw}


def _obj(props: dict[str, Schema], **kw: Any) -> Schema:
    """An object schema; ``required=[...]`` and any other keyword become schema keys."""
    out: Schema = {"type": "object", "properties": props}
    required = kw.pop("required", None)
    if required:
        out["required"] = required
    out.update(kw)
    return out


def _map_of_str(**kw: Any) -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}, **kw}


def label_selector(description: str) -> Schema:
    return _obj(
        {
            "matchLabels": _map_of_str(),
            "matchExpressions": _arr(
                _obj(
                    {
                        "key": _str(minLength=1),
                        "operator": _str(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
                        "values": _arr(_str()),
                    },
                    required=["key", "operator"],
                )
            ),
        },
        description=description,
        **{"x-kubernetes-map-type": "atomic"},
    )


# A filter entry: IP, IP:port, *:port, IP:*, port, [v6]:port. Exact parsing is in models.py.
_FILTER_ENTRY = _str(pattern=r"^(\*|[0-9A-Fa-f.:]+|\[[0-9A-Fa-f:.]+\])(:(\*|[0-9]{1,5}))?$", maxLength=64)
_IP_OR_CIDR = _str(pattern=r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$", maxLength=64)
_CONDITION = _obj(
    {
        "type": _str(maxLength=316),
        "status": _str(enum=["True", "False", "Unknown"]),
        "observedGeneration": _int(format="int64", minimum=0),
        "lastTransitionTime": _str(format="date-time"),
        "reason": _str(maxLength=1024),
        "message": _str(maxLength=32768),
    },
    required=["type", "status", "lastTransitionTime", "reason", "message"],
)

CAPTURE_SPEC: Schema = _obj(
    {
        "captureConfiguration": _obj(
            {
                "captureTarget": _obj(
                    {
                        "nodeSelector": label_selector("Nodes to capture on; not combinable with pod targets."),
                        "podSelector": label_selector("Pods whose nodes are captured on, with their IPs."),
                        "namespaceSelector": label_selector(
                            "Namespaces for podSelector (default: the Capture's namespace)."
                        ),
                        "podNames": _arr(
                            _str(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
                            minItems=1,
                            description="Pods by name: 'name' (Capture's namespace) or 'namespace/name'.",
                        ),
                    },
                    **{
                        "x-kubernetes-validations": [
                            {
                                "rule": "[has(self.nodeSelector), has(self.podSelector), has(self.podNames)]"
                                ".filter(x, x).size() == 1",
                                "message": "captureTarget needs exactly one of nodeSelector, podSelector or podNames",
                            },
                            {
                                "rule": "!has(self.namespaceSelector) || has(self.podSelector)",
                                "message": "namespaceSelector is only valid together with podSelector",
                            },
                        ]
                    },
                ),
                "filters": _obj(
                    {
                        "include": _arr(_FILTER_ENTRY, maxItems=256),
                        "exclude": _arr(_FILTER_ENTRY, maxItems=256),
                    },
                    description="Translated to (include1 or include2) and not (exclude1 or exclude2).",
                ),
                "tcpdumpFilter": _str(maxLength=4096, description="Retina's raw filter; ANDed with pcapFilter."),
                "includeMetadata": _bool(default=True),
                "jobNumLimit": _int(minimum=0, description="Most Jobs this Capture may create; 0: no limit."),
                "captureOption": _obj(
                    {
                        "duration": _str(pattern=DURATION_PATTERN, description="e.g. 30s, 1m, 1h30m"),
                        "maxCaptureSize": _int(minimum=1, maximum=100000, default=100, description="MB"),
                        "packetSize": _int(minimum=1, maximum=262144, description="Snap length in bytes"),
                        "fileCount": _int(minimum=1, maximum=1000, description="Rotate over this many files"),
                        "interfaces": _arr(_str(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$"), maxItems=64),
                        "pcapFilter": _str(maxLength=4096),
                        "sourceIPs": _arr(_IP_OR_CIDR, maxItems=256),
                        "destinationIPs": _arr(_IP_OR_CIDR, maxItems=256),
                        # Retina's tcpdump switches (the same names, meanings and enum values).
                        "noResolveDNS": _bool(description="tcpdump -n"),
                        "noResolvePort": _bool(description="tcpdump -nn"),
                        "printLinkHeader": _bool(description="tcpdump -e"),
                        "quietOutput": _bool(description="tcpdump -q"),
                        "absoluteSeq": _bool(description="tcpdump -S"),
                        "dontVerifyChecksum": _bool(description="tcpdump -K"),
                        "noPromiscuous": _bool(description="tcpdump -p"),
                        "packetBuffered": _bool(description="tcpdump -U (always on here)"),
                        "immediateMode": _bool(description="tcpdump --immediate-mode (always on here)"),
                        "verbosity": _str(enum=["", "verbose", "extra", "max"], description="-v, -vv, -vvv"),
                        "timestampFormat": _str(
                            enum=["", "none", "unformatted", "delta", "date", "delta-since-first"],
                            description="-t, -tt, -ttt, -tttt, -ttttt",
                        ),
                        "printDataFormat": _str(
                            enum=["", "hex", "hex-with-link", "ascii", "ascii-with-link"],
                            description="-x, -xx, -A, -AA",
                        ),
                        "tcpdump": _obj(
                            {
                                "noNameResolution": _bool(description="alias of noResolvePort"),
                                "verbose": _bool(description="alias of verbosity: verbose"),
                                "linkLevelHeader": _bool(description="alias of printLinkHeader"),
                                "absoluteSequenceNumbers": _bool(description="alias of absoluteSeq"),
                                "quiet": _bool(description="alias of quietOutput"),
                            },
                            description="This project's earlier names for Retina's switches; Retina's fields win.",
                        ),
                    },
                ),
            },
            required=["captureTarget"],
        ),
        "cleanUpAfterUpload": _bool(
            default=False,
            description="Once every Job succeeded, delete the Capture, its Jobs and generated Secrets "
            "(needs blobUpload, s3Upload or persistentVolumeClaim).",
        ),
        "outputConfiguration": _obj(
            {
                "hostPath": _str(
                    # Absolute paths pass admission (as in Retina) and are refused by the operator with a
                    # status condition that says what to write instead.
                    pattern=r"^[A-Za-z0-9._/-]+$",
                    maxLength=255,
                    description="Subdirectory of the operator's base directory (default /var/log/retina/captures).",
                    **{
                        "x-kubernetes-validations": [
                            {
                                "rule": "!self.split('/').exists(s, s == '..')",
                                "message": "hostPath must not contain '..'",
                            }
                        ]
                    },
                ),
                "persistentVolumeClaim": _str(pattern=NAME_PATTERN, maxLength=253),
                "blobUpload": _str(
                    pattern=NAME_PATTERN, maxLength=253, description="Secret with key blob-upload-url (SAS URL)."
                ),
                "s3Upload": _obj(
                    {
                        "endpoint": _str(pattern=r"^https?://\S+$"),
                        "bucket": _str(minLength=3, maxLength=63),
                        "secretName": _str(
                            pattern=NAME_PATTERN,
                            description="Secret with keys s3-access-key-id and s3-secret-access-key.",
                        ),
                        "region": _str(),
                        "path": _str(maxLength=1024),
                    },
                    required=["bucket", "secretName"],
                ),
            },
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "has(self.hostPath) || has(self.persistentVolumeClaim) || has(self.blobUpload) "
                        "|| has(self.s3Upload)",
                        "message": "outputConfiguration needs at least one of hostPath, persistentVolumeClaim, "
                        "blobUpload, s3Upload",
                    }
                ]
            },
        ),
    },
    required=["captureConfiguration", "outputConfiguration"],
)

CAPTURE_STATUS: Schema = _obj(
    {
        "conditions": _arr(_CONDITION, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
        "startTime": _str(format="date-time"),
        "completionTime": _str(format="date-time"),
        "active": _int(format="int32"),
        "succeeded": _int(format="int32"),
        "failed": _int(format="int32"),
        "jobs": _arr(_obj({"name": _str(), "node": _str(), "state": _str()}), description="Per-node Jobs."),
    }
)

_STATE = _str(enum=["Initialized", "Accepted", "Errored", "Warning"], default="Initialized")

METRICS_SPEC: Schema = _obj(
    {
        "contextOptions": _arr(
            _obj(
                {
                    "metricName": _str(enum=list(ADVANCED_METRICS)),
                    "sourceLabels": _arr(_str(), **{"x-kubernetes-list-type": "set"}),
                    "destinationLabels": _arr(_str(), **{"x-kubernetes-list-type": "set"}),
                    "additionalLabels": _arr(_str(), **{"x-kubernetes-list-type": "set"}),
                    "ttl": _str(pattern=DURATION_PATTERN),
                },
                required=["metricName"],
            ),
            minItems=1,
        ),
        "namespaces": _obj(
            {
                "include": _arr(_str(), **{"x-kubernetes-list-type": "set"}),
                "exclude": _arr(_str(), **{"x-kubernetes-list-type": "set"}),
            },
            **{
                "x-kubernetes-validations": [
                    {
                        "rule": "has(self.include) != has(self.exclude)",
                        "message": "namespaces needs exactly one of include or exclude",
                    }
                ]
            },
        ),
    },
    required=["contextOptions", "namespaces"],
)


def _state_status(spec: Schema) -> Schema:
    return _obj({"state": _STATE, "reason": _str(), "lastKnownSpec": copy.deepcopy(spec)})


_TRACE_TARGET = _obj(
    {
        "ipBlock": _obj({"cidr": _str(), "except": _arr(_str())}),
        "namespaceSelector": label_selector("Namespaces"),
        "podSelector": label_selector("Pods"),
        "nodeSelector": label_selector("Nodes"),
        "serviceSelector": label_selector("Services"),
    },
    **{
        "x-kubernetes-validations": [
            {
                "rule": "(has(self.ipBlock) && has(self.ipBlock.cidr) && self.ipBlock.cidr != '') || "
                "has(self.namespaceSelector) || has(self.podSelector) || has(self.nodeSelector) || "
                "has(self.serviceSelector)",
                "message": "targets nothing: give ipBlock.cidr or a selector (or leave the peer out to match any)",
            }
        ]
    },
)

TRACES_SPEC: Schema = _obj(
    {
        "traceConfiguration": _arr(
            _obj(
                {
                    "captureLevel": _str(enum=["AllPackets", "FirstPacket"]),
                    "includeLayer7Data": _bool(),
                    "traceTargets": _arr(
                        _obj(
                            {
                                "from": _TRACE_TARGET,
                                "to": _TRACE_TARGET,
                                "ports": _arr(
                                    _obj(
                                        {
                                            "port": _str(),
                                            "protocol": _str(enum=["TCP", "UDP", "SCTP"], default="TCP"),
                                            "endPort": _str(),
                                        },
                                        required=["port"],
                                    )
                                ),
                                "tracePoints": _arr(
                                    _str(enum=["PodToNode", "NodeToPod", "NodeToNetwork", "NetworkToNode"])
                                ),
                            }
                        ),
                        minItems=1,
                        description="Which connections to trace; [{}] for every connection.",
                    ),
                },
                required=["captureLevel", "traceTargets"],
            ),
            minItems=1,
        ),
        "outputConfiguration": _obj(
            {
                "destination": _str(enum=["stdout", "azuretable", "loganalytics", "opentelemetry"]),
                "connectionConfiguration": _str(),
            },
            required=["destination"],
        ),
    },
    required=["traceConfiguration", "outputConfiguration"],
)

ENDPOINT_SPEC: Schema = _obj(
    {
        "containers": _arr(_obj({"name": _str(), "id": _str()})),
        "ownerReferences": _arr(_obj({"apiVersion": _str(), "kind": _str(), "name": _str()})),
        "nodeIP": _str(),
        "podIP": _str(),
        "podIPs": _arr(_str()),
        "labels": _map_of_str(),
        "annotations": _map_of_str(),
    }
)


def crd(
    kind: str,
    plural: str,
    scope: str,
    spec: Schema,
    status: Schema,
    columns: list[dict[str, Any]],
    short_names: list[str],
    spec_required: bool = True,
) -> dict[str, Any]:
    root = _obj(
        {
            "apiVersion": _str(),
            "kind": _str(),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        required=["spec"] if spec_required else None,
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "retina-otel"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["retina"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

CRDS: list[dict[str, Any]] = [
    crd(
        "Capture",
        "captures",
        "Namespaced",
        CAPTURE_SPEC,
        CAPTURE_STATUS,
        [
            {"name": "Complete", "type": "string", "jsonPath": ".status.conditions[?(@.type=='complete')].status"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type=='complete')].reason"},
            {"name": "Error", "type": "string", "jsonPath": ".status.conditions[?(@.type=='error')].reason"},
            {"name": "Active", "type": "integer", "jsonPath": ".status.active"},
            {"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
            _AGE,
        ],
        ["rcap"],
    ),
    crd(
        "MetricsConfiguration",
        "metricsconfigurations",
        "Cluster",
        METRICS_SPEC,
        _state_status(METRICS_SPEC),
        [
            {"name": "State", "type": "string", "jsonPath": ".status.state"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            _AGE,
        ],
        ["rmc"],
    ),
    crd(
        "RetinaEndpoint",
        "retinaendpoints",
        "Namespaced",
        ENDPOINT_SPEC,
        _obj({}),
        [
            {"name": "Pod IP", "type": "string", "jsonPath": ".spec.podIP"},
            {"name": "Node IP", "type": "string", "jsonPath": ".spec.nodeIP"},
            {"name": "Referenced By", "type": "string", "jsonPath": ".spec.ownerReferences", "priority": 1},
            _AGE,
        ],
        ["ke"],
        spec_required=False,
    ),
    crd(
        "TracesConfiguration",
        "tracesconfigurations",
        "Cluster",
        TRACES_SPEC,
        _state_status(TRACES_SPEC),
        [
            {"name": "State", "type": "string", "jsonPath": ".status.state"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            _AGE,
        ],
        ["rtc"],
    ),
]

#: kind -> (plural, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    c["spec"]["names"]["kind"]: (c["spec"]["names"]["plural"], c["spec"]["scope"] == "Namespaced") for c in CRDS
}


def crd_names() -> list[str]:
    return [c["metadata"]["name"] for c in CRDS]
