"""skaffold.yaml: v4 schema, builds the image, deploys the chart then the example, port-forwards the gateway."""

import glob
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.operator.builders import gateway
from tests.packaging import chart

SKAFFOLD = chart.REPO / "skaffold.yaml"
CUSTOM_RESOURCES = {"DeviceFleet": DeviceFleet, "Pipeline": Pipeline}


def configs() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(SKAFFOLD.read_text()) if doc]
    return {doc["metadata"]["name"]: doc for doc in docs}


def referenced_files() -> list[str]:
    """Every path skaffold.yaml names, relative to the repository root (where skaffold runs)."""
    paths: list[str] = []
    for config in configs().values():
        for artifact in config.get("build", {}).get("artifacts", []):
            context = artifact.get("context", ".")
            paths += [context, str(Path(context) / artifact.get("docker", {}).get("dockerfile", "Dockerfile"))]
        for release in config.get("deploy", {}).get("helm", {}).get("releases", []):
            paths += [release["chartPath"], str(Path(release["chartPath"]) / "Chart.yaml"), *release["valuesFiles"]]
        paths += config.get("manifests", {}).get("rawYaml", [])
    return paths


def example_documents() -> list[dict[str, Any]]:
    docs = []
    for pattern in configs()["example"]["manifests"]["rawYaml"]:
        for path in sorted(glob.glob(str(chart.REPO / pattern))):
            docs += [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
    return docs


def test_every_config_uses_the_v4_schema() -> None:
    assert list(configs()) == ["platform", "example"], "the chart is deployed before the example that needs it"
    for config in configs().values():
        assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"]), config["apiVersion"]
        assert config["kind"] == "Config"
    assert configs()["example"]["requires"] == [{"configs": ["platform"]}]


@pytest.mark.parametrize("path", referenced_files())
def test_every_referenced_file_exists(path: str) -> None:
    assert glob.glob(str(chart.REPO / path)), f"skaffold.yaml names {path}, which does not exist"


def test_builds_the_image_and_installs_the_chart_with_it() -> None:
    platform = configs()["platform"]
    (artifact,) = platform["build"]["artifacts"]
    (release,) = platform["deploy"]["helm"]["releases"]
    image = artifact["image"]
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{image}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{image}}}}}",
    }
    assert release["chartPath"] == "charts/fleetflow"
    assert release["createNamespace"] is True


def test_chart_lints_with_the_values_skaffold_gives_it() -> None:
    release = configs()["platform"]["deploy"]["helm"]["releases"][0]
    values: dict[str, Any] = {}
    for path in release["valuesFiles"]:
        values.update(chart.load_values(chart.REPO / path))
    values["image"] = {**values.get("image", {}), "repository": "fleetflow", "tag": "3f2a9c1d"}
    assert not chart.problems(chart.lint(values))


def test_kind_profile_targets_a_local_kind_cluster_without_a_registry() -> None:
    for name, config in configs().items():
        (profile,) = [p for p in config["profiles"] if p["name"] == "kind"]
        assert profile["activation"] == [{"kubeContext": "kind-fleetflow"}], name
        assert profile["deploy"]["kubeContext"] == "kind-fleetflow", name
    kind = next(p for p in configs()["platform"]["profiles"] if p["name"] == "kind")
    assert kind["build"]["local"]["push"] is False


def test_example_manifests_are_valid_kubernetes_and_valid_fleetflow_resources() -> None:
    kinds = []
    for doc in example_documents():
        kinds.append(doc["kind"])
        model = CUSTOM_RESOURCES.get(doc["kind"])
        if model is not None:
            model.model_validate(doc)
        else:
            kubernetes_validate.validate(doc, chart.KUBE_VERSION, strict=True)
    assert kinds[0] == "Namespace", "the namespace is applied before what goes into it"
    assert {"DeviceFleet", "Pipeline"} <= set(kinds)


def test_port_forward_reaches_the_example_fleets_gateway_service() -> None:
    fleet = DeviceFleet.model_validate(next(d for d in example_documents() if d["kind"] == "DeviceFleet"))
    (forward,) = configs()["example"]["portForward"]
    assert forward["resourceType"] == "service"
    assert forward["resourceName"] == gateway.name(fleet), "the Service the operator creates for the fleet"
    assert forward["namespace"] == fleet.metadata.namespace
    assert forward["port"] == gateway.HTTP_PORT
