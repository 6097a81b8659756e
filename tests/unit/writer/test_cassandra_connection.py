"""Connecting to Cassandra as the sink says, checked without a server: policies, consistency, credentials,
TLS, the reactor, retries, and a clear StoreUnavailable when nothing listens."""

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import cassandra
import pytest
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.io.libevreactor import LibevConnection
from cassandra.policies import ConstantSpeculativeExecutionPolicy, DCAwareRoundRobinPolicy, TokenAwarePolicy

from fleetflow.writer.stores import StoreUnavailable, open_store
from fleetflow.writer.stores.cassandra import CassandraStore
from fleetflow.writer.stores.cassandra_auth import Credentials, read_credentials
from fleetflow.writer.stores.cassandra_cluster import (
    READS,
    Backoff,
    ClusterOptions,
    Unavailable,
    build_cluster,
    with_retries,
)
from fleetflow.writer.stores.cql import layout
from tests.stores.conftest import pipeline
from tests.support.natsserver import free_port
from tests.unit.writer.test_cql import sink


def test_balancing_is_token_aware_over_the_local_dc_with_the_spec_consistency() -> None:
    cluster = build_cluster(layout(sink(localDc="eu-west", replication={"eu-west": 3}, consistency="LOCAL_QUORUM")),
                            ClusterOptions(["10.0.0.1"], 9142), Credentials())  # fmt: skip
    writes, reads = (cluster.profile_manager.profiles[name] for name in (EXEC_PROFILE_DEFAULT, READS))

    for profile in (writes, reads):
        assert isinstance(profile.load_balancing_policy, TokenAwarePolicy)
        child = profile.load_balancing_policy._child_policy
        assert isinstance(child, DCAwareRoundRobinPolicy) and child.local_dc == "eu-west"
        assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        assert profile.serial_consistency_level == ConsistencyLevel.LOCAL_SERIAL
    assert isinstance(reads.speculative_execution_policy, ConstantSpeculativeExecutionPolicy)
    assert not isinstance(writes.speculative_execution_policy, ConstantSpeculativeExecutionPolicy)
    assert cluster.port == 9142 and cluster.contact_points == ["10.0.0.1"]
    assert cluster.connection_class is LibevConnection
    assert cluster.auth_provider is None and cluster.ssl_context is None


@pytest.mark.parametrize(
    ("level", "write", "read"), [("ONE", "ONE", "ONE"), ("EACH_QUORUM", "EACH_QUORUM", "LOCAL_QUORUM")]
)
def test_each_quorum_is_for_writes_reads_take_local_quorum(level: str, write: str, read: str) -> None:
    cluster = build_cluster(layout(sink(consistency=level)), ClusterOptions(["127.0.0.1"], 9042), Credentials())
    profiles = cluster.profile_manager.profiles
    assert profiles[EXEC_PROFILE_DEFAULT].consistency_level == getattr(ConsistencyLevel, write)
    assert profiles[READS].consistency_level == getattr(ConsistencyLevel, read)


