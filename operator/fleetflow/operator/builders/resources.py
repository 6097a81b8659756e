"""Default CPU and memory requests and limits of each component's containers."""

from typing import Any

ResourceRequirements = dict[str, dict[str, str]]

DEFAULT_RESOURCES: dict[str, ResourceRequirements] = {
    "nats": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "gateway": {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    "processor": {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    "writer": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
}


def resources_of(table: dict[str, ResourceRequirements], component: str) -> dict[str, Any]:
    """A copy, so a builder's caller can never mutate the shared defaults through a rendered object."""
    chosen = table.get(component, DEFAULT_RESOURCES[component])
    return {kind: dict(values) for kind, values in chosen.items()}
