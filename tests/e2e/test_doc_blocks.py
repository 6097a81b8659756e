"""The shell blocks of README.md and docs/devices.md run as written, pasted whole, against a real `fleetflow up`.

Each block is named by the heading above it. Every ```sh block of the two files is either run here or listed
in NOT_RUN with the reason, so a new block cannot slip by untested."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.localplatform import fleetflow_up

ROOT = Path(__file__).resolve().parents[2]
README, DEVICES = ROOT / "README.md", ROOT / "docs" / "devices.md"
pytestmark = pytest.mark.e2e

RUN = {
    README: ["Sending readings", "Applications: the application API", "Other protocols, and commands to devices"],
    DEVICES: ["Connecting devices", "HTTP", "Commands"],
}
NOT_RUN = {
    README: {
        "fleetflow": "`make demo` and `make test` are what CI and the quickstart run",
        "Quickstart": "what `make demo` runs (30 s); tests/e2e/test_local_platform.py runs it shorter",
        "A real pipeline: the cold chain": "a 60 s run of the example; the processor's e2e tests cover the steps",
        "On Kubernetes": "needs a cluster (helm, kubectl)",
        "Applications: the application API": "tests/e2e/test_app_api_local.py makes the same requests of a running "
        "platform",
        "Developing": "make targets",
        "Who can reach the local platform": "needs the `nats` CLI; tests/e2e/test_local_nats_auth.py logs in as admin",
        "Watching it": "starts a Prometheus server; tests/e2e/test_prometheus.py runs one on the config `fleetflow up` writes",
    },
    DEVICES: {
        "MQTT": "needs mosquitto_pub; tests/e2e/test_connectivity_local.py covers MQTT devices",
        "WebSocket": "needs websocat; tests/integration/connectivity/test_ws.py covers WebSocket devices",
        "CoAP": "observes without end and needs a command id; tests/integration/connectivity/test_coap.py covers it",
    },
}


def sh_blocks(path: Path) -> dict[str, str]:
    """Heading above each ```sh block -> the block (several under one heading are joined in order)."""
    blocks: dict[str, str] = {}
    heading = ""
    # Fences are matched whole, so a "# comment" line inside one is not taken for a heading.
    for part in re.split(r"(^#+ [^\n]*$|^```.*?^```$)", path.read_text(), flags=re.M | re.S):
        if part.startswith("#"):
            heading = part.lstrip("#").strip().strip("`")
        elif part.startswith("```sh\n"):
            blocks[heading] = blocks.get(heading, "") + part.removeprefix("```sh\n").removesuffix("```")
    return blocks


def workdir(tmp_path: Path) -> Path:
    """A fresh folder holding what the blocks refer to relatively: .venv and examples/."""
    for name in (".venv", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run_bash(script: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The blocks as one bash script that stops at the first failing command, as a reader would stop."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # the script hung: stop it and whatever it started in the background
            os.killpg(process.pid, 15)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


# Blocks that start a platform of their own, each run alone by a test below.
RUN_ALONE = {README: set(), DEVICES: {"Device certificates (mutual TLS)"}}


@pytest.mark.parametrize("path", [README, DEVICES], ids=lambda p: p.name)
def test_every_shell_block_is_run_here_or_says_why_not(path: Path) -> None:
    assert set(sh_blocks(path)) == set(RUN[path]) | set(NOT_RUN[path]) | RUN_ALONE[path]


def test_the_readme_blocks_run_pasted_whole(tmp_path: Path) -> None:
    blocks = sh_blocks(README)
    cwd = workdir(tmp_path)
    result = run_bash("\n".join(blocks[name] for name in RUN[README]), cwd)
    assert result.returncode == 0, result.stdout
    assert re.search(r'"accepted":\s*2', result.stdout), result.stdout
    assert re.search(r"^\S+Z\s+2\s+door_open=1\s+temperature=4.3$", result.stdout, flags=re.M), result.stdout
    assert re.search(r"^ID\s+DEVICE\s+NAME\s+STATE", result.stdout, flags=re.M), result.stdout
    assert re.search(r"sent [0-9,]+ readings, [1-9][0-9,]* acknowledged", result.stdout), result.stdout
    assert "stored == acknowledged: yes" in (cwd / "fleetflow-up.log").read_text()
    assert not (cwd / "fleetflow-data" / "endpoints.json").exists(), "the platform did not stop"


def test_the_device_doc_http_and_command_blocks_run_as_written(tmp_path: Path) -> None:
    blocks = sh_blocks(DEVICES)
    cwd = workdir(tmp_path)
    with fleetflow_up(cwd / "fleetflow-data", ROOT / "examples" / "quickstart") as platform:
        result = run_bash("\n".join(blocks[name] for name in RUN[DEVICES]), cwd, timeout=90)
        platform.stop()
    assert result.returncode == 0, result.stdout
    assert re.search(r'"accepted":\s*1', result.stdout), result.stdout
    assert '"state":"succeeded"' in result.stdout.replace(" ", ""), result.stdout


def test_the_device_certificate_block_runs_as_written(tmp_path: Path) -> None:
    """openssl makes a CA, the gateway's and pump-1's certificates; curl sends with pump-1's and no token."""
    result = run_bash(sh_blocks(DEVICES)["Device certificates (mutual TLS)"], workdir(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout
    accepted, mismatch = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert re.search(r'"accepted":\s*1', accepted), result.stdout
    assert '"certificate_mismatch"' in mismatch and "'pump-1'" in mismatch and "'pump-2'" in mismatch, result.stdout
    assert not (tmp_path / "mtls-data" / "endpoints.json").exists(), "the platform did not stop"
