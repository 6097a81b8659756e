"""The steps of a Pipeline: what happens to each reading, in order.

Every step has a `name` and exactly one kind block, so the YAML reads like the operator thinks:

    - name: too-hot
      alert: {condition: "metrics.temperature_c > 8.0", for: 2m, severity: critical}

The models validate shape only (names, durations, ranges); CEL expressions are compiled by the processor
(`fleetflow.processor.compiler.compile_pipeline`), which the operator and `fleetflow up` call before
anything runs, so this package stays free of a CEL dependency."""

from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from fleetflow.api import identifiers, quantities
from fleetflow.api.common import Duration, Model, ResourceName

StepKind = Literal["filter", "derive", "window", "alert", "command", "dedupe"]
STEP_KINDS: tuple[StepKind, ...] = ("filter", "derive", "window", "alert", "command", "dedupe")

MetricName = Annotated[
    str,
    AfterValidator(identifiers.check_metric_name),
    WithJsonSchema({"type": "string", "pattern": identifiers.METRIC_NAME.pattern}),
]
LabelName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")]
Cel = Annotated[str, Field(min_length=1, max_length=4096, description="A CEL expression.")]
# Maps keyed by metric name: the keys are checked by pydantic; the CRD says "object of strings", because
# Kubernetes structural schemas have no patternProperties.
_STRING_MAP = WithJsonSchema({"type": "object", "additionalProperties": {"type": "string", "minLength": 1}})

_VARIABLES = "`device`, `ts` (epoch ms), `seq`, `metrics` (a map) and `labels` (the device's labels)"


class FilterStep(Model):
    condition: Cel = Field(description=f"Readings for which this is false are dropped. Sees {_VARIABLES}.")


class DeriveStep(Model):
    """New metrics from CEL, then renames, then drops, in that order."""

    metrics: Annotated[dict[MetricName, Cel], _STRING_MAP] = Field(
        default_factory=dict,
        description="Metric name -> CEL expression giving a number; later entries see earlier ones.",
    )
    rename: Annotated[dict[MetricName, MetricName], _STRING_MAP] = Field(
        default_factory=dict, description="Old name -> new name."
    )
    drop: list[MetricName] = Field(default_factory=list, description="Metrics removed from the reading.")

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if not (self.metrics or self.rename or self.drop):
            raise ValueError("derive needs at least one of metrics, rename or drop")
        return self


