"""Transition rules: the API server refuses changes to a running fleet that would skip or lose data."""

from typing import Any

import cel
import pytest

from tests.operator.test_crd_rules import _spec_rule


def allowed(message: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    return bool(cel.evaluate(_spec_rule("DeviceFleet", message), {"self": new, "oldSelf": old}))


STOPPED = {"gateway": {"replicas": 0}}


@pytest.mark.parametrize(
    ("old", "new", "accepted"),
    [
        ({}, {}, True),
        ({"streams": {"partitions": 8}}, {}, True),  # 8 is the default
        ({"streams": {"partitions": 8}}, {"streams": {"partitions": 16}}, False),
        ({}, {"streams": {"partitions": 4}}, False),
        ({**STOPPED, "streams": {"partitions": 8}}, {"streams": {"partitions": 16}}, False),  # restarts the intake
        ({"streams": {"partitions": 8}}, {**STOPPED, "streams": {"partitions": 16}}, False),  # not stopped yet
        ({**STOPPED, "streams": {"partitions": 8}}, {**STOPPED, "streams": {"partitions": 16}}, True),
        ({"gateway": {"replicas": 0, "autoscaling": {}}}, {"gateway": {"replicas": 0, "autoscaling": {}},
                                                          "streams": {"partitions": 2}}, False),
        ({"streams": {"partitions": 8, "maxAge": "1d"}}, {"streams": {"partitions": 8, "maxAge": "2d"}}, True),
    ],
)  # fmt: skip
def test_partitions_change_only_while_the_intake_is_stopped(
    old: dict[str, Any], new: dict[str, Any], accepted: bool
) -> None:
    assert allowed("streams.partitions", old, new) is accepted


@pytest.mark.parametrize(
    ("old", "new", "accepted"),
    [
        ({}, {}, True),
        ({}, {"nats": {"managed": {"replicas": 3}}}, True),
        ({"nats": {"managed": {"replicas": 3}}}, {"nats": {"managed": {"replicas": 3, "storageSize": "20Gi"}}}, True),
        ({"nats": {"managed": {"replicas": 3}}}, {"nats": {"managed": {"replicas": 1}}}, False),
        ({"nats": {"managed": {"replicas": 3}}}, {"nats": {"managed": {}}}, False),
        ({"nats": {"managed": {"replicas": 3}}}, {}, False),
        ({"nats": {"external": {"url": "nats://x:4222"}}}, {"nats": {"managed": {"replicas": 1}}}, True),
    ],
)
def test_managed_nats_never_shrinks(old: dict[str, Any], new: dict[str, Any], accepted: bool) -> None:
    assert allowed("nats.managed.replicas cannot shrink", old, new) is accepted
