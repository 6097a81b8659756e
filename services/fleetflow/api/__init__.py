"""Typed models of the DeviceFleet and Pipeline custom resources: the single source of truth for the CRD
schemas, the operator, the services and local mode."""

from fleetflow.api.devicefleet import DeviceFleet, DeviceFleetSpec, DeviceFleetStatus
from fleetflow.api.errors import SpecError
from fleetflow.api.pipeline import Pipeline, PipelineSpec, PipelineStatus
from fleetflow.api.resources import GROUP, VERSION, Resource, parse_resource

__all__ = [
    "GROUP",
    "VERSION",
    "DeviceFleet",
    "DeviceFleetSpec",
    "DeviceFleetStatus",
    "Pipeline",
    "PipelineSpec",
    "PipelineStatus",
    "Resource",
    "SpecError",
    "parse_resource",
]
