"""Edge sites as NATS sees them: the site's streams, the centre's sources, both ends of the leaf connection, and
the errors a user gets for a bad site, hub URL or credentials file (docs/edge.md)."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.js.api import DiscardPolicy

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.local.resources import central_resources, load_resources, site_resources
from fleetflow.local.sitelogins import read_site_password
from fleetflow.runtime import edgelink, jetstream, subjects


def fleet(*sites: dict[str, Any]) -> DeviceFleet:
    document = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": "depot"},
                "spec": {"sites": list(sites)}}  # fmt: skip
    resource = parse_resource(document)
    assert isinstance(resource, DeviceFleet)
    return resource


def pipeline(name: str) -> Pipeline:
    document = {"apiVersion": "fleetflow.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
                "spec": {"fleetRef": {"name": "depot"}, "steps": []}}  # fmt: skip
    resource = parse_resource(document)
    assert isinstance(resource, Pipeline)
    return resource


def telemetry(streams: list[Any]) -> Any:
    return next(s for s in streams if s.name == subjects.telemetry_stream("depot"))


def test_the_centre_sources_the_telemetry_of_each_site_that_forwards_readings() -> None:
    depot = fleet({"name": "a"}, {"name": "b", "forward": {"readings": False}})
    sources = telemetry(jetstream.fleet_streams(depot)).sources
    assert [(s.name, s.external.api) for s in sources] == [("ff-depot-telemetry", "$JS.depot-a.API")]
    assert telemetry(jetstream.fleet_streams(fleet())).sources is None  # a fleet without sites is as before


@pytest.mark.parametrize(
    ("when_full", "discard"), [("RejectNew", DiscardPolicy.NEW), ("DropOldest", DiscardPolicy.OLD)]
)
def test_a_site_keeps_its_telemetry_within_its_budget_and_sources_nothing(when_full: str, discard: str) -> None:
    depot = fleet({"name": "a", "storage": {"maxBytes": "64Mi", "maxAge": "2d", "whenFull": when_full}})
    stream = telemetry(jetstream.fleet_streams(depot, site="a"))
    assert (stream.max_bytes, stream.max_age, stream.discard, stream.sources) == (64 * 2**20, 2 * 86400, discard, None)
    centre = telemetry(jetstream.fleet_streams(depot))
    assert stream.subject_transform == centre.subject_transform  # a device's partition is the same on both sides


def test_the_centre_sources_only_the_record_kinds_a_site_forwards() -> None:
    depot = fleet({"name": "a", "pipelines": ["edge"], "forward": {"records": ["aggregates", "alerts"]}})
    (out,) = jetstream.pipeline_streams(depot, pipeline("edge"))
    (source,) = out.sources
    assert [t.src for t in source.subject_transforms] == ["ff.depot.pl.edge.aggregates.>", "ff.depot.pl.edge.alerts.>"]
    assert jetstream.pipeline_streams(depot, pipeline("edge"), site="a")[0].sources is None


def test_the_leaf_connection_keeps_the_fleets_subjects_on_their_side() -> None:
    site = edgelink.leaf_remote_config("nats://hub.example:7422", "depot-a", "Secret1", "FLEETFLOW")
    assert 'url: "nats://depot-a:Secret1@hub.example:7422", account: FLEETFLOW' in site
    assert 'deny_exports: ["ff.>", "$MQTT.>"], deny_imports: ["ff.>", "$MQTT.>"]' in site
    hub = edgelink.hub_leafnodes_config("127.0.0.1", 7422)
    assert "listen: 127.0.0.1:7422" in hub and "no_advertise: true" in hub and "tls" not in hub


def test_each_site_logs_in_to_an_account_of_its_own_whose_deliveries_alone_reach_the_fleets() -> None:
    linked = edgelink.hub_site_accounts({"depot-a": '"Secret1"', "depot-b": '"Secret2"'})
    assert [account.split(" ", 1)[0] for account in linked.accounts] == ["site-depot-a", "site-depot-b"]
    assert (
        'users: [ { user: depot-a, password: "Secret1", allowed_connection_types: [LEAFNODE] } ]' in linked.accounts[0]
    )
    assert linked.users == ("depot-a", "depot-b"), "the auth callout lets the sites' users through"
    assert not any("ff." in entry for entry in linked.accounts + linked.imports)
    imported = [entry for entry in linked.imports if "site-depot-a" in entry]
    assert imported == [
        '{ service: { account: site-depot-a, subject: "$JS.depot-a.API.>" } }',
        '{ stream: { account: site-depot-a, subject: "fleetflow-site.depot-a.deliver.>" } }',
        '{ service: { account: site-depot-a, subject: "$JS.FC.>" } }',
        '{ service: { account: site-depot-a, subject: "fleetflow-site.depot-a.commands.>" } }',
    ]
    depot = fleet({"name": "a"})
    (source,) = edgelink.telemetry_sources(depot)
    assert source.external is not None and source.external.deliver == "fleetflow-site.depot-a.deliver"


def test_a_site_stores_the_commands_the_centre_pushes_under_its_devices_command_subjects() -> None:
    depot = fleet({"name": "a"})
    at_site = next(s for s in jetstream.fleet_streams(depot, site="a") if s.name == subjects.commands_stream("depot"))
    assert at_site.subjects == ["ff.depot.cmd.>", "fleetflow-site.depot-a.commands.*"]
    assert at_site.subject_transform is not None
    assert (at_site.subject_transform.src, at_site.subject_transform.dest) == (
        "fleetflow-site.depot-a.commands.*", "ff.depot.cmd.{{wildcard(1)}}")  # fmt: skip
    assert edgelink.site_command_subject("depot-a", "box-1") == "fleetflow-site.depot-a.commands.box-1"
    centre = next(s for s in jetstream.fleet_streams(depot) if s.name == subjects.commands_stream("depot"))
    assert centre.subjects == ["ff.depot.cmd.>"] and centre.subject_transform is None


def test_the_site_a_sourced_reading_came_from_is_read_from_its_stream_source_header() -> None:
    depot = fleet({"name": "a"}, {"name": "b"}, {"name": "c", "forward": {"readings": False}})
    # nats-server names a source from another domain `<stream>:<getHash(api prefix)>` in the header; the end-to-end
    # test (test_edge_commands.py) checks this against a real server's header.
    name = edgelink.source_index_name("ff-depot-telemetry", "$JS.depot-a.API")
    assert name == "ff-depot-telemetry:e65DEuoM"
    assert edgelink.origin_site(depot, f"{name} 17 > >") == "a"
    assert (
        edgelink.origin_site(depot, f"{edgelink.source_index_name('ff-depot-telemetry', '$JS.depot-b.API')} 3") == "b"
    )
    assert edgelink.origin_site(depot, None) is None  # stored by a gateway of the centre
    assert edgelink.origin_site(depot, "ff-depot-telemetry:Unknown1 4 > >") is None
    assert set(edgelink.telemetry_origins(depot).values()) == {"a", "b"}  # c forwards no readings


def test_over_tls_the_hub_serves_its_certificate_and_the_site_trusts_the_given_ca() -> None:
    hub = edgelink.hub_leafnodes_config("127.0.0.1", 7422, ("/c/tls.crt", "/c/tls.key"))
    assert 'cert_file: "/c/tls.crt"' in hub and 'key_file: "/c/tls.key"' in hub
    site = edgelink.leaf_remote_config("tls://hub.example:7422", "depot-a", "S1", "FLEETFLOW", "/c/ca.crt")
    assert 'url: "tls://depot-a:S1@hub.example:7422"' in site and 'tls { ca_file: "/c/ca.crt" }' in site


@pytest.mark.parametrize("url", ["hub.example:7422", "nats://hub.example", "nats://u:p@hub:7422", "tls://hub",
                                 "http://hub:7422", "nats://hub:7422/x", "nats://hub:99999"])  # fmt: skip
def test_a_bad_hub_url_is_refused_naming_it_and_what_is_accepted(url: str) -> None:
    with pytest.raises(ValueError, match=r"--hub .*: use nats://HOST:PORT or tls://HOST:PORT") as caught:
        edgelink.check_hub_url(url)
    assert repr(url) in str(caught.value)


def test_choosing_a_site_names_the_declared_ones() -> None:
    two = fleet({"name": "a"}, {"name": "b"})
    assert edgelink.find_site(two, "b").name == "b"
    with pytest.raises(ValueError, match="declares sites a, b: choose one with --site"):
        edgelink.find_site(two, None)
    with pytest.raises(ValueError, match="--site 'c': DeviceFleet 'depot' declares sites a, b"):
        edgelink.find_site(two, "c")
    with pytest.raises(ValueError, match="declares no sites"):
        edgelink.find_site(fleet(), None)


def test_site_declarations_that_cannot_work_are_refused() -> None:
    with pytest.raises(SpecError, match="'a' is declared twice"):
        fleet({"name": "a"}, {"name": "a"})
    with pytest.raises(SpecError, match=r"forward\.records .* the site lists no pipelines"):
        fleet({"name": "a", "forward": {"records": ["alerts"]}})
    with pytest.raises(SpecError, match="whenFull"):
        fleet({"name": "a", "storage": {"whenFull": "Overwrite"}})
    with pytest.raises(SpecError, match=r"spec\.sites\[0\]\.name = 'Site\.A'"):
        fleet({"name": "Site.A"})


def write(folder: Path, site: dict[str, Any], pipelines: list[str]) -> Path:
    docs = [{"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet", "metadata": {"name": "depot"},
             "spec": {"sites": [site]}}]  # fmt: skip
    docs += [{"apiVersion": "fleetflow.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
              "spec": {"fleetRef": {"name": "depot"}, "steps": []}} for name in pipelines]  # fmt: skip
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return folder


def test_the_centre_runs_what_is_not_the_sites_and_a_site_runs_its_own(tmp_path: Path) -> None:
    kept = load_resources([write(tmp_path, {"name": "a", "pipelines": ["edge"]}, ["edge", "central"])])
    assert list(central_resources(kept).pipelines) == ["central"]
    assert list(site_resources(kept, "depot", "a").pipelines) == ["edge"]
    forwarded = write(tmp_path, {"name": "a", "pipelines": ["edge"], "forward": {"records": ["alerts"]}},
                      ["edge", "central"])  # fmt: skip
    assert sorted(central_resources(load_resources([forwarded])).pipelines) == ["central", "edge"]  # its writer


def test_a_site_listing_an_unknown_pipeline_is_refused_naming_the_defined_ones(tmp_path: Path) -> None:
    with pytest.raises(
        SpecError, match=r"spec.sites\[a\].pipelines: 'edg' is no Pipeline of fleet 'depot'; defined: edge"
    ):
        load_resources([write(tmp_path, {"name": "a", "pipelines": ["edg"]}, ["edge"])])


@pytest.mark.parametrize(("content", "problem"), [("", "must hold the site's password only"),
                                                   ("user: x\n", "must hold the site's password only")])  # fmt: skip
def test_a_credentials_file_must_hold_the_password_only(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "site.password"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        read_site_password(path)
    with pytest.raises(ValueError, match="cannot read it"):
        read_site_password(tmp_path / "missing")
    path.write_text("Abc123\n")
    assert read_site_password(path) == "Abc123"
