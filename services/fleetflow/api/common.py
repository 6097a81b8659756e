"""Building blocks shared by both custom resources: the model base, field types and status conditions."""

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from fleetflow.api import identifiers, quantities


class Model(BaseModel):
    """CR fields are camelCase in YAML and snake_case in Python; unknown fields are errors, not ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _duration(text: str) -> str:
    quantities.parse_duration(text)
    return text


def _size(value: int | str) -> int | str:
    quantities.parse_bytes(value)
    return value


Duration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": quantities.DURATION_PATTERN}),
]
Size = Annotated[
    int | str,
    AfterValidator(_size),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": quantities.BYTES_PATTERN}),
]
ResourceName = Annotated[
    str,
    AfterValidator(identifiers.check_resource_name),
    WithJsonSchema({"type": "string", "pattern": identifiers.RESOURCE_NAME.pattern}),
]
TableName = Annotated[
    str,
    AfterValidator(identifiers.check_table_name),
    WithJsonSchema({"type": "string", "pattern": identifiers.TABLE_NAME.pattern}),
]


class SecretKeyRef(Model):
    """A key of a Kubernetes Secret in the resource's namespace."""

    name: ResourceName
    key: str = Field(default="secret", min_length=1, max_length=253)


class ObjectRef(Model):
    name: ResourceName


class Condition(Model):
    """A status condition following the Kubernetes API conventions."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class Metadata(Model):
    """The part of ObjectMeta fleetflow reads; everything else is passed through untouched."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    name: ResourceName
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
