"""Commands through the application API over a real NATS: send (scope command), list with cursors, show with the
state history the gateways' delivery code writes, who sent it, and each bad input."""

from pathlib import Path
from typing import Any

from nats.aio.client import Client

from fleetflow.runtime import jetstream
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import RESULTS, CommandRecord, CommandStore, Transition, now_ms, send_command
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.integration.appapi.conftest import BUSY, FLEET, RunningApi, pipeline
from tests.support.natsserver import NatsServer

BASE = f"/v1/fleets/{FLEET}"


def key_id(api: RunningApi, scope: str) -> str:
    return api.keys[scope].split("_")[1]


async def connect(nats_server: NatsServer) -> tuple[Client, CommandStore]:
    nc = await jetstream.connect(nats_server.url, "test-device-side")
    return nc, await CommandStore.open(nc.jetstream(), FLEET)


async def test_a_command_sent_through_the_api_goes_through_its_life_cycle_recorded_with_the_key(
    api: RunningApi, nats_server: NatsServer
) -> None:
    status, sent = await api.post(f"{BASE}/devices/{BUSY}/commands", {"name": "set", "params": {"setpoint": 4.5},
                                                                      "ttlSeconds": 60})  # fmt: skip
    assert status == 202, sent
    assert (sent["device"], sent["name"], sent["params"], sent["state"]) == (BUSY, "set", {"setpoint": 4.5}, "queued")
    assert sent["source"] == f"api-key/{key_id(api, 'command')}"
    assert sent["expiresMs"] - sent["createdMs"] == 60_000

    # A gateway delivers it and the device reports success, through the same state store the API reads.
    nc, store = await connect(nats_server)
    try:
        record = await store.get(BUSY, sent["id"])
        assert record is not None
        assert await store.claim(record.command, "http") is not None
        await store.report(BUSY, sent["id"], "succeeded", "set to 4.5")
    finally:
        await nc.close()

    status, shown = await api.get(f"{BASE}/commands/{sent['id']}")
    assert status == 200, shown
    assert shown["state"] == "succeeded"
    assert [(t["state"], t["detail"]) for t in shown["history"]] == [
        ("queued", ""), ("delivered", "via http"), ("succeeded", "set to 4.5")]  # fmt: skip
    assert shown["source"] == sent["source"]


