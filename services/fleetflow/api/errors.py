"""Turning validation errors into messages that name the field, the value and what is accepted."""

from typing import Any

import pydantic


class SpecError(ValueError):
    """A custom resource that does not validate. `problems` holds one line per offending field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(document)"


def describe(error: pydantic.ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `spec.gateway.replicas = 0: Input should be greater than or equal to 1`."""
    lines = []
    for item in error.errors(include_url=False):
        where = _location(tuple(prefix.split(".")) + tuple(item["loc"]) if prefix else tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field (check its spelling and indentation)")
        else:
            lines.append(f"{where} = {item['input']!r}: {message}")
    return lines
