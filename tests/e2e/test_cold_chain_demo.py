"""The cold-chain example under `fleetflow up --simulate` shows what it is for: windows close, the
over-temperature alert fires and the depot's cooler gets commands. Windows and the alert's `for` are scaled
from 30 s to seconds so the run stays short; the devices, labels and expressions are the example's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cold-chain"
pytestmark = pytest.mark.e2e


def scaled_example(directory: Path) -> Path:
    directory.mkdir()
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    steps = {step["name"]: step for step in pipeline["spec"]["steps"]}
    steps["box-health"]["window"].update(size="4s", watermarkDelay="1s", allowedLateness="1s")
    steps["over-temperature"]["alert"]["for"] = "4s"
    (directory / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    (directory / "fleet.yaml").write_text((EXAMPLE / "fleet.yaml").read_text())
    return directory


def test_simulated_cold_chain_shows_windows_alerts_and_commands(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetflow.cli", "up", str(scaled_example(tmp_path / "example")),
         "--data-dir", str(tmp_path / "data"), "--simulate", "6", "--duration", "12", "--interval", "0.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"window aggregates: ([\d,]+); alert events: ([\d,]+); commands sent: ([\d,]+)",
                      result.stdout)  # fmt: skip
    assert found, result.stdout
    aggregates, alerts, commands = (int(n.replace(",", "")) for n in found.groups())
    # 6 boxes (box-a-0000, box-b-0000, ...), 2 of them with failed cooling: one per depot
    assert aggregates >= 6 * 3 and alerts >= 2 and commands >= 2, result.stdout
    assert "evaluation errors" not in result.stdout
    assert "stored == acknowledged: yes" in result.stdout
