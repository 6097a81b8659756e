"""Simulated devices are named as the fleet's real devices would be, so they get the same labels."""

from typing import Any

from fleetflow.api import DeviceFleet
from fleetflow.device.simulator import simulated_device_ids


def fleet(devices: dict[str, Any]) -> DeviceFleet:
    return DeviceFleet.model_validate({"metadata": {"name": "cold"}, "spec": {"devices": devices}})


def test_ids_take_the_most_specific_literal_prefixes_of_the_label_rules_in_turn() -> None:
    cold_chain = fleet({"labels": [{"match": "^box-a", "labels": {"cooler": "cooler-a"}},
                                   {"match": "^box-b", "labels": {"cooler": "cooler-b"}},
                                   {"match": "^box-", "labels": {"kind": "reefer"}}]})  # fmt: skip
    ids = simulated_device_ids(cold_chain, 3)
    assert ids == ["box-a-0000", "box-b-0000", "box-a-0001"]
    assert [cold_chain.spec.devices.labels_of(d)["cooler"] for d in ids] == ["cooler-a", "cooler-b", "cooler-a"]
    assert simulated_device_ids(fleet({"labels": [{"match": "^sim-", "labels": {}}]}), 2) == ["sim-0000", "sim-0001"]


def test_without_a_literal_prefix_or_against_the_id_pattern_they_are_sim_devices() -> None:
    assert simulated_device_ids(fleet({"labels": [{"match": "a$", "labels": {}}]}), 1) == ["sim-0000"]
    strict = fleet({"idPattern": "^box-[0-9]+$", "labels": [{"match": "^box-a", "labels": {}}]})
    assert simulated_device_ids(strict, 1) == ["sim-0000"]
