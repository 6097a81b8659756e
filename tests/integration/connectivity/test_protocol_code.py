"""The committed gRPC code is what the proto generates (regenerate: python -m fleetflow.device.protogen)."""

from fleetflow.device import protogen


def test_committed_grpc_code_matches_the_proto() -> None:
    for name, text in protogen.generate().items():
        committed = (protogen.OUTPUT / name).read_text()
        assert committed == text, f"{name} is stale: run `python -m fleetflow.device.protogen` and commit the result"
