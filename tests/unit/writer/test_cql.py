"""The Cassandra schema and statements generated from a Pipeline's sink, checked without a server."""

import re
from typing import Any

import pytest

from fleetflow.api.pipeline import SinkSpec
from fleetflow.writer.stores import cql


def sink(**cassandra: Any) -> SinkSpec:
    ttl = cassandra.pop("ttl", "30d")
    tables = cassandra.pop("tables", {})
    spec = {"contactPoints": ["10.0.0.1"], "localDc": "dc1", **cassandra}
    return SinkSpec.model_validate({"kind": "cassandra", "ttl": ttl, "tables": tables, "cassandra": spec})


def table(schema: list[str], name: str) -> str:
    [statement] = [s for s in schema if re.search(rf'CREATE TABLE IF NOT EXISTS "[a-z0-9_]+"\."{name}" ', s)]
    return statement


def schema_of(spec: SinkSpec) -> list[str]:
    """The statements of every migration, as a new keyspace gets them."""
    return [s for migration in cql.migrations(cql.layout(spec)) for s in migration.statements]


def test_the_default_sink_yields_the_documented_schema() -> None:
    lay = cql.layout(sink())
    schema = schema_of(sink())

    assert cql.keyspace_cql(lay) == (
        "CREATE KEYSPACE IF NOT EXISTS \"fleetflow\" WITH replication = {'class': 'NetworkTopologyStrategy', "
        "'dc1': 3} AND durable_writes = true"
    )
    readings = table(schema, "readings")
    assert "PRIMARY KEY ((fleet, device, bucket), ts, seq)" in readings
    assert "CLUSTERING ORDER BY (ts DESC, seq DESC)" in readings
    assert "metrics frozen<map<text, double>>" in readings  # frozen: an insert writes no collection tombstone
    assert "default_time_to_live = 2592000" in readings
    assert (
        "compaction = {'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', "
        "'compaction_window_size': '1'}" in readings
    )
    assert "read_repair = 'NONE'" in readings
    assert "PRIMARY KEY ((fleet, pipeline, grp, bucket), window_start, step, metric)" in table(
        schema, "window_aggregates"
    )
    assert "PRIMARY KEY ((fleet, pipeline, bucket), ts, device, rule, state)" in table(schema, "alerts")
    latest = table(schema, "device_latest")
    assert "PRIMARY KEY ((fleet, device))" in latest and "LeveledCompactionStrategy" in latest
    assert "default_time_to_live" not in latest  # one row per device: it does not grow, and must not vanish
    assert "PRIMARY KEY ((fleet, device, bucket), created, id)" in table(schema, "command_log")
    assert "PRIMARY KEY ((tbl, fleet, scope), bucket, member)" in table(schema, cql.PARTITION_INDEX)


@pytest.mark.parametrize(
    ("bucket", "window"),
    [("1d", ("DAYS", 1)), ("2d", ("DAYS", 2)), ("6h", ("HOURS", 6)), ("90m", ("MINUTES", 90)), ("1m", ("MINUTES", 1)),
     ("1h30m", ("MINUTES", 90)), ("48h", ("DAYS", 2))],
)  # fmt: skip
def test_the_twcs_window_is_exactly_one_bucket(bucket: str, window: tuple[str, int]) -> None:
    spec = sink(bucket=bucket)
    unit, size = window

    assert cql.twcs_window(cql.layout(spec).bucket_ms) == window
    for name in ("readings", "window_aggregates", "alerts", "command_log"):
        statement = table(schema_of(spec), name)
        assert f"'compaction_window_unit': '{unit}', 'compaction_window_size': '{size}'" in statement


def test_replication_ttl_consistency_and_table_names_come_from_the_spec() -> None:
    spec = sink(
        keyspace="telemetry",
        localDc="eu-west",
        replication={"eu-west": 3, "us-east": 2},
        ttl="7d",
        consistency="LOCAL_ONE",
        tables={"readings": "raw", "aggregates": "rollups", "alerts": "order", "latest": "now", "commands": "cmds"},
    )
    lay = cql.layout(spec)
    schema = schema_of(spec)

    assert "'eu-west': 3, 'us-east': 2" in cql.keyspace_cql(lay)
    assert lay.consistency == "LOCAL_ONE"
    for name in ("raw", "rollups", "order", "now", "cmds"):
        assert f'"telemetry"."{name}"' in table(schema, name)  # quoted: `order` is a CQL keyword
    assert "default_time_to_live = 604800" in table(schema, "raw")
    text = cql.statements(lay)
    assert text.insert_reading.startswith('INSERT INTO "telemetry"."raw" ')
    assert '"telemetry"."order"' in text.select_alerts


