"""Which Cassandra failures are outages and which are refusals of the records written.

An outage says nothing about the records: no replica answered, a timeout, overload, a node bootstrapping, a lost
connection, or credentials and grants an operator must fix. The same write may succeed later, so the writer
retries it as a whole. A refusal is about the records: an invalid request (a key the server rejects), a syntax
error, a function failing on a value, or a value the driver cannot serialize for its column (a seq beyond
bigint). The same write fails every time, so the writer searches for the records at fault and dead-letters only
them. An error in neither list is treated as a refusal: a search costs a few writes, while retrying a write
that can never succeed would hold back every other device's records until they are dead-lettered with it."""

import struct
from collections.abc import Sequence
from typing import Any

import cassandra
from cassandra import protocol
from cassandra.query import PreparedStatement

from fleetflow.writer.stores.base import RecordRefused, StoreUnavailable
from fleetflow.writer.stores.cassandra_cluster import RETRYABLE, describe

# RETRYABLE errors are retried by the store first; the others here are not worth an immediate retry, but are
# still no fault of the records.
OUTAGES: tuple[type[BaseException], ...] = (
    *RETRYABLE,
    cassandra.CoordinationFailure,  # replicas failed the write (disk, commit log), ReadFailure/WriteFailure
    cassandra.CDCWriteFailure,  # the CDC space is full
    cassandra.Unauthorized,  # a grant was revoked
    cassandra.AuthenticationFailed,
    protocol.BadCredentials,
    protocol.UnauthorizedErrorMessage,
    protocol.ServerError,
    protocol.ProtocolException,
    protocol.TruncateError,
    protocol.UnavailableErrorMessage,
    protocol.ReadTimeoutErrorMessage,
    protocol.WriteTimeoutErrorMessage,
    protocol.ReadFailureMessage,
    protocol.WriteFailureMessage,
    protocol.CDCWriteException,
)
# What bind() raises for a value its column's type cannot hold (it wraps struct.error in TypeError).
ENCODING_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, OverflowError, struct.error)


def classify(exc: Exception, where: str) -> StoreUnavailable | RecordRefused:
    """The store error to raise for a failed write: StoreUnavailable for an outage, else RecordRefused."""
    if isinstance(exc, OUTAGES):
        return StoreUnavailable(f"{where}: {describe(exc)}")
    return RecordRefused(f"{where}: {describe(exc)}")


def unencodable(prepared: PreparedStatement, values: Sequence[Any]) -> str | None:
    """'<column> <value>: <why>' for the first value its column cannot serialize; the driver's message names
    the column and type but not the value."""
    for column, value in zip(prepared.column_metadata or (), values, strict=False):
        try:
            column.type.serialize(value, prepared.protocol_version)
        except ENCODING_ERRORS as exc:
            return f"{column.name} {_shortened(value)}: {describe(exc)}"
    return None


def _shortened(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."
