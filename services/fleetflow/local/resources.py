"""Reading DeviceFleet and Pipeline YAML from files and folders, as `kubectl apply -f` would."""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.processor.compiler import compile_pipeline


@dataclass
class ResourceSet:
    fleets: dict[str, DeviceFleet] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def fleet_of(self, pipeline: Pipeline) -> DeviceFleet:
        return self.fleets[pipeline.fleet]


def yaml_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")))
        elif path.exists():
            files.append(path)
        else:
            raise SpecError(str(path), ["no such file or folder"])
    if not files:
        raise SpecError(", ".join(map(str, paths)), ["no .yaml, .yml or .json files found"])
    return files


def load_resources(paths: list[Path]) -> ResourceSet:
    """Every DeviceFleet and Pipeline in `paths`; SpecError names the file, the field and the problem."""
    found = ResourceSet()
    for file in yaml_files(paths):
        try:
            documents = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            raise SpecError(str(file), [f"not valid YAML: {exc}"]) from None
        for document in documents:
            _add(found, parse_resource(document, str(file)), file)
    _check_references(found)
    for pipeline in found.pipelines.values():
        # Bad CEL stops `fleetflow up` here, with the expression and its position, not in a child's log.
        compile_pipeline(pipeline, found.fleet_of(pipeline))
    return found


def _add(found: ResourceSet, resource: DeviceFleet | Pipeline, file: Path) -> None:
    table: dict[str, DeviceFleet] | dict[str, Pipeline]
    table = found.fleets if isinstance(resource, DeviceFleet) else found.pipelines
    if resource.name in table:
        raise SpecError(str(file), [f"{resource.kind} {resource.name!r} is defined twice"])
    table[resource.name] = resource  # type: ignore[assignment]


def _check_references(found: ResourceSet) -> None:
    if not found.fleets:
        raise SpecError("input", ["no DeviceFleet found; fleetflow up needs at least one"])
    for pipeline in found.pipelines.values():
        if pipeline.fleet not in found.fleets:
            raise SpecError(
                f"Pipeline/{pipeline.name}",
                [f"spec.fleetRef.name = {pipeline.fleet!r}: no such DeviceFleet; defined: {', '.join(found.fleets)}"],
            )
