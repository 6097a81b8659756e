"""docs/operator.md documents every field of both CRDs, and every RBAC rule the operator uses."""

from pathlib import Path
from typing import Any

from fleetflow.api.crds import all_crds
from fleetflow.operator import rbac

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


# Kubernetes documents its own types; the reference names the field that holds one, not each of its fields.
KUBERNETES_TYPE = "Kubernetes "
# Overrides shared by every component are documented once, as `pod.<field>` and `service.<field>`.
SHARED = {"pod": "pod", "service": "service", "mqttService": "service", "leafnodeService": "service"}


def leaves(node: dict[str, Any], path: str) -> list[str]:
    if str(node.get("description", "")).startswith(KUBERNETES_TYPE):
        return [path]
    if node.get("type") == "array" and str(node["items"].get("description", "")).startswith(KUBERNETES_TYPE):
        return [path]
    if node.get("properties"):
        return [leaf for name, child in node["properties"].items() for leaf in leaves(child, f"{path}.{name}")]
    if node.get("type") == "array" and node["items"].get("properties"):
        return leaves(node["items"], f"{path}[]")
    return [path]


def documented(path: str, text: str) -> bool:
    """The full path is in the reference, or the field of a shared override is, relative to it."""
    if f"`{path}`" in text:
        return True
    parts = path.split(".")
    shared = [i for i, part in enumerate(parts) if part in SHARED]
    return bool(shared) and f"`{'.'.join([SHARED[parts[shared[0]]], *parts[shared[0] + 1 :]])}`" in text


def test_every_spec_field_is_in_the_reference() -> None:
    text = DOC.read_text()
    for crd in all_crds().values():
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        missing = [path for path in leaves(spec, "spec") if not documented(path, text)]
        assert not missing, f"docs/operator.md lacks {crd['spec']['names']['kind']} fields: {missing}"


def test_every_rbac_resource_is_explained() -> None:
    text = DOC.read_text()
    for rule in rbac.RULES:
        for resource in rule["resources"]:
            assert f"`{resource}`" in text, f"docs/operator.md does not explain the RBAC rule for {resource}"
