"""docs/install.md: its commands match the chart's names and values, the CLI, and the example's objects."""

import re
import shlex
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from fleetflow.api import DeviceFleet
from fleetflow.cli.main import build_parser
from fleetflow.operator.builders import gateway
from tests.packaging import chart

DOC = chart.REPO / "docs" / "install.md"
TEXT = DOC.read_text()
RELEASE, NAMESPACE = "fleetflow", "fleetflow-system"


def commands() -> list[str]:
    """Each command of the doc's shell blocks, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", TEXT, flags=re.S)
    joined = [re.sub(r"\\\n\s*", " ", block) for block in blocks]
    return [line.strip() for block in joined for line in block.splitlines() if line.strip()]


def helm_commands(verb: str) -> list[list[str]]:
    return [shlex.split(c)[1:] for c in commands() if c.startswith(f"helm {verb} ")]


def fleetflow_invocations() -> list[list[str]]:
    """Arguments of every `fleetflow ...` run in the doc, also inside $(...)."""
    found = re.findall(r"(?:^|\$\()fleetflow\s+([a-z][^)|;&\n]*)", "\n".join(commands()), flags=re.M)
    return [shlex.split(args) for args in found]


def option(args: list[str], *names: str) -> str:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    raise AssertionError(f"{args} lacks {names}")


def set_values(args: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for i, arg in enumerate(args):
        if arg == "--set":
            parsed = helm.parse_set_string(args[i + 1])
            for key, value in parsed.items():
                values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values


def example() -> dict[str, dict[str, Any]]:
    folder = chart.REPO / "examples" / "cluster"
    docs = [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    return {d["kind"]: d for d in docs if d and "kind" in d}


def test_the_doc_installs_the_chart_with_each_helm_command() -> None:
    assert helm_commands("install") and helm_commands("upgrade") and helm_commands("uninstall")
    for args in helm_commands("install") + helm_commands("upgrade"):
        release, path = args[1], args[2]
        assert (release, option(args, "--namespace", "-n")) == (RELEASE, NAMESPACE)
        assert chart.REPO / path == chart.CHART


@pytest.mark.parametrize("args", helm_commands("install"), ids=lambda a: " ".join(a[3:]) or "defaults")
def test_every_set_value_of_the_doc_passes_the_chart_lint(args: list[str]) -> None:
    values = set_values(args)
    assert not chart.problems(chart.lint(values)), f"helm {' '.join(args)}"


def test_names_in_the_doc_are_the_ones_the_chart_renders() -> None:
    deployment = chart.one(chart.objects(None, RELEASE, NAMESPACE), "Deployment")
    name = deployment["metadata"]["name"]
    assert f"deployment/{name}" in TEXT
    for command in commands():
        for found in re.findall(r"deployment/(\S+)", command):
            assert found == name, command


def test_names_in_the_doc_are_the_ones_the_operator_creates_for_the_example() -> None:
    fleet = DeviceFleet.model_validate(example()["DeviceFleet"])
    namespace, pipeline = fleet.metadata.namespace, example()["Pipeline"]["metadata"]["name"]
    assert f"service/{gateway.name(fleet)} 8080:{gateway.HTTP_PORT}" in TEXT
    assert f"secret {gateway.device_secret_ref(fleet).name} " in TEXT
    assert f"devicefleet/{fleet.name} pipeline/{pipeline} -n {namespace}" in TEXT
    assert example()["Namespace"]["metadata"]["name"] == namespace
    assert f"statefulset/{example()['StatefulSet']['metadata']['name']}" in TEXT


@pytest.mark.parametrize("args", fleetflow_invocations(), ids=lambda a: " ".join(a[:2]))
def test_every_fleetflow_command_of_the_doc_is_one_the_cli_accepts(args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`fleetflow {' '.join(args)}` is refused by the CLI")


def test_token_and_simulate_read_the_secret_where_the_doc_puts_it() -> None:
    invocations = {args[0]: build_parser().parse_args(args) for args in fleetflow_invocations()}
    written = re.search(r"base64 -d > (\S+)", TEXT)
    assert written
    assert str(invocations["token"].data_dir / "secrets" / f"{invocations['token'].fleet}.key") == written.group(1)
    assert str(invocations["simulate"].secret_file) == written.group(1)


def test_every_path_the_doc_names_exists() -> None:
    paths = set(re.findall(r"\b((?:examples|charts|tests|docs)/[\w./-]*\w/?)", TEXT))
    assert paths
    for path in sorted(paths):
        assert (chart.REPO / path).exists(), f"docs/install.md names {path}, which does not exist"


def test_values_table_names_every_value_and_only_real_ones() -> None:
    table = TEXT[TEXT.index("| value | default |") :].split("\n\n", 1)[0]
    defaults = chart.load_values(chart.CHART / "values.yaml")
    named: set[str] = set()
    for row in table.splitlines()[2:]:
        parent = ""
        for token in re.findall(r"`([\w.]+)`", row.split("|")[1]):
            full = parent + token if token.startswith(".") else token
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            named.add(full)
            node: Any = defaults
            for part in full.split("."):
                assert isinstance(node, dict) and part in node, f"the values table names `{full}`, not a chart value"
                node = node[part]
    missing = set(defaults) - {n.split(".")[0] for n in named}
    assert not missing, f"values missing from the table: {sorted(missing)}"


def test_crds_are_upgraded_from_the_chart_before_helm_upgrade() -> None:
    order = [c for c in commands() if "crds/" in c or c.startswith("helm upgrade")]
    assert order[:2] == ["kubectl apply --server-side -f charts/fleetflow/crds/",
                         order[1]] and order[1].startswith("helm upgrade")  # fmt: skip


def test_skaffold_section_matches_skaffold_yaml() -> None:
    skaffold = [d for d in yaml.safe_load_all((chart.REPO / "skaffold.yaml").read_text()) if d]
    release = skaffold[0]["deploy"]["helm"]["releases"][0]
    assert (release["name"], release["namespace"]) == (RELEASE, NAMESPACE)
    for path in release["valuesFiles"]:
        assert f"`{path}`" in TEXT
    assert "skaffold dev -p kind" in TEXT and "kind create cluster --name fleetflow" in TEXT
    assert skaffold[0]["profiles"][0]["activation"] == [{"kubeContext": "kind-fleetflow"}]
    forward = skaffold[1]["portForward"][0]
    assert f"http://127.0.0.1:{forward['localPort']}" in TEXT


def test_helm_chart_notes_point_to_this_doc() -> None:
    assert "docs/install.md" in chart.render()["fleetflow/templates/NOTES.txt"]
    assert Path(DOC).exists()
