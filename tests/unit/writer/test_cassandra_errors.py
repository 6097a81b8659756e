"""Cassandra failures classified without a server: the driver's own exception classes and its own serializers.

An outage must come out as StoreUnavailable (the writer retries the whole write); a refusal of the records as
RecordRefused (the writer searches for the record at fault and dead-letters it alone)."""

import time

import cassandra
import pytest
from cassandra import protocol
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.cqltypes import DateType, DoubleType, LongType, MapType, UTF8Type
from cassandra.query import PreparedStatement

from fleetflow.runtime.codec import Reading, ReadingBatch
from fleetflow.writer.stores import RecordRefused, StoreUnavailable
from fleetflow.writer.stores.cassandra import CassandraStore
from fleetflow.writer.stores.cassandra_errors import classify, unencodable
from tests.unit.writer.test_cql import sink

OUTAGES = [
    cassandra.Unavailable("Cannot achieve consistency level LOCAL_QUORUM", required_replicas=2, alive_replicas=1),
    cassandra.WriteTimeout("Operation timed out - received only 1 responses", write_type=0),
    cassandra.ReadTimeout("Operation timed out"),
    cassandra.OperationTimedOut("errors={}, last_host=10.0.0.1:9042"),
    NoHostAvailable("Unable to complete the operation against any hosts", {}),
    ConnectionException("Connection to 10.0.0.1:9042 was closed"),
    protocol.OverloadedErrorMessage(0x1001, "Server is in overloaded state", None),
    protocol.IsBootstrappingErrorMessage(0x1002, "Cannot perform operation: bootstrapping", None),
    cassandra.WriteFailure("Replica(s) failed to execute write", write_type=0),
    cassandra.Unauthorized("User fleetflow has no MODIFY permission on <table ks.readings>"),
    protocol.ServerError(0x0000, "java.lang.RuntimeException", None),
]
REFUSALS = [
    cassandra.InvalidRequest('Error from server: code=2200 [Invalid query] message="Key may not be empty"'),
    protocol.InvalidRequestException(0x2200, "Batch too large", None),
    protocol.SyntaxException(0x2000, "line 1:7 no viable alternative at input", None),
    cassandra.FunctionFailure("execution of 'ks.f[bigint]' failed", keyspace="ks", function="f", arg_types=[]),
    TypeError('Received an argument of invalid type for column "seq". Expected: LongType, Got: int'),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    KeyError("a failure no list foresaw"),  # unknown: searched, never left to hold back other devices
]


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
def test_outages_are_store_unavailable(error: Exception) -> None:
    classified = classify(error, "cassandra 10.0.0.1:9042: write readings")
    assert isinstance(classified, StoreUnavailable)
    assert str(classified).startswith(f"cassandra 10.0.0.1:9042: write readings: {type(error).__name__}: ")


@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: type(e).__name__)
def test_refusals_of_a_record_are_record_refused(error: Exception) -> None:
    classified = classify(error, "cassandra 10.0.0.1:9042: write readings")
    assert isinstance(classified, RecordRefused)
    assert type(error).__name__ in str(classified)


def insert_reading() -> PreparedStatement:
    """The readings insert as the server would describe its bind markers, built here without a server."""
    columns = [
        protocol.ColumnMetadata("ks", "readings", name, kind)
        for name, kind in (
            ("fleet", UTF8Type),
            ("device", UTF8Type),
            ("bucket", DateType),
            ("ts", DateType),
            ("seq", LongType),
            ("metrics", MapType.apply_parameters([UTF8Type, DoubleType])),
            ("stored_at", DateType),
        )
    ]
    return PreparedStatement(columns, b"id", [], "INSERT ...", "ks", 4, [], None)


@pytest.mark.parametrize("seq", [2**63, 2**64])
def test_a_seq_beyond_bigint_names_its_column_and_value(seq: int) -> None:
    values = ("f1", "d1", 0, 1_700_000_000_000, seq, {"temp": 1.0}, 0)
    with pytest.raises(TypeError):  # what the driver itself says: the column, not the value
        insert_reading().bind(values)
    assert unencodable(insert_reading(), values) == f"seq {seq}: error: int too large to convert"
    assert unencodable(insert_reading(), (*values[:4], 7, *values[5:])) is None


async def test_the_store_refuses_such_a_reading_before_writing_anything() -> None:
    store = CassandraStore(sink())
    store._prepared["insert_reading"] = insert_reading()  # as open() would have prepared it; no session needed
    now = int(time.time() * 1000)
    reading = ReadingBatch(fleet="f1", device="d1", readings=[Reading(2**64, now, {"temp": 1.0})], received_ms=now)

    with pytest.raises(RecordRefused, match=rf"cannot encode a row for insert_reading: seq {2**64}: "):
        await store.write_readings([reading])