class WindowStep(Model):
    """Event-time windows. A window [start, start+size) closes once the watermark (the newest event time seen
    for its device or group, minus `watermarkDelay`) passes its end plus `allowedLateness`."""

    size: Duration = Field(description="Window length, e.g. 1m.")
    hop: Duration | None = Field(default=None, description="Hopping windows start every `hop`; unset: tumbling.")
    group_by: list[LabelName] = Field(
        default_factory=list, description="Device labels to aggregate over; empty: one window per device."
    )
    metrics: list[MetricName] = Field(default_factory=list, description="Metrics to aggregate; empty: all.")
    percentiles: list[float] = Field(default_factory=lambda: [95.0], description="Percentiles, e.g. [50, 95].")
    watermark_delay: Duration = Field(default="0s", description="How far the watermark trails the newest reading.")
    allowed_lateness: Duration = Field(default="0s", description="How long a window waits for late readings.")
    idle_timeout: Duration = Field(
        default="1m", description="Close a device's or group's windows when it sent nothing for this long."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        size = quantities.parse_duration(self.size)
        if size < 0.001:
            raise ValueError(f"window size {self.size!r} must be at least 1ms")
        if self.hop is not None and not 0.001 <= quantities.parse_duration(self.hop) <= size:
            raise ValueError(f"window hop {self.hop!r} must be between 1ms and the size {self.size!r}")
        for p in self.percentiles:
            if not 0 < p <= 100:
                raise ValueError(f"percentile {p!r} must be in (0, 100], e.g. 95 or 99.9")
        return self

    @cached_property
    def size_ms(self) -> int:
        return int(quantities.parse_duration(self.size) * 1000)

    @cached_property
    def hop_ms(self) -> int:
        return int(quantities.parse_duration(self.hop) * 1000) if self.hop else self.size_ms

    @cached_property
    def watermark_delay_ms(self) -> int:
        return int(quantities.parse_duration(self.watermark_delay) * 1000)

    @cached_property
    def allowed_lateness_ms(self) -> int:
        return int(quantities.parse_duration(self.allowed_lateness) * 1000)

    @cached_property
    def idle_timeout_ms(self) -> int:
        return int(quantities.parse_duration(self.idle_timeout) * 1000)


class AlertStep(Model):
    """Per device: `condition` must hold for `for` (event time) to fire; `clear` (default: not condition)
    must hold for `clearFor` to resolve. A clear threshold below the firing one gives hysteresis."""

    condition: Cel = Field(description=f"When the alert condition holds. Sees {_VARIABLES}.")
    for_: Duration = Field(default="0s", alias="for", description="How long the condition must hold to fire.")
    clear: Cel | None = Field(default=None, description="When a firing alert may resolve; default: !condition.")
    clear_for: Duration = Field(default="0s", description="How long `clear` must hold to resolve.")
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str = Field(default="", max_length=1024, description="Text carried by every event of this alert.")

    @cached_property
    def for_ms(self) -> int:
        return int(quantities.parse_duration(self.for_) * 1000)

    @cached_property
    def clear_for_ms(self) -> int:
        return int(quantities.parse_duration(self.clear_for) * 1000)


class CommandStep(Model):
    """When `condition` holds, send command `command` to `target`, at most once per `cooldown` per target."""

    condition: Cel = Field(description=f"When to send. Sees {_VARIABLES}.")
    command: MetricName = Field(description="The command's name, as the device knows it.")
    target: Cel = Field(default="device", description="CEL giving the target device id, e.g. 'cooler-' + labels.site.")
    params: Annotated[dict[MetricName, Any], WithJsonSchema({"type": "object"})] = Field(
        default_factory=dict, description="Fixed parameters: any JSON values, nested too."
    )
    computed_params: Annotated[dict[MetricName, Cel], _STRING_MAP] = Field(
        default_factory=dict, description="Parameters computed by CEL from the triggering reading."
    )
    ttl: Duration = Field(default="1m", description="The command expires this long after the triggering reading.")
    cooldown: Duration = Field(default="5m", description="Minimum event time between two commands to a target.")

    @cached_property
    def ttl_ms(self) -> int:
        return int(quantities.parse_duration(self.ttl) * 1000)

    @cached_property
    def cooldown_ms(self) -> int:
        return int(quantities.parse_duration(self.cooldown) * 1000)


class DedupeStep(Model):
    """Drop a reading whose (device, seq) was already seen within `horizon` of event time."""

    horizon: Duration = Field(default="10m", description="How far back in event time seqs are remembered.")

    @cached_property
    def horizon_ms(self) -> int:
        return int(quantities.parse_duration(self.horizon) * 1000)


_ONE_KIND_RULE = "[" + ", ".join(f"has(self.{k})" for k in STEP_KINDS) + "].filter(x, x).size() == 1"


class Step(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": _ONE_KIND_RULE, "message": f"a step has exactly one of: {', '.join(STEP_KINDS)}"}
            ]
        }
    )

    name: ResourceName = Field(description="Names the step in metrics, aggregates (step) and alerts (rule).")
    filter: FilterStep | None = None
    derive: DeriveStep | None = None
    window: WindowStep | None = None
    alert: AlertStep | None = None
    command: CommandStep | None = None
    dedupe: DedupeStep | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        present = [kind for kind in STEP_KINDS if getattr(self, kind) is not None]
        if len(present) != 1:
            found = ", ".join(present) or "none"
            raise ValueError(f"step {self.name!r} must have exactly one of {', '.join(STEP_KINDS)}; found {found}")
        return self

    @cached_property
    def kind(self) -> StepKind:
        return next(kind for kind in STEP_KINDS if getattr(self, kind) is not None)

    @property
    def body(self) -> FilterStep | DeriveStep | WindowStep | AlertStep | CommandStep | DedupeStep:
        value = getattr(self, self.kind)
        assert value is not None
        return value


def check_steps(steps: list[Step], processor_replicas: int) -> None:
    """Rules across steps: unique names, and label-grouped windows only where one replica sees every device."""
    seen: set[str] = set()
    for index, step in enumerate(steps):
        if step.name in seen:
            raise ValueError(f"steps[{index}].name {step.name!r} is used twice; step names must be unique")
        seen.add(step.name)
        if step.window is not None and step.window.group_by and processor_replicas > 1:
            raise ValueError(
                f"steps[{index}] ({step.name}) groups windows by labels {step.window.group_by}, which needs "
                f"processor.replicas 1 (got {processor_replicas}): a label group spans partitions of other "
                "replicas. Use per-device windows or one processor replica."
            )
