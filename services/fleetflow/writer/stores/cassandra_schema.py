"""Versioned Cassandra migrations that are safe when several writers start at once.

Each version is claimed with a lightweight transaction (`INSERT ... IF NOT EXISTS`) in a ledger table; the
one writer that wins runs the version's DDL, waits for schema agreement and marks the version applied, while
the others wait for that mark. A claim whose owner died is taken over after a lease, again with an LWT. DDL
is `IF NOT EXISTS` throughout, so a version re-run after a takeover changes nothing that already exists."""

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import Session

from fleetflow.writer.stores.cassandra_cluster import Unavailable, execute
from fleetflow.writer.stores.cql import (
    LEDGER,
    Layout,
    Migration,
    Statements,
    keyspace_cql,
    ledger_cql,
    migrations,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Lease:
    """How long a claim stays its owner's, and how long a writer waits for others to finish a version."""

    lease: float = 120.0
    wait: float = 300.0
    poll: float = 0.5
    agreement: float = 30.0


async def migrate(session: Session, lay: Layout, text: Statements, lease: Lease | None = None) -> list[int]:
    """Bring the keyspace and tables to the newest version; the versions this writer applied itself."""
    lease = lease or Lease()
    # Skip DDL for what exists: a writer role may lack CREATE permission on a keyspace an operator made,
    # and Cassandra checks permissions before IF NOT EXISTS.
    keyspace = session.cluster.metadata.keyspaces.get(lay.keyspace)
    if keyspace is None:
        await ddl(session, keyspace_cql(lay), lease)
    else:
        warn_on_replication_drift(lay, keyspace)
    if keyspace is None or LEDGER not in keyspace.tables:
        await ddl(session, ledger_cql(lay), lease)
    ledger = await Ledger.prepare(session, text, lay.scope)
    owner = uuid.uuid4()
    applied = []
    for migration in migrations(lay):
        if await ensure_applied(session, ledger, migration, owner, lease):
            applied.append(migration.version)
    return applied


def warn_on_replication_drift(lay: Layout, keyspace: Any) -> None:
    """Replication is never altered automatically: a change needs a repair, which an operator schedules."""
    strategy = keyspace.replication_strategy
    current = {dc: int(n) for dc, n in (getattr(strategy, "dc_replication_factors", None) or {}).items()}
    if current != lay.replication:
        log.warning(
            "keyspace replication differs from sink.cassandra.replication; run ALTER KEYSPACE and a repair",
            keyspace=lay.keyspace,
            current=current or str(strategy),
            wanted=lay.replication,
        )


async def ddl(session: Session, statement: str, lease: Lease) -> None:
    """Run one schema statement and return once every reachable node agrees on the resulting schema."""
    result = await execute(session, statement)
    if result.response_future.is_schema_agreed:
        return
    agreed = await asyncio.to_thread(
        session.cluster.control_connection.wait_for_schema_agreement, wait_time=lease.agreement
    )
    if not agreed:
        raise Unavailable(f"schema did not reach agreement within {lease.agreement}s after: {statement[:120]}")


@dataclass
class Ledger:
    session: Session
    scope: str
    claim: Any
    read: Any
    take_over: Any
    complete: Any

    @classmethod
    async def prepare(cls, session: Session, text: Statements, scope: str) -> "Ledger":
        async def prepared(cql: str, serial_read: bool = False) -> Any:
            statement = await asyncio.to_thread(session.prepare, cql)
            if serial_read:
                # A SERIAL read completes any in-flight Paxos round, so it sees the latest claim.
                statement.consistency_level = ConsistencyLevel.LOCAL_SERIAL
            return statement

        return cls(
            session,
            scope,
            await prepared(text.claim_version),
            await prepared(text.select_version, serial_read=True),
            await prepared(text.take_over_version),
            await prepared(text.complete_version),
        )

    async def state(self, version: int) -> dict[str, Any] | None:
        rows = (await execute(self.session, self.read, (self.scope, version))).current_rows
        return rows[0] if rows else None


async def ensure_applied(
    session: Session, ledger: Ledger, migration: Migration, owner: uuid.UUID, lease: Lease
) -> bool:
    """Wait until `migration` is applied, applying it if this writer wins the claim; True if it did."""
    deadline = time.monotonic() + lease.wait
    version, scope = migration.version, ledger.scope
    while time.monotonic() < deadline:
        row = await ledger.state(version)
        if row is not None and row["applied_at"] is not None:
            return False
        now = datetime.now(UTC).replace(tzinfo=None)
        if row is None:
            claim = (scope, version, migration.description, owner, now)
            won = (await execute(session, ledger.claim, claim)).was_applied
        elif now - row["claimed_at"] > timedelta(seconds=lease.lease):
            log.warning("taking over a stale schema migration claim", version=version, owner=str(row["owner"]))
            params = (owner, now, scope, version, row["owner"])
            won = (await execute(session, ledger.take_over, params)).was_applied
        else:
            won = False
        if won:
            await apply(session, ledger, migration, owner, lease)
            return True
        await asyncio.sleep(lease.poll)
    holder = await ledger.state(version)
    raise Unavailable(
        f"schema version {version} of {scope!r} is still not applied after {lease.wait}s; "
        f"claimed by writer {holder['owner'] if holder else 'nobody'} — check that writer's logs"
    )


async def apply(session: Session, ledger: Ledger, migration: Migration, owner: uuid.UUID, lease: Lease) -> None:
    log.info("applying schema migration", version=migration.version, description=migration.description)
    for statement in migration.statements:
        try:
            await ddl(session, statement, lease)
        except InvalidRequest as exc:
            # CREATE ... IF NOT EXISTS re-runs cleanly; ALTER TABLE ... ADD has no IF NOT EXISTS before Cassandra
            # 5, so a re-run after a writer died mid-migration finds its columns there: that is the goal reached.
            if not (statement.startswith("ALTER TABLE") and "conflicts with an existing column" in str(exc)):
                raise
            log.info("columns already added by an earlier attempt", version=migration.version)
    done = datetime.now(UTC).replace(tzinfo=None)
    result = await execute(session, ledger.complete, (done, ledger.scope, migration.version, owner))
    if not result.was_applied:
        # Another writer took the claim over meanwhile; it re-runs the same IF NOT EXISTS DDL and marks it.
        log.warning("schema migration claim was taken over before completion", version=migration.version)
