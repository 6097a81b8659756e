"""The Cassandra schema and statements, generated from a Pipeline's sink by pure functions.

Only validated identifiers (keyspace, table and datacenter names from the spec, checked again here) and
numbers the code computed reach CQL text; every value a device or a user sends travels as a bind marker.
Identifiers are double-quoted as well, so a table named like a CQL keyword (`order`) still works."""

import re
import uuid
from dataclasses import dataclass

from fleetflow.api import quantities
from fleetflow.api.identifiers import check_table_name
from fleetflow.api.pipeline import SinkSpec, Tables

# Internal tables next to the user-named ones; a sink may not name its tables like them.
PARTITION_INDEX = "fleetflow_partitions"
LEDGER = "fleetflow_schema_migrations"
RESERVED_TABLES = (PARTITION_INDEX, LEDGER)

DATACENTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DATACENTER_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 64"
MAX_REPLICAS = 12
DEFAULT_REPLICAS = 3
# Cassandra refuses TTLs beyond 20 years.
MAX_TTL_SECONDS = 20 * 365 * 86400
# Rows are only ever written with a TTL and never deleted, so an expired cell cannot be resurrected by a
# replica that missed a delete; gc_grace only needs to cover the hint window (3 h by default).
GC_GRACE_SECONDS = 10800
# Index rows outlive the data they point to: they are rewritten at least this often while data arrives.
INDEX_REFRESH_SECONDS = 3600
EPOCH_BUCKET = 0
NAMESPACE = uuid.UUID("5b0b7c1e-8a1f-4a57-9a3f-6b2f7f2f0f10")


@dataclass(frozen=True)
class Layout:
    """Everything the schema and the statements depend on, validated once."""

    keyspace: str
    tables: Tables
    local_dc: str
    replication: dict[str, int]
    bucket_ms: int
    ttl_seconds: int
    consistency: str

    def qualified(self, table: str) -> str:
        return f'"{self.keyspace}"."{table}"'

    @property
    def scope(self) -> str:
        """Names the set of tables one ledger entry migrates; pipelines may share a keyspace."""
        t = self.tables
        return f"{t.readings},{t.aggregates},{t.alerts},{t.latest},{t.commands}"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def check_datacenter(name: str) -> str:
    if not isinstance(name, str) or not DATACENTER.fullmatch(name):
        raise ValueError(f"datacenter name {name!r} is not valid: use {DATACENTER_RULE}")
    return name


def layout(sink: SinkSpec) -> Layout:
    """The validated layout of a cassandra sink; ValueError naming the offending field and value."""
    if sink.kind != "cassandra" or sink.cassandra is None:
        raise ValueError(f"sink.kind is {sink.kind!r}: a Cassandra layout needs kind 'cassandra' and sink.cassandra")
    spec = sink.cassandra
    local_dc = check_datacenter(spec.local_dc)
    replication = dict(spec.replication) or {local_dc: DEFAULT_REPLICAS}
    for dc, replicas in replication.items():
        check_datacenter(dc)
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"sink.cassandra.replication.{dc} is {replicas}: use 1..{MAX_REPLICAS} replicas")
    if local_dc not in replication:
        raise ValueError(
            f"sink.cassandra.localDc {local_dc!r} has no replicas in sink.cassandra.replication "
            f"{replication}; add it, or LOCAL_* consistency levels cannot be met"
        )
    return Layout(
        keyspace=check_table_name(spec.keyspace),
        tables=check_tables(sink.tables),
        local_dc=local_dc,
        replication=replication,
        bucket_ms=bucket_ms(spec.bucket),
        ttl_seconds=ttl_seconds(sink.ttl, sink.ttl_seconds),
        consistency=spec.consistency,
    )


