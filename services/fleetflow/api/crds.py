"""CustomResourceDefinitions generated from the models, so the schema is written exactly once."""

from typing import Any

from pydantic import BaseModel

from fleetflow.api.devicefleet import DeviceFleetSpec, DeviceFleetStatus
from fleetflow.api.identifiers import RESOURCE_NAME
from fleetflow.api.pipeline import PipelineSpec, PipelineStatus
from fleetflow.api.resources import GROUP, VERSION

# JSON-schema keywords a structural OpenAPI v3 schema may carry; the rest (title, $defs...) is dropped.
_KEPT = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "required", "nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
}  # fmt: skip


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _resolve(target, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one resolved pydantic schema node into the structural subset Kubernetes accepts."""
    variants = node.get("anyOf")
    if variants:
        present = [v for v in variants if v.get("type") != "null"]
        merged = {**present[0], **{k: v for k, v in node.items() if k != "anyOf"}} if len(present) == 1 else None
        if merged is None:
            raise ValueError(f"cannot express a union of {len(present)} types structurally: {node}")
        if len(present) < len(variants):
            merged.pop("default", None)
        return _structural(merged)
    if "const" in node:
        node = {**node, "enum": [node["const"]], "type": "string"}
    out = {key: value for key, value in node.items() if key in _KEPT}
    if out.get("default") is None or isinstance(out.get("default"), dict | list):
        out.pop("default", None)  # Kubernetes fills nested defaults from the properties themselves
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {name: _structural(prop) for name, prop in node["properties"].items()}
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(node["additionalProperties"])
    elif node.get("type") == "object" and "x-kubernetes-preserve-unknown-fields" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array":
        out["items"] = _structural(node.get("items", {"x-kubernetes-preserve-unknown-fields": True}))
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as a CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve({k: v for k, v in raw.items() if k != "$defs"}, raw.get("$defs", {})))


_NAME_RULE = {
    "rule": f"self.metadata.name.matches('{RESOURCE_NAME.pattern}')",
    "message": "metadata.name must be lowercase letters, digits and '-' (at most 40): it becomes NATS subjects",
}


def _crd(
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
    required_spec: bool,
) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status),
        },
        "x-kubernetes-validations": [_NAME_RULE],
    }
    if required_spec:
        root["required"] = ["spec"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fleetflow"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["fleetflow"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def device_fleet_crd() -> dict[str, Any]:
    columns = [
        _ready_column(),
        {"name": "Gateways", "type": "integer", "jsonPath": ".spec.gateway.replicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.gateway.readyReplicas"},
        {"name": "Sites", "type": "string", "jsonPath": ".status.sitesConnected"},  # connected/declared edge sites
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        _AGE,
    ]
    scale = {"specReplicasPath": ".spec.gateway.replicas", "statusReplicasPath": ".status.gateway.replicas"}
    subresources = {"status": {}, "scale": scale}
    return _crd("DeviceFleet", "devicefleets", "df", DeviceFleetSpec, DeviceFleetStatus, columns, subresources,
                required_spec=False)  # fmt: skip


def pipeline_crd() -> dict[str, Any]:
    columns = [
        {"name": "Fleet", "type": "string", "jsonPath": ".spec.fleetRef.name"},
        _ready_column(),
        {"name": "Sink", "type": "string", "jsonPath": ".spec.sink.kind"},
        {"name": "Processors", "type": "integer", "jsonPath": ".spec.processor.replicas"},
        {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
        _AGE,
    ]
    return _crd("Pipeline", "pipelines", "pl", PipelineSpec, PipelineStatus, columns, {"status": {}},
                required_spec=True)  # fmt: skip


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, as stored in crds/ and in the chart."""
    return {
        "devicefleets.fleetflow.io.yaml": device_fleet_crd(),
        "pipelines.fleetflow.io.yaml": pipeline_crd(),
    }