async def test_the_list_pages_oldest_first_and_filters_by_device_and_state(
    api: RunningApi, nats_server: NatsServer
) -> None:
    ids = []
    for i, device in enumerate([BUSY, "d-002", BUSY, BUSY, "d-002"]):
        status, sent = await api.post(f"{BASE}/devices/{device}/commands", {"name": "ping", "id": f"c{i}"})
        assert status == 202, sent
        ids.append(sent["id"])
    nc, store = await connect(nats_server)
    try:
        first = await store.get(BUSY, "c0")
        assert first is not None and await store.claim(first.command, "grpc") is not None
    finally:
        await nc.close()

    listed, cursor, pages = [], None, 0
    while True:
        status, body = await api.get(f"{BASE}/commands", limit=2, **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        listed += [c["id"] for c in body["commands"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert (listed, pages) == (ids, 3)

    status, body = await api.get(f"{BASE}/commands", device=BUSY)
    assert [c["id"] for c in body["commands"]] == ["c0", "c2", "c3"]
    status, body = await api.get(f"{BASE}/commands", state="delivered")
    assert [c["id"] for c in body["commands"]] == ["c0"]
    status, body = await api.get(f"{BASE}/commands", state="queued", device="d-002")
    assert [c["id"] for c in body["commands"]] == ["c1", "c4"]


async def test_sending_the_same_id_again_changes_nothing(api: RunningApi) -> None:
    path = f"{BASE}/devices/{BUSY}/commands"
    status, first = await api.post(path, {"name": "reboot", "id": "once"})
    assert status == 202
    status, again = await api.post(path, {"name": "reboot", "id": "once"})
    assert status == 202 and again["createdMs"] == first["createdMs"]
    status, body = await api.get(f"{BASE}/commands")
    assert [c["id"] for c in body["commands"]] == ["once"]


async def test_a_command_whose_id_holds_slashes_is_shown_by_its_escaped_id(
    api: RunningApi, nats_server: NatsServer
) -> None:
    # The processor's closed-loop commands have ids like "<pipeline>/<step>/<device>/<target>/<ts>".
    command_id = f"p1/cool/{BUSY}/fan/{now_ms()}"
    command = Command(id=command_id, fleet=FLEET, device=BUSY, name="fan", created_ms=now_ms(), ttl_ms=60_000,
                      source="pipeline/p1/cool")  # fmt: skip
    nc, store = await connect(nats_server)
    try:
        await send_command(nc.jetstream(), store, command)
    finally:
        await nc.close()
    status, shown = await api.get(f"{BASE}/commands/{command_id.replace('/', '%2F')}")
    assert status == 200, shown
    assert (shown["id"], shown["source"]) == (command_id, "pipeline/p1/cool")


async def test_sending_needs_the_command_scope(api: RunningApi) -> None:
    status, body = await api.post(f"{BASE}/devices/{BUSY}/commands", {"name": "reboot"}, key="read")
    assert (status, body["error"]) == (403, "insufficient_scope")
    assert "'command'" in body["detail"]
    status, body = await api.post(f"{BASE}/devices/{BUSY}/commands", {"name": "reboot"}, key=None)
    assert (status, body["error"]) == (401, "unauthenticated")
    status, body = await api.post(f"{BASE}/devices/{BUSY}/commands", {"name": "reboot"}, key="admin")
    assert status == 202
    status, body = await api.get(f"{BASE}/commands", key="read")
    assert status == 200 and body["commands"][0]["source"] == f"api-key/{key_id(api, 'admin')}"


async def test_bad_commands_are_400_naming_what_is_wrong_and_nothing_is_queued(api: RunningApi) -> None:
    cases: list[tuple[str, Any, str, str]] = [
        (BUSY, b"{not json", "malformed_json", "not valid JSON"),
        (BUSY, {"name": "reboot", "colour": "red"}, "invalid_command", "colour"),
        (BUSY, {"params": {}}, "invalid_command", "name"),
        (BUSY, {"name": "9lives"}, "invalid_command", "'9lives'"),
        (BUSY, {"name": "reboot", "ttlSeconds": 0.5}, "invalid_command", "ttlSeconds 0.5"),
        (BUSY, {"name": "reboot", "id": "has space"}, "invalid_command", "'has space'"),
        (BUSY, {"name": "reboot", "params": {"blob": "x" * 70_000}}, "invalid_command", "bytes"),
        ("bad device", {"name": "reboot"}, "invalid_device", "'bad device'"),
    ]
    for device, body, reason, named in cases:
        status, answer = await api.post(f"{BASE}/devices/{device.replace(' ', '%20')}/commands", body)
        assert (status, answer["error"]) == (400, reason), (body, answer)
        assert named in answer["detail"], (body, answer)
    status, answer = await api.get(f"{BASE}/commands")
    assert answer["commands"] == []


async def test_unknown_command_fleet_and_state_are_refused(api: RunningApi) -> None:
    status, body = await api.get(f"{BASE}/commands/nope")
    assert (status, body["error"]) == (404, "unknown_command")
    status, body = await api.post("/v1/fleets/other/devices/d-1/commands", {"name": "reboot"})
    assert (status, body["error"]) == (404, "unknown_fleet")
    status, body = await api.get(f"{BASE}/commands", state="done")
    assert (status, body["error"]) == (400, "invalid_parameter")
    assert body["detail"].startswith("state='done'") and all(s in body["detail"] for s in RESULTS)


async def test_without_nats_commands_are_503_and_the_stored_data_still_serves(
    api: RunningApi, nats_server: NatsServer
) -> None:
    nats_server.process.terminate()
    nats_server.process.wait(timeout=10)
    status, body = await api.post(f"{BASE}/devices/{BUSY}/commands", {"name": "reboot"})
    assert (status, body["error"]) == (503, "commands_unavailable"), body
    status, body = await api.get(f"{BASE}/devices/{BUSY}")
    assert status == 200 and body["device"] == BUSY


async def test_a_devices_command_history_comes_from_the_store_after_nats_forgot_it(
    api: RunningApi, tmp_path: Path
) -> None:
    # What the writer logged (tests/integration/writer/test_command_log.py); the state bucket has none of them.
    created = now_ms() - 3_600_000
    records = []
    for i in range(5):
        command = Command(id=f"old-{i}", fleet=FLEET, device=BUSY, name="set", params={"i": i},
                          created_ms=created + i * 60_000, ttl_ms=60_000, source="api-key/abc")  # fmt: skip
        record = CommandRecord(command=command, state="queued", history=[Transition(state="queued",
                               at_ms=command.created_ms)])  # fmt: skip
        records.append(record.moved_to("expired", command.created_ms + 60_000, "ttl passed"))
    store = SqliteStore(tmp_path / "store.sqlite3", pipeline().spec.sink.tables, 30 * 86400)
    await store.open()
    try:
        await store.write_commands(records)
    finally:
        await store.close()

    got, cursor = [], None
    while True:
        status, body = await api.get(f"{BASE}/devices/{BUSY}/commands", limit=2, **({"cursor": cursor} if cursor
                                     else {}))  # fmt: skip
        assert status == 200, body
        got += body["commands"]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert [c["id"] for c in got] == [f"old-{i}" for i in range(4, -1, -1)]
    assert all(c["state"] == "expired" and c["source"] == "api-key/abc" for c in got)
    assert [t["state"] for t in got[0]["history"]] == ["queued", "expired"]
    status, body = await api.get(f"{BASE}/commands/old-1")
    assert (status, body["error"]) == (404, "unknown_command")

    status, body = await api.get(f"{BASE}/devices/{BUSY}/commands", **{"from": "-10m"})
    assert status == 200 and body["commands"] == []
    status, body = await api.get(f"{BASE}/devices/bad%20device/commands")
    assert (status, body["error"]) == (400, "invalid_device")