def make_ca(directory: Path) -> None:
    """A self-signed CA plus a client certificate, as cert-manager would mount them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; cannot make a test certificate")
    for name, subject in (("ca", "/CN=test-ca"), ("tls", "/CN=fleetflow-writer")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", subject,
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt")],
            check=True, capture_output=True,
        )  # fmt: skip


def test_credentials_dir_turns_on_auth_and_verified_tls(tmp_path: Path) -> None:
    (tmp_path / "username").write_text("writer\n")
    (tmp_path / "password").write_text("s3cret\n")
    make_ca(tmp_path)
    credentials = read_credentials(tmp_path)

    cluster = build_cluster(layout(sink()), ClusterOptions(["127.0.0.1"], 9042), credentials)

    assert isinstance(cluster.auth_provider, PlainTextAuthProvider)
    assert (cluster.auth_provider.username, cluster.auth_provider.password) == ("writer", "s3cret")
    context = cluster.ssl_context
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is False
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]


def test_hostname_verification_is_opt_in(tmp_path: Path) -> None:
    make_ca(tmp_path)
    (tmp_path / "verify_hostname").write_text("true")
    assert read_credentials(tmp_path).verify_hostname is True
    (tmp_path / "verify_hostname").write_text("maybe")
    with pytest.raises(ValueError, match="holds 'maybe'; accepted: true, false"):
        read_credentials(tmp_path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"username": "u"}, "has one of username/password but no 'password'"),
        ({"password": "p"}, "has one of username/password but no 'username'"),
        ({"ca.crt": "x", "tls.crt": "x"}, "needs both 'tls.crt' and 'tls.key'"),
        ({"tls.crt": "x", "tls.key": "x"}, "has a client certificate but no 'ca.crt'"),
    ],
)
def test_incomplete_credentials_are_refused_naming_the_missing_file(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        read_credentials(tmp_path)


async def test_an_unresolvable_contact_point_is_store_unavailable() -> None:
    store = CassandraStore(sink(contactPoints=["cassandra.invalid"]))
    with pytest.raises(
        StoreUnavailable, match=r"cassandra cassandra\.invalid:9042 \(dc dc1\): no contact point resolves"
    ):
        await store.open()


def test_a_missing_credentials_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"cassandra credentials dir {tmp_path / 'nope'} does not exist"):
        read_credentials(tmp_path / "nope")


def test_open_store_builds_a_cassandra_store_for_a_cassandra_sink(tmp_path: Path) -> None:
    spec = pipeline("sqlite", tmp_path).to_k8s()["spec"]
    spec["sink"] = {"kind": "cassandra", "cassandra": {"contactPoints": ["127.0.0.1"], "localDc": "dc1"}}
    from fleetflow.api import Pipeline

    store = open_store(Pipeline.model_validate({"metadata": {"name": "p1"}, "spec": spec}), None)
    assert isinstance(store, CassandraStore)
    assert store.layout.replication == {"dc1": 3} and store.layout.consistency == "LOCAL_QUORUM"


async def test_opening_against_nothing_is_store_unavailable_naming_where(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    spec = sink(contactPoints=["127.0.0.1"], port=port, localDc="dc1")
    store = CassandraStore(spec, options=ClusterOptions(["127.0.0.1"], port, connect_timeout=2.0))
    started = time.monotonic()

    with pytest.raises(StoreUnavailable, match=rf"cassandra 127\.0\.0\.1:{port} \(dc dc1\): NoHostAvailable"):
        await store.open()

    assert time.monotonic() - started < 10
    with pytest.raises(StoreUnavailable, match="is not open"):
        await store.latest("f1", "d1")


async def test_retries_back_off_on_timeouts_then_succeed() -> None:
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise cassandra.WriteTimeout(
                "timed out", consistency=6, required_responses=2, received_responses=1, write_type=1
            )
        return "done"

    assert await with_retries(flaky, "write readings", Backoff(attempts=5, base=0.01, cap=0.02)) == "done"
    assert len(calls) == 3


async def test_retries_stop_after_the_last_attempt_naming_the_error() -> None:
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise cassandra.Unavailable("not enough replicas", consistency=6, required_replicas=2, alive_replicas=1)

    with pytest.raises(Unavailable, match="write readings failed 3 times; last: Unavailable"):
        await with_retries(down, "write readings", Backoff(attempts=3, base=0.001, cap=0.001))
    assert attempts == 3


async def test_retries_stop_when_their_budget_is_spent() -> None:
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise cassandra.OperationTimedOut("client-side timeout")

    started = time.monotonic()
    with pytest.raises(Unavailable, match="write readings failed"):
        await with_retries(down, "write readings", Backoff(attempts=1000, base=0.02, cap=0.02, budget=0.3))
    assert time.monotonic() - started < 1.0 and 2 <= attempts < 100


def test_the_retry_budget_is_half_the_ack_wait(tmp_path: Path) -> None:
    spec = pipeline("sqlite", tmp_path, delivery={"ackWait": "40s"}).to_k8s()["spec"]
    spec["sink"] = {"kind": "cassandra", "cassandra": {"contactPoints": ["127.0.0.1"], "localDc": "dc1"}}
    from fleetflow.api import Pipeline

    store = open_store(Pipeline.model_validate({"metadata": {"name": "p1"}, "spec": spec}), None)
    assert isinstance(store, CassandraStore) and store.backoff.budget == 20.0


async def test_errors_a_retry_cannot_fix_are_not_retried() -> None:
    attempts = 0

    async def invalid() -> None:
        nonlocal attempts
        attempts += 1
        raise cassandra.InvalidRequest("unconfigured table readings")

    with pytest.raises(cassandra.InvalidRequest):
        await with_retries(invalid, "write readings", Backoff(attempts=5, base=0.001))
    assert attempts == 1


def test_backoff_is_capped_exponential() -> None:
    backoff = Backoff(attempts=10, base=0.1, cap=1.0)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (9, 1.0)):
        assert all(0 <= backoff.delay(attempt) <= ceiling for _ in range(50))


def test_reactor_choice_does_not_touch_the_event_loop() -> None:
    # The driver's libev loop runs in its own thread; building a Cluster must not need a running asyncio loop.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    build_cluster(layout(sink()), ClusterOptions(["127.0.0.1"], 9042), Credentials())
