"""The local platform is locked down like the cluster: `fleetflow up` (a real subprocess, as a user runs it)
starts a NATS that admits only the data dir's users and the fleet's MQTT devices, each to what it may do; the
CLI logs in with the data dir's credentials; everything in the data dir is private to its user, also in a data
dir an earlier version left readable by others."""

import asyncio
import contextlib
import json
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from fleetflow.device.mqtt_client import MqttDevice, MqttRefused
from fleetflow.local import natslogins
from fleetflow.runtime import credentials, subjects
from fleetflow.runtime.natsauth import AUTH_SUBJECT, CALLOUT_USER
from tests.e2e.localplatform import RunningPlatform, fleetflow_up

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
FLEET = "demo"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """`fleetflow up` on a data dir that an earlier version left readable by others."""
    data_dir = tmp_path_factory.mktemp("natsauth") / "data"
    (data_dir / "logs").mkdir(parents=True)
    (data_dir / "logs" / "gateway-demo.log").write_text("from an earlier run\n")
    for path, mode in ((data_dir, 0o755), (data_dir / "logs", 0o775), (data_dir / "logs" / "gateway-demo.log", 0o644)):
        path.chmod(mode)
    with fleetflow_up(data_dir, QUICKSTART) as running:
        yield running
        running.stop()


def url(platform: RunningPlatform) -> str:
    return str(platform.endpoints["nats"]["url"])


async def login_as(platform: RunningPlatform, user: str) -> Client:
    password = natslogins.password_file(platform.data_dir, user).read_text().strip()
    return await nats.connect(url(platform), user=user, password=password, allow_reconnect=False)


async def refusal(server: str, **login: str) -> str:
    """How NATS answers a client that connects with `login`; fails the test if it is admitted."""
    try:
        nc = await nats.connect(server, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, **login)
    except nats.errors.Error as exc:
        return str(exc)
    await nc.close()
    pytest.fail(f"admitted with {sorted(login) or 'no credentials'}")


def device(platform: RunningPlatform, device_id: str) -> MqttDevice:
    secret = credentials.read_secret(credentials.local_secret_path(platform.data_dir, FLEET))
    port = int(platform.endpoints["fleets"][FLEET]["mqtt"].rsplit(":", 1)[1])
    return MqttDevice("127.0.0.1", port, FLEET, device_id, credentials.device_token(secret, FLEET, device_id))


async def test_a_client_without_the_data_dirs_credentials_cannot_connect(platform: RunningPlatform) -> None:
    assert "Authorization Violation" in await refusal(url(platform))
    assert "Authorization Violation" in await refusal(url(platform), user="admin", password="guessed")
    token = credentials.device_token(
        credentials.read_secret(credentials.local_secret_path(platform.data_dir, FLEET)), FLEET, "pump-1"
    )
    # A device's credentials are for MQTT only: the callout refuses them on the services' port.
    assert "Authorization Violation" in await refusal(url(platform), user=f"{FLEET}/pump-1", password=token)


async def test_a_device_reaches_only_its_own_topics_never_the_callout_or_the_jetstream_api(
    platform: RunningPlatform,
) -> None:
    admin = await login_as(platform, natslogins.ADMIN)
    js = admin.jetstream()
    telemetry = subjects.telemetry_stream(FLEET)
    dev = device(platform, "pump-1")
    await dev.connect()
    try:
        for topic in (f"fleetflow/{FLEET}/pump-2/telemetry", f"fleetflow/{FLEET}/#", AUTH_SUBJECT.replace(".", "/")):
            with pytest.raises(MqttRefused, match="refused"):
                await dev.subscribe(topic)
        # With a reply subject or not, a message on $JS.API.STREAM.DELETE.<stream> would delete the stream.
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(dev.publish(f"$JS/API/STREAM/DELETE/{telemetry}", b""), 5)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await dev.send([{"seq": 1, "ts": int(time.time() * 1000), "metrics": {"v": 1.0}}], 5)
    finally:
        await dev.close()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # it stays: JetStream handles API requests asynchronously
            assert (await js.stream_info(telemetry)).config.name == telemetry
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def test_only_the_gateways_callout_connection_hears_the_devices_tokens(platform: RunningPlatform) -> None:
    heard: list[tuple[str, str]] = []  # (user, subject)
    connections = {user: await login_as(platform, user) for user in natslogins.SERVICE_USERS}
    for user, nc in connections.items():

        async def hear(msg: Msg, user: str = user) -> None:
            heard.append((user, msg.subject))

        await nc.subscribe(">", cb=hear)
        await nc.subscribe(AUTH_SUBJECT, cb=hear)
        await nc.flush()
    js = connections[natslogins.ADMIN].jetstream()
    # A stream that does not acknowledge may capture $SYS subjects: it would keep every request, token and all.
    await js.add_stream(StreamConfig(name="callout-spy", subjects=[AUTH_SUBJECT], no_ack=True))
    try:
        dev = device(platform, "pump-3")
        await dev.connect()  # admitted: the callout was asked, with the device's token
        await dev.close()
        online = (natslogins.PROCESSOR, f"fleetflow.{FLEET}.pump-3.status")
        deadline = time.monotonic() + 10
        while online not in heard:  # the subscriptions were live while the device connected
            assert time.monotonic() < deadline, "the device's status never reached the services' account"
            await asyncio.sleep(0.05)
        assert [(user, subject) for user, subject in heard if subject == AUTH_SUBJECT] == []
        assert (await js.stream_info("callout-spy")).state.messages == 0
        callout = await login_as(platform, CALLOUT_USER)
        try:  # the callout's account is for hearing the requests only
            with pytest.raises(nats.js.errors.ServiceUnavailableError):
                await callout.jetstream().account_info()
        finally:
            await callout.close()
    finally:
        await js.delete_stream("callout-spy")
        for nc in connections.values():
            await nc.close()


