"""Parsing a YAML/JSON document into a DeviceFleet or Pipeline, with errors that name the field."""

from typing import Any

import pydantic

from fleetflow.api.devicefleet import DeviceFleet
from fleetflow.api.errors import SpecError, describe
from fleetflow.api.pipeline import Pipeline

GROUP = "fleetflow.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Resource = DeviceFleet | Pipeline
KINDS: dict[str, type[DeviceFleet] | type[Pipeline]] = {"DeviceFleet": DeviceFleet, "Pipeline": Pipeline}


def parse_resource(document: Any, source: str = "<input>") -> Resource:
    """Validate one document; SpecError names the source, the kind, the field, the value and the rule."""
    if not isinstance(document, dict):
        raise SpecError(source, [f"expected a mapping with apiVersion, kind, metadata and spec, got {document!r}"])
    kind = document.get("kind")
    if kind not in KINDS:
        raise SpecError(source, [f"kind = {kind!r}: accepted kinds are {', '.join(KINDS)}"])
    if document.get("apiVersion") != API_VERSION:
        raise SpecError(source, [f"apiVersion = {document.get('apiVersion')!r}: accepted is {API_VERSION!r}"])
    name = (document.get("metadata") or {}).get("name", "?")
    try:
        return KINDS[kind].model_validate(document)
    except pydantic.ValidationError as exc:
        raise SpecError(f"{source}: {kind}/{name}", describe(exc)) from None
