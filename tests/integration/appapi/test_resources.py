"""The application API's read resources over a store with known contents: what an application sees."""

import time
from datetime import UTC, datetime

from tests.integration.appapi.conftest import BUSY, DEVICES, FLEET, NOW, PIPELINE, READINGS, STALE, STEP, RunningApi

BASE = f"/v1/fleets/{FLEET}"


async def test_the_registry_pages_through_every_device_with_labels_online_state_and_latest_values(
    api: RunningApi,
) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        status, body = await api.get(f"{BASE}/devices", limit=10, **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        assert len(body["devices"]) <= 10
        seen += body["devices"]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break

    assert pages == 3
    assert [d["device"] for d in seen] == DEVICES
    by_id = {d["device"]: d for d in seen}
    assert by_id["d-000"]["labels"] == {"site": "north", "kind": "probe"}
    assert by_id["d-020"]["labels"] == {"kind": "probe"}
    assert by_id["d-005"]["latest"]["metrics"] == {"temp": 25.0, "rh": 40.0}
    assert by_id[BUSY]["latest"] == {"seq": 249, "ts": READINGS[-1][1], "metrics": {"temp": 249.0, "rh": 50.0}}
    assert [d["device"] for d in seen if not d["online"]] == [STALE]


async def test_one_device_and_an_unknown_one(api: RunningApi) -> None:
    status, body = await api.get(f"{BASE}/devices/{BUSY}")
    assert status == 200
    assert (body["device"], body["pipeline"], body["latest"]["seq"], body["online"]) == (BUSY, PIPELINE, 249, True)

    status, body = await api.get(f"{BASE}/devices/never-seen")
    assert status == 404
    assert body["error"] == "unknown_device" and "'never-seen'" in body["detail"]


async def test_readings_of_a_range_page_newest_first_with_only_the_selected_metrics(api: RunningApi) -> None:
    since, until = READINGS[100][1], READINGS[200][1]  # readings 100..199
    got, cursor = [], None
    while True:
        query = {"from": since, "to": until, "limit": 30, "metrics": "temp", **({"cursor": cursor} if cursor else {})}
        status, body = await api.get(f"{BASE}/devices/{BUSY}/readings", **query)
        assert status == 200, body
        got += body["readings"]
        cursor = body["nextCursor"]
        if cursor is None:
            break

    assert [r["seq"] for r in got] == list(range(199, 99, -1))
    assert all(r["metrics"] == {"temp": float(r["seq"])} for r in got)
    assert all(r["ts"] == READINGS[r["seq"]][1] for r in got)


async def test_time_as_epoch_ms_rfc3339_and_relative_select_the_same_readings(api: RunningApi) -> None:
    since = NOW - 15 * 60_000
    rfc3339 = datetime.fromtimestamp(since / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    answers = []
    for form in (str(since), rfc3339):
        status, body = await api.get(f"{BASE}/devices/{BUSY}/readings", **{"from": form, "limit": 1000})
        assert status == 200, body
        answers.append([r["seq"] for r in body["readings"]])
    asked = int(time.time() * 1000)
    status, body = await api.get(f"{BASE}/devices/{BUSY}/readings", **{"from": "-15m", "limit": 1000})
    answered = int(time.time() * 1000)
    relative = [r["seq"] for r in body["readings"]]

    expected = [seq for seq, ts in reversed(READINGS) if ts >= since]
    assert answers == [expected, expected]
    # "-15m" counts back from the moment the API got the request, which lies between `asked` and `answered`.
    surely = {seq for seq, ts in READINGS if ts >= answered - 15 * 60_000}
    at_most = {seq for seq, ts in READINGS if ts >= asked - 15 * 60_000}
    assert surely <= set(relative) <= at_most and relative == sorted(relative, reverse=True)


async def test_aggregates_by_step_and_device_page_oldest_first(api: RunningApi) -> None:
    path = f"{BASE}/pipelines/{PIPELINE}/aggregates"
    status, first = await api.get(path, step=STEP, device=BUSY, limit=5)
    assert status == 200, first
    status, second = await api.get(path, step=STEP, device=BUSY, limit=50, cursor=first["nextCursor"])
    windows = first["aggregates"] + second["aggregates"]

    assert second["nextCursor"] is None
    assert len(windows) == 12 and {w["group"] for w in windows} == {f"device={BUSY}"}
    starts = [w["windowStartMs"] for w in windows]
    assert starts == sorted(starts) and len(set(starts)) == 12
    assert windows[0]["percentiles"] == {"p95": 2.9} and windows[0]["step"] == STEP

    status, everyone = await api.get(path, limit=100)
    assert len(everyone["aggregates"]) == 24


async def test_alert_history_by_state_and_the_alerts_open_now(api: RunningApi) -> None:
    path = f"{BASE}/pipelines/{PIPELINE}/alerts"
    status, history = await api.get(path)
    assert status == 200
    assert [(a["device"], a["state"]) for a in history["alerts"]] == [
        ("d-000", "firing"), ("d-000", "resolved"), (BUSY, "firing")]  # fmt: skip
    status, firing = await api.get(path, state="firing", device="d-000")
    assert [(a["device"], a["state"]) for a in firing["alerts"]] == [("d-000", "firing")]

    status, open_now = await api.get(f"{path}/open")
    assert status == 200
    assert [(a["device"], a["rule"]) for a in open_now["alerts"]] == [(BUSY, "hot")]


async def test_the_fleet_summary(api: RunningApi) -> None:
    status, body = await api.get(BASE)
    assert status == 200
    assert body["devices"] == {"total": 25, "online": 24, "offline": 1}
    assert body["pipelines"] == [PIPELINE]
    assert body["openAlerts"] == {PIPELINE: 1}
