"""Reading DeviceFleet and Pipeline YAML from files and folders, as `kubectl apply -f` would."""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.runtime import edgelink


@dataclass
class ResourceSet:
    fleets: dict[str, DeviceFleet] = field(default_factory=dict)
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def fleet_of(self, pipeline: Pipeline) -> DeviceFleet:
        return self.fleets[pipeline.fleet]


def central_resources(found: ResourceSet) -> ResourceSet:
    """What runs in the centre: every fleet, and every pipeline but the edge pipelines of the fleets' sites whose
    records no site forwards (those run at their sites only: `fleetflow edge up`, docs/edge.md)."""
    pipelines = {
        name: p
        for name, p in found.pipelines.items()
        if name not in edgelink.edge_pipelines(found.fleet_of(p))
        or name in edgelink.forwarded_pipelines(found.fleet_of(p))
    }
    return ResourceSet(found.fleets, pipelines)


def site_resources(found: ResourceSet, fleet: str, site: str) -> ResourceSet:
    """What runs at one site: its fleet and its edge pipelines."""
    edge = edgelink.find_site(found.fleets[fleet], site)
    return ResourceSet({fleet: found.fleets[fleet]}, {name: found.pipelines[name] for name in edge.pipelines})


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
    for fleet in found.fleets.values():
        for site in fleet.spec.sites:
            for name in site.pipelines:
                pipeline = found.pipelines.get(name)
                if pipeline is None or pipeline.fleet != fleet.name:
                    raise SpecError(
                        f"DeviceFleet/{fleet.name}",
                        [f"spec.sites[{site.name}].pipelines: {name!r} is no Pipeline of fleet {fleet.name!r}; "
                         f"defined: {', '.join(p.name for p in found.pipelines.values() if p.fleet == fleet.name)}"],
                    )  # fmt: skip
    for pipeline in found.pipelines.values():
        if pipeline.fleet not in found.fleets:
            raise SpecError(
                f"Pipeline/{pipeline.name}",
                [f"spec.fleetRef.name = {pipeline.fleet!r}: no such DeviceFleet; defined: {', '.join(found.fleets)}"],
            )
