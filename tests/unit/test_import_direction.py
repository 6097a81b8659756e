"""The import direction of DESIGN.md: each package imports only the packages below it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "api": set(),
    "runtime": {"api"},
    "device": {"api"},
    "gateway": {"api", "runtime"},
    "processor": {"api", "runtime"},
    "writer": {"api", "runtime"},
    "appapi": {"api", "runtime", "writer"},  # the writer's store interface only: see WRITER_PARTS
    "operator": {"api", "runtime"},
    "local": {"api", "runtime", "device", "gateway", "processor", "writer", "appapi"},
    "bench": {"api", "runtime", "device", "processor", "writer", "local"},  # processor: --engine-only
    "cli": {"api", "runtime", "device", "gateway", "processor", "writer", "appapi", "operator", "local", "bench"},
}
# Where a package may use only part of another: the application API reads the stores through their interface.
WRITER_PARTS = {"appapi": "fleetflow.writer.stores"}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found.update(name for name in names if name.startswith("fleetflow.") and name.count(".") >= 1)
    return found


def fleetflow_imports(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imported_modules(path)}


def test_packages_import_only_downwards() -> None:
    violations = []
    files = [*ROOT.glob("services/fleetflow/*/**/*.py"), *ROOT.glob("operator/fleetflow/*/**/*.py")]
    assert files, "no sources found"
    for path in files:
        package = path.relative_to(ROOT).parts[2]
        assert package in ALLOWED, f"{path}: package fleetflow.{package} is not in DESIGN.md's table"
        for imported in fleetflow_imports(path) - {package}:
            if imported not in ALLOWED[package]:
                violations.append(f"{path.relative_to(ROOT)} imports fleetflow.{imported}")
    assert not violations, "\n".join(violations)


def test_the_application_api_uses_only_the_writers_store_interface() -> None:
    violations = []
    for package, allowed in WRITER_PARTS.items():
        for path in ROOT.glob(f"services/fleetflow/{package}/**/*.py"):
            for name in imported_modules(path):
                if name.startswith("fleetflow.writer") and not name.startswith(allowed):
                    violations.append(f"{path.relative_to(ROOT)} imports {name}; only {allowed} is allowed")
    assert not violations, "\n".join(violations)
