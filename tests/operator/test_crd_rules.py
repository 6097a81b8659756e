"""The CRDs' x-kubernetes-validations rules compile as CEL and refuse what the models refuse."""

from typing import Any

import cel
import pytest

from fleetflow.api.crds import all_crds


def rules(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path or "(root)", rule) for rule in node.get("x-kubernetes-validations", [])]
    for name, child in (node.get("properties") or {}).items():
        found += rules(child, f"{path}.{name}")
    if node.get("type") == "array":
        found += rules(node["items"], f"{path}[]")
    return found


def all_rules() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{crd['spec']['names']['kind']}{path}", rule) for crd in all_crds().values()
            for path, rule in rules(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])]  # fmt: skip


@pytest.mark.parametrize(("where", "rule"), all_rules(), ids=[where for where, _ in all_rules()])
def test_every_rule_compiles_and_says_what_is_wrong(where: str, rule: dict[str, Any]) -> None:
    cel.compile(rule["rule"])
    assert rule["message"], f"{where}: a rule needs a message that names the field"


def _spec_rule(kind: str, message: str = "") -> str:
    (rule,) = [r["rule"] for where, r in all_rules() if where == f"{kind}.spec" and message in r["message"]]
    return rule


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        ({}, True),
        ({"streams": {"replicas": 1}}, True),
        ({"streams": {"replicas": 3}, "nats": {"managed": {"replicas": 3}}}, True),
        ({"streams": {"replicas": 3}, "nats": {"external": {"url": "nats://x:4222"}}}, True),
        ({"streams": {"replicas": 3}}, False),
        ({"streams": {"replicas": 3}, "nats": {"managed": {"replicas": 1}}}, False),
    ],
)
def test_stream_replicas_must_fit_the_managed_nats(spec: dict[str, Any], accepted: bool) -> None:
    assert cel.evaluate(_spec_rule("DeviceFleet", "streams.replicas"), {"self": spec}) is accepted


@pytest.mark.parametrize(
    ("spec", "accepted"),
    [
        ({}, True),
        ({"gateway": {"maxBodyBytes": 8388608}}, True),  # a managed NATS is sized to it
        ({"nats": {"external": {"url": "nats://x:4222"}}}, True),  # 1 MiB bodies, 1 MiB max_payload
        ({"nats": {"external": {"url": "nats://x:4222"}}, "gateway": {"maxBodyBytes": 2097152}}, False),
        ({"nats": {"external": {"url": "nats://x:4222", "maxPayloadBytes": 8388608}},
          "gateway": {"maxBodyBytes": 2097152}}, True),
    ],
)  # fmt: skip
def test_bodies_must_fit_an_external_nats(spec: dict[str, Any], accepted: bool) -> None:
    from fleetflow.api import DeviceFleet

    assert cel.evaluate(_spec_rule("DeviceFleet", "maxPayloadBytes"), {"self": spec}) is accepted
    document = {"metadata": {"name": "f"}, "spec": spec}
    if accepted:
        DeviceFleet.model_validate(document)
    else:
        with pytest.raises(ValueError, match=r"gateway\.maxBodyBytes 2097152 exceeds nats\.external\.maxPayloadBytes"):
            DeviceFleet.model_validate(document)


def test_nats_external_and_managed_exclude_each_other() -> None:
    (rule,) = [r["rule"] for where, r in all_rules() if where == "DeviceFleet.spec.nats"]
    assert cel.evaluate(rule, {"self": {"external": {"url": "nats://x"}}}) is True
    assert cel.evaluate(rule, {"self": {"external": {"url": "nats://x"}, "managed": {}}}) is False


@pytest.mark.parametrize(
    ("tls", "accepted"),
    [
        ({"secretName": "cold-tls"}, True),
        ({"generate": True}, True),
        ({"secretName": "cold-tls", "generate": False}, True),
        ({}, False),
        ({"generate": False}, False),
        ({"secretName": "cold-tls", "generate": True}, False),
    ],
)
def test_tls_takes_a_secret_or_generate_at_apply_time(tls: dict[str, Any], accepted: bool) -> None:
    for where in ("DeviceFleet.spec.gateway.tls", "DeviceFleet.spec.nats.managed.tls"):
        (rule,) = [r["rule"] for w, r in all_rules() if w == where]
        assert cel.evaluate(rule, {"self": tls}) is accepted, where
