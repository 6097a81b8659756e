"""Turning a Pipeline's steps into compiled steps, once, before any reading flows.

`compile_pipeline` is what the processor, the operator (into the Pipeline's status) and `fleetflow up` (to
refuse to start) call: it reports every bad expression at once, each with its field path."""

from dataclasses import dataclass, field

from fleetflow.api import DeviceFleet, Pipeline, SpecError
from fleetflow.api.steps import Step
from fleetflow.processor.celtypes import A_BOOL, A_METRIC, A_STRING, ANYTHING, Wanted
from fleetflow.processor.expressions import Expression, ExpressionError, compile_expression


class PipelineCompileError(SpecError):
    """The pipeline cannot run; `errors` holds each bad expression, `problems` one line per error."""

    def __init__(self, pipeline: str, errors: list[ExpressionError], other: list[str] | None = None):
        self.errors = errors
        super().__init__(f"Pipeline {pipeline}", [str(e) for e in errors] + (other or []))


@dataclass(frozen=True)
class CompiledStep:
    index: int
    spec: Step
    expressions: dict[str, Expression] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def expr(self, key: str) -> Expression:
        return self.expressions[key]


@dataclass(frozen=True)
class CompiledPipeline:
    fleet: str
    pipeline: str
    steps: tuple[CompiledStep, ...]
    device_fleet: DeviceFleet
    _labels: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    def labels_of(self, device: str) -> dict[str, str]:
        """The device's labels from the fleet's rules; cached, since rules are regexes and never change here."""
        labels = self._labels.get(device)
        if labels is None:
            if len(self._labels) > 100_000:
                self._labels.clear()
            labels = self._labels[device] = self.device_fleet.spec.devices.labels_of(device)
        return labels


def _sources(step: Step) -> dict[str, tuple[str, Wanted]]:
    """Every CEL expression of a step and what it must give, keyed by its field path below the step."""
    if step.filter is not None:
        return {"filter.condition": (step.filter.condition, A_BOOL)}
    if step.derive is not None:
        return {f"derive.metrics.{name}": (source, A_METRIC) for name, source in step.derive.metrics.items()}
    if step.alert is not None:
        found = {"alert.condition": (step.alert.condition, A_BOOL)}
        if step.alert.clear is not None:
            found["alert.clear"] = (step.alert.clear, A_BOOL)
        return found
    if step.command is not None:
        found = {
            "command.condition": (step.command.condition, A_BOOL),
            "command.target": (step.command.target, A_STRING),
        }
        found.update({f"command.computedParams.{k}": (v, ANYTHING) for k, v in step.command.computed_params.items()})
        return found
    return {}


def compile_pipeline(pipeline: Pipeline, fleet: DeviceFleet) -> CompiledPipeline:
    """Compile every expression of `pipeline`; PipelineCompileError lists all that fail, with their paths."""
    errors: list[ExpressionError] = []
    other: list[str] = []
    if pipeline.fleet != fleet.name:
        other.append(
            f"spec.fleetRef.name = {pipeline.fleet!r}: the pipeline belongs to another fleet than {fleet.name!r}"
        )
    steps = []
    for index, step in enumerate(pipeline.spec.steps):
        compiled: dict[str, Expression] = {}
        for key, (source, wanted) in _sources(step).items():
            result = compile_expression(f"spec.steps[{index}].{key}", source, wanted)
            if isinstance(result, ExpressionError):
                errors.append(result)
            else:
                compiled[key.split(".", 1)[1]] = result
        steps.append(CompiledStep(index, step, compiled))
    if errors or other:
        raise PipelineCompileError(pipeline.name, errors, other)
    return CompiledPipeline(fleet.name, pipeline.name, tuple(steps), fleet)