def check_tables(tables: Tables) -> Tables:
    names = [check_table_name(name) for name in tables.model_dump().values()]
    for name in names:
        if name in RESERVED_TABLES:
            raise ValueError(f"table name {name!r} is used by fleetflow itself; avoid {', '.join(RESERVED_TABLES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"sink.tables {tables.model_dump()} name one table twice; every table needs its own name")
    return tables


def bucket_ms(text: str) -> int:
    """The readings bucket in milliseconds: whole minutes, since TWCS windows are counted in minutes at least."""
    seconds = quantities.parse_duration(text)
    if seconds < 60 or seconds % 60:
        raise ValueError(f"sink.cassandra.bucket {text!r} is not valid: use whole minutes, at least 1m (e.g. 1h, 1d)")
    return int(seconds * 1000)


def ttl_seconds(text: str, seconds: float) -> int:
    if not 1 <= seconds <= MAX_TTL_SECONDS or seconds != int(seconds):
        raise ValueError(f"sink.ttl {text!r} is not valid for Cassandra: use whole seconds from 1s to 20 years")
    return int(seconds)


def twcs_window(bucket: int) -> tuple[str, int]:
    """TWCS (unit, size) covering exactly one bucket of `bucket` milliseconds, in the largest exact unit."""
    minutes = bucket // 60000
    for unit, per in (("DAYS", 1440), ("HOURS", 60)):
        if minutes % per == 0:
            return unit, minutes // per
    return "MINUTES", minutes


def bucket_of(ts_ms: int, bucket: int) -> int:
    """Start (epoch ms) of the bucket holding `ts_ms`."""
    return ts_ms - ts_ms % bucket


def buckets_between(since_ms: int, until_ms: int, bucket: int) -> tuple[int, int]:
    """First and last bucket start that can hold a ts with since_ms <= ts < until_ms."""
    return bucket_of(since_ms, bucket), bucket_of(max(since_ms, until_ms - 1), bucket)


def keyspace_cql(lay: Layout) -> str:
    replicas = ", ".join(f"'{dc}': {n}" for dc, n in sorted(lay.replication.items()))
    return (
        f'CREATE KEYSPACE IF NOT EXISTS "{lay.keyspace}" WITH replication = '
        f"{{'class': 'NetworkTopologyStrategy', {replicas}}} AND durable_writes = true"
    )


def ledger_table_id(keyspace: str) -> uuid.UUID:
    """A table id derived from the name: writers creating the ledger at once create the same table.

    Two coordinators creating one table concurrently with random ids leave the cluster with conflicting
    schema ("Column family ID mismatch"); with one id the creations converge. Every later table is created by
    the one writer that won the version's lightweight transaction in the ledger."""
    return uuid.uuid5(NAMESPACE, f"{keyspace}.{LEDGER}")


def ledger_cql(lay: Layout) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {lay.qualified(LEDGER)} (
    scope text,
    version int,
    description text,
    owner uuid,
    claimed_at timestamp,
    applied_at timestamp,
    PRIMARY KEY ((scope), version)
) WITH ID = '{ledger_table_id(lay.keyspace)}'
    AND comment = 'fleetflow schema versions, claimed with lightweight transactions'"""


def _time_series_options(lay: Layout, comment: str) -> str:
    unit, size = twcs_window(lay.bucket_ms)
    return (
        f"    AND default_time_to_live = {lay.ttl_seconds}\n"
        f"    AND gc_grace_seconds = {GC_GRACE_SECONDS}\n"
        f"    AND compaction = {{'class': 'TimeWindowCompactionStrategy', "
        f"'compaction_window_unit': '{unit}', 'compaction_window_size': '{size}'}}\n"
        # Read repair writes old rows into new SSTables, which defeats TWCS dropping whole expired files.
        f"    AND read_repair = 'NONE'\n"
        f"    AND comment = '{comment}'"
    )


def migrations(lay: Layout) -> list[Migration]:
    """Schema versions in order. Only ever append: a released version's statements never change."""
    t, q = lay.tables, lay.qualified
    readings = f"""CREATE TABLE IF NOT EXISTS {q(t.readings)} (
    fleet text,
    device text,
    bucket timestamp,
    ts timestamp,
    seq bigint,
    metrics frozen<map<text, double>>,
    stored_at timestamp,
    PRIMARY KEY ((fleet, device, bucket), ts, seq)
) WITH CLUSTERING ORDER BY (ts DESC, seq DESC)
{_time_series_options(lay, "fleetflow readings: one partition per device and bucket")}"""
    aggregates = f"""CREATE TABLE IF NOT EXISTS {q(t.aggregates)} (
    fleet text,
    pipeline text,
    grp text,
    bucket timestamp,
    window_start timestamp,
    step text,
    metric text,
    window_end timestamp,
    sample_count bigint,
    min_value double,
    max_value double,
    mean_value double,
    sum_value double,
    last_value double,
    percentiles frozen<map<text, double>>,
    PRIMARY KEY ((fleet, pipeline, grp, bucket), window_start, step, metric)
) WITH CLUSTERING ORDER BY (window_start ASC, step ASC, metric ASC)
{_time_series_options(lay, "fleetflow window aggregates: one partition per group and bucket")}"""
    alerts = f"""CREATE TABLE IF NOT EXISTS {q(t.alerts)} (
    fleet text,
    pipeline text,
    bucket timestamp,
    ts timestamp,
    device text,
    rule text,
    state text,
    severity text,
    alert_values frozen<map<text, double>>,
    message text,
    PRIMARY KEY ((fleet, pipeline, bucket), ts, device, rule, state)
) WITH CLUSTERING ORDER BY (ts ASC, device ASC, rule ASC, state ASC)
{_time_series_options(lay, "fleetflow alert transitions: one partition per pipeline and bucket")}"""
    latest = f"""CREATE TABLE IF NOT EXISTS {q(t.latest)} (
    fleet text,
    device text,
    ts timestamp,
    seq bigint,
    metrics frozen<map<text, double>>,
    stored_at timestamp,
    PRIMARY KEY ((fleet, device))
) WITH compaction = {{'class': 'LeveledCompactionStrategy'}}
    AND comment = 'fleetflow latest reading per device; cell timestamps are event times, so newest wins'"""
    commands = f"""CREATE TABLE IF NOT EXISTS {q(t.commands)} (
    fleet text,
    device text,
    bucket timestamp,
    created timestamp,
    id text,
    name text,
    params text,
    ttl_ms bigint,
    source text,
    PRIMARY KEY ((fleet, device, bucket), created, id)
) WITH CLUSTERING ORDER BY (created DESC, id DESC)
{_time_series_options(lay, "fleetflow command log: one partition per device and bucket")}"""
    index = f"""CREATE TABLE IF NOT EXISTS {q(PARTITION_INDEX)} (
    tbl text,
    fleet text,
    scope text,
    bucket timestamp,
    member text,
    PRIMARY KEY ((tbl, fleet, scope), bucket, member)
) WITH CLUSTERING ORDER BY (bucket ASC, member ASC)
    AND gc_grace_seconds = {GC_GRACE_SECONDS}
    AND comment = 'fleetflow partition index: which buckets and groups hold data, so reads skip empty ones'"""
    # The command log keeps each command's latest state and its history (JSON of the transitions) beside it.
    command_states = f"ALTER TABLE {q(t.commands)} ADD (state text, history text)"
    return [Migration(1, "readings, aggregates, alerts, latest, command log, partition index",
                      (readings, aggregates, alerts, latest, commands, index)),
            Migration(2, "command log: state and history", (command_states,))]  # fmt: skip


@dataclass(frozen=True)
class Statements:
    """The CQL text of every statement the store prepares."""

    insert_reading: str
    upsert_latest: str
    insert_aggregate: str
    insert_alert: str
    insert_command: str
    insert_index: str
    select_index: str
    select_members: str
    select_readings: str
    select_latest: str
    select_aggregates: str
    select_alerts: str
    select_commands: str
    count_partition: str
    claim_version: str
    select_version: str
    take_over_version: str
    complete_version: str


def statements(lay: Layout) -> Statements:
    t, q = lay.tables, lay.qualified
    return Statements(
        insert_reading=f"INSERT INTO {q(t.readings)} (fleet, device, bucket, ts, seq, metrics, stored_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        upsert_latest=f"INSERT INTO {q(t.latest)} (fleet, device, ts, seq, metrics, stored_at) "
        "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        insert_aggregate=f"INSERT INTO {q(t.aggregates)} (fleet, pipeline, grp, bucket, window_start, step, metric, "
        "window_end, sample_count, min_value, max_value, mean_value, sum_value, last_value, percentiles) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        insert_alert=f"INSERT INTO {q(t.alerts)} (fleet, pipeline, bucket, ts, device, rule, state, severity, "
        "alert_values, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        # The cell time grows with the history (see command_cell_time): an older state delivered late loses.
        insert_command=f"INSERT INTO {q(t.commands)} (fleet, device, bucket, created, id, name, params, ttl_ms, "
        "source, state, history) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
        insert_index=f"INSERT INTO {q(PARTITION_INDEX)} (tbl, fleet, scope, bucket, member) VALUES (?, ?, ?, ?, ?) "
        "USING TTL ?",
        select_index=f"SELECT bucket, member FROM {q(PARTITION_INDEX)} "
        "WHERE tbl = ? AND fleet = ? AND scope = ? AND bucket >= ? AND bucket <= ?",
        select_members=f"SELECT member FROM {q(PARTITION_INDEX)} "
        "WHERE tbl = ? AND fleet = ? AND scope = ? AND bucket = ? AND member > ? LIMIT ?",
        select_readings=f"SELECT fleet, device, seq, ts, metrics, stored_at FROM {q(t.readings)} "
        "WHERE fleet = ? AND device = ? AND bucket = ? AND ts >= ? AND ts < ?",
        select_latest=f"SELECT fleet, device, seq, ts, metrics, stored_at FROM {q(t.latest)} "
        "WHERE fleet = ? AND device = ?",
        select_aggregates="SELECT fleet, pipeline, grp, window_start, step, metric, window_end, sample_count, "
        f"min_value, max_value, mean_value, sum_value, last_value, percentiles FROM {q(t.aggregates)} "
        "WHERE fleet = ? AND pipeline = ? AND grp = ? AND bucket = ? AND window_start >= ? AND window_start < ?",
        select_alerts="SELECT fleet, pipeline, ts, device, rule, state, severity, alert_values, message "
        f"FROM {q(t.alerts)} WHERE fleet = ? AND pipeline = ? AND bucket = ? AND ts >= ? AND ts < ?",
        select_commands="SELECT fleet, device, created, id, name, params, ttl_ms, source, state, history "
        f"FROM {q(t.commands)} "
        "WHERE fleet = ? AND device = ? AND bucket = ? AND created >= ? AND created < ?",
        count_partition=f"SELECT count(*) FROM {q(t.readings)} WHERE fleet = ? AND device = ? AND bucket = ?",
        claim_version=f"INSERT INTO {q(LEDGER)} (scope, version, description, owner, claimed_at) "
        "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
        select_version=f"SELECT owner, claimed_at, applied_at FROM {q(LEDGER)} WHERE scope = ? AND version = ?",
        take_over_version=f"UPDATE {q(LEDGER)} SET owner = ?, claimed_at = ? WHERE scope = ? AND version = ? "
        "IF owner = ? AND applied_at = null",
        complete_version=f"UPDATE {q(LEDGER)} SET applied_at = ? WHERE scope = ? AND version = ? IF owner = ?",
    )