async def test_the_system_account_is_nobodys(platform: RunningPlatform) -> None:
    for user in natslogins.USERS:
        nc = await login_as(platform, user)
        try:  # no server in the user's account answers; in the system account every server would
            with pytest.raises(nats.errors.NoRespondersError):
                await nc.request("$SYS.REQ.SERVER.PING", b"", timeout=2)
        finally:
            await nc.close()


def fleetflow(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetflow.cli", *argv], capture_output=True, text=True, timeout=60)


def test_the_cli_logs_in_with_the_data_dirs_credentials_or_says_in_one_line_why_not(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    status = fleetflow("status", "--data-dir", str(platform.data_dir))
    assert status.returncode == 0, status.stderr
    assert subjects.telemetry_stream(FLEET) in status.stdout
    listed = fleetflow("command", "list", FLEET, "--data-dir", str(platform.data_dir))
    assert listed.returncode == 0, listed.stderr

    elsewhere = tmp_path / "copy"  # the running platform's endpoints.json, without its credentials
    elsewhere.mkdir()
    shutil.copy(platform.data_dir / "endpoints.json", elsewhere / "endpoints.json")
    password_file = natslogins.password_file(elsewhere, natslogins.ADMIN)
    assert_cli_fails(["status"], elsewhere, f"cannot read the NATS password of user 'admin' from {password_file}")
    password_file.parent.mkdir(parents=True)
    password_file.write_text("Wrong0\n")
    assert_cli_fails(
        ["command", "list", FLEET], elsewhere, f"refused user 'admin' with the password in {password_file}"
    )


def assert_cli_fails(argv: list[str], data_dir: Path, message: str) -> None:
    result = fleetflow(*argv, "--data-dir", str(data_dir))
    assert result.returncode == 2, result
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


def test_everything_in_the_data_dir_is_private_to_its_user(platform: RunningPlatform) -> None:
    loose: dict[str, str] = {}
    paths = [platform.data_dir, *platform.data_dir.rglob("*")]
    for path in paths:
        mode = path.lstat().st_mode
        wanted = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != wanted:
            loose[str(path.relative_to(platform.data_dir))] = oct(stat.S_IMODE(mode))
    assert loose == {}
    names = {path.name for path in paths}
    # What the data dir holds that others must not read (so the check above covered them).
    for name in ("nats-server.conf", "store.sqlite3", "demo.key", "admin.password", "endpoints.json",
                 "gateway-demo.log", "nats-server.log"):  # fmt: skip
        assert name in names, name
    assert any(part == "jetstream" for path in paths for part in path.parts), "the JetStream store"


def test_endpoints_json_says_how_to_connect_a_nats_client(platform: RunningPlatform) -> None:
    nats_endpoint: dict[str, Any] = json.loads((platform.data_dir / "endpoints.json").read_text())["nats"]
    assert nats_endpoint["user"] == natslogins.ADMIN
    assert Path(nats_endpoint["passwordFile"]) == natslogins.password_file(platform.data_dir, natslogins.ADMIN)