def test_every_statement_binds_every_value() -> None:
    text = cql.statements(cql.layout(sink()))
    for name, statement in vars(text).items():
        assert "'" not in statement, f"{name} holds a literal; values must be bind markers"
        insert = re.match(r"INSERT INTO \S+ \(([^)]*)\) VALUES \(([^)]*)\)", statement)
        if insert:
            columns, markers = insert.group(1).split(", "), insert.group(2).split(", ")
            assert markers == ["?"] * len(columns), name
    assert text.upsert_latest.endswith("USING TIMESTAMP ?")
    assert text.insert_index.endswith("USING TTL ?")
    assert text.claim_version.endswith("IF NOT EXISTS")
    assert text.take_over_version.endswith("IF owner = ? AND applied_at = null")
    assert text.select_readings.endswith("WHERE fleet = ? AND device = ? AND bucket = ? AND ts >= ? AND ts < ?")


def test_the_ledger_table_id_is_derived_from_the_keyspace() -> None:
    first, again, other = (cql.ledger_cql(cql.layout(sink(keyspace=k))) for k in ("ks1", "ks1", "ks2"))

    assert first == again != other
    assert f"WITH ID = '{cql.ledger_table_id('ks1')}'" in first
    assert "PRIMARY KEY ((scope), version)" in first


def test_migration_versions_are_ordered_and_only_create_if_missing() -> None:
    versions = cql.migrations(cql.layout(sink()))
    assert [m.version for m in versions] == list(range(1, len(versions) + 1))
    for migration in versions:  # re-runnable: a claim taken over re-runs them (see cassandra_schema.apply)
        for statement in migration.statements:
            assert statement.startswith(("CREATE TABLE IF NOT EXISTS ", "ALTER TABLE ")), statement
            assert not statement.startswith("ALTER TABLE ") or " ADD (" in statement, statement


def test_the_command_log_gains_state_and_history_written_so_a_late_older_state_loses() -> None:
    schema = schema_of(sink())
    assert 'ALTER TABLE "fleetflow"."command_log" ADD (state text, history text)' in schema
    text = cql.statements(cql.layout(sink()))
    assert "state, history) VALUES" in text.insert_command and text.insert_command.endswith("USING TIMESTAMP ?")
    assert "state, history FROM" in text.select_commands


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"localDc": "dc1'; DROP KEYSPACE x; --"}, 'datacenter name "dc1\'; DROP KEYSPACE x; --" is not valid'),
        ({"replication": {"dc1": 3, "dc'2": 1}}, 'datacenter name "dc\'2" is not valid'),
        ({"replication": {"dc2": 3}}, "sink.cassandra.localDc 'dc1' has no replicas"),
        ({"replication": {"dc1": 0}}, "sink.cassandra.replication.dc1 is 0: use 1..12 replicas"),
        ({"bucket": "30s"}, "sink.cassandra.bucket '30s' is not valid: use whole minutes"),
        ({"bucket": "90s"}, "sink.cassandra.bucket '90s' is not valid"),
        ({"ttl": "1500ms"}, "sink.ttl '1500ms' is not valid for Cassandra"),
        ({"tables": {"readings": "alerts"}}, "name one table twice"),
        ({"tables": {"readings": cql.LEDGER}}, f"table name '{cql.LEDGER}' is used by fleetflow itself"),
    ],
)
def test_invalid_sinks_are_refused_naming_the_value(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cql.layout(sink(**spec))


def test_the_api_refuses_table_and_keyspace_names_that_could_splice_cql() -> None:
    with pytest.raises(ValueError, match="keyspace"):
        sink(keyspace='ks"; DROP')


def test_buckets_cover_a_range_at_its_edges() -> None:
    hour = 3_600_000
    assert cql.bucket_of(5 * hour + 1, hour) == 5 * hour
    assert cql.buckets_between(5 * hour, 7 * hour, hour) == (5 * hour, 6 * hour)  # until is exclusive
    assert cql.buckets_between(5 * hour + 10, 5 * hour + 10, hour) == (5 * hour, 5 * hour)
