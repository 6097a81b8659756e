"""The CRDs in crds/ are the ones the models generate, and every example validates against them."""

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetflow.api import parse_resource
from fleetflow.api.crds import all_crds

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_crd_files_match_the_models() -> None:
    for name, generated in all_crds().items():
        on_disk = yaml.safe_load((ROOT / "crds" / name).read_text())
        assert on_disk == generated, f"crds/{name} is stale: run `make crds` (fleetflow crds --write crds)"


def test_no_extra_crd_files() -> None:
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(all_crds())


def test_crds_are_structural_with_status_short_names_and_category() -> None:
    for crd in all_crds().values():
        version = crd["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        assert crd["spec"]["names"]["categories"] == ["fleetflow"]
        _assert_structural(version["schema"]["openAPIV3Schema"], "openAPIV3Schema")
    short = {c["spec"]["names"]["kind"]: c["spec"]["names"]["shortNames"] for c in all_crds().values()}
    assert short == {"DeviceFleet": ["df"], "Pipeline": ["pl"]}


def _assert_structural(node: dict[str, Any], path: str) -> None:
    """Every node has a type (or int-or-string / preserve-unknown-fields); no unions, no $ref."""
    for banned in ("anyOf", "oneOf", "allOf", "$ref", "$defs", "title"):
        assert banned not in node, f"{path} has {banned}"
    if not node.get("x-kubernetes-int-or-string") and not node.get("x-kubernetes-preserve-unknown-fields"):
        assert "type" in node, f"{path} has no type"
    for name, child in node.get("properties", {}).items():
        _assert_structural(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        _assert_structural(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        _assert_structural(node["items"], f"{path}[]")


def _schema_for(kind: str) -> dict[str, Any]:
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_examples_validate_against_crds_and_models(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("apiVersion") != "fleetflow.io/v1alpha1":
            continue
        jsonschema.validate(document, _schema_for(document["kind"]))
        parse_resource(document, str(path))


def test_crd_schema_refuses_what_the_model_refuses() -> None:
    schema = _schema_for("DeviceFleet")
    bad = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": "x"},
           "spec": {"gateway": {"replicas": -1}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError, match="-1 is less than the minimum of 0"):
        jsonschema.validate(bad, schema)
