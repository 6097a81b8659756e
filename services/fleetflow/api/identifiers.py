"""Identifier rules. Identifiers become NATS subject tokens, stream names, Kubernetes object names and table
names, so they never contain dots, wildcards, spaces, slashes or quotes.

Check them with `fullmatch` (see `check`): in Python `$` also matches before a trailing newline, so
`match("dev-1\\n")` passes a newline into a NATS subject. The patterns keep `^...$` for JSON schema and CEL."""

import re

# A DNS label short enough that derived names such as "<fleet>-gateway-metrics" stay within 63 characters.
RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
RESOURCE_NAME_RULE = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 40"

DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
DEVICE_ID_RULE = "letters, digits, '_' and '-', starting with a letter or digit, at most 128"

METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
METRIC_NAME_RULE = "letters, digits and '_', not starting with a digit, at most 64"

TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
TABLE_NAME_RULE = "lowercase letters, digits and '_', starting with a letter, at most 48"


def check(value: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    """Return `value` if it matches `pattern`, else raise ValueError naming the value and the rule."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not valid: use {rule}")
    return value


def is_device_id(value: str) -> bool:
    return DEVICE_ID.fullmatch(value) is not None


def check_resource_name(value: str, what: str = "name") -> str:
    return check(value, RESOURCE_NAME, what, RESOURCE_NAME_RULE)


def check_device_id(value: str) -> str:
    return check(value, DEVICE_ID, "device id", DEVICE_ID_RULE)


def check_metric_name(value: str) -> str:
    return check(value, METRIC_NAME, "metric name", METRIC_NAME_RULE)


def check_table_name(value: str) -> str:
    return check(value, TABLE_NAME, "table name", TABLE_NAME_RULE)
