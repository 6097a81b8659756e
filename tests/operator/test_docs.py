"""docs/operator.md documents every field of both CRDs, and every RBAC rule the operator uses."""

from pathlib import Path
from typing import Any

from fleetflow.api.crds import all_crds
from fleetflow.operator import rbac

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"


def leaves(node: dict[str, Any], path: str) -> list[str]:
    if node.get("properties"):
        return [leaf for name, child in node["properties"].items() for leaf in leaves(child, f"{path}.{name}")]
    if node.get("type") == "array" and node["items"].get("properties"):
        return leaves(node["items"], f"{path}[]")
    return [path]


def test_every_spec_field_is_in_the_reference() -> None:
    text = DOC.read_text()
    for crd in all_crds().values():
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        missing = [path for path in leaves(spec, "spec") if f"`{path}`" not in text]
        assert not missing, f"docs/operator.md lacks {crd['spec']['names']['kind']} fields: {missing}"


def test_every_rbac_resource_is_explained() -> None:
    text = DOC.read_text()
    for rule in rbac.RULES:
        for resource in rule["resources"]:
            assert f"`{resource}`" in text, f"docs/operator.md does not explain the RBAC rule for {resource}"
