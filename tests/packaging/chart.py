"""The Helm chart as tests see it: rendered and linted by Helm's own engine (the helm-python-sdk wheel
binds Helm's Go SDK, so neither a helm binary nor a cluster is needed)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fleetflow"
RELEASE = "ff"
NAMESPACE = "fleetflow-system"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion); objects are validated against it.
KUBE_VERSION = "1.30.0"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    severity: int
    path: str
    error: str

    def __str__(self) -> str:
        return f"[{'?IWE'[self.severity]}] {self.path}: {self.error.strip()}"


def lint(values: Obj | None = None) -> list[Finding]:
    """Helm lint in strict mode, against the oldest supported Kubernetes."""
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    return [Finding(m["severity"], m["path"], m["error"]) for m in report["messages"]]


def problems(findings: list[Finding]) -> list[Finding]:
    """Warnings and errors; lint's informational advice (such as 'icon is recommended') is not a problem."""
    return [f for f in findings if f.severity >= 2]


def render(values: Obj | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template ff charts/fleetflow -n fleetflow-system` prints it."""
    return dict(helm.Chart.load(CHART).render(values, name=release, namespace=namespace, is_install=True))


def objects(values: Obj | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> list[Obj]:
    """Every Kubernetes object the chart's templates render (NOTES.txt excluded)."""
    found: list[Obj] = []
    for path, text in sorted(render(values, release, namespace).items()):
        if path.endswith(".txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def one(found: list[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [o for o in found if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    kinds = sorted({f"{o['kind']}/{o['metadata']['name']}" for o in found})
    assert len(matches) == 1, f"expected one {kind} {name or ''}, rendered: {kinds}"
    return matches[0]


def load_values(path: Path) -> Obj:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} must hold a mapping of values"
    return data
