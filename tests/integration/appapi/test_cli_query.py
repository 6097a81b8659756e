"""`fleetflow query --api URL --key KEY` against a running application API over the store `fleetflow query` reads
locally: the same rows, as a table and as JSON, paged through the API's cursors; the API's refusals as one-line
CLI errors with its reason and detail."""

import argparse
import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from fleetflow.cli import query as query_command
from fleetflow.cli.errors import EXIT_USAGE, CliError
from fleetflow.cli.main import build_parser
from fleetflow.cli.query_api import api_items
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import CommandRecord, Transition
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.integration.appapi.conftest import (
    BUSY,
    DEVICES,
    FLEET,
    NOW,
    PIPELINE,
    READINGS,
    STALE,
    RunningApi,
    pipeline,
)
from tests.support.cli import fleetflow, one_line_error

COMMANDS = 3  # logged for BUSY, a minute apart


async def log_commands(store_path: Path) -> None:
    store = SqliteStore(store_path, pipeline().spec.sink.tables, 30 * 86400)
    await store.open()
    try:
        records = []
        for i in range(COMMANDS):
            created = NOW - (COMMANDS - i) * 60_000
            command = Command(id=f"cmd-{i}", fleet=FLEET, device=BUSY, name="set", params={"setpoint": 4.0 + i},
                              created_ms=created, ttl_ms=600_000, source="cli")  # fmt: skip
            history = [Transition(state="queued", at_ms=created), Transition(state="delivered", at_ms=created + 5)]
            records.append(CommandRecord(command=command, state="delivered", history=history))
        await store.write_commands(records)
    finally:
        await store.close()


def data_dir_of(tmp_path: Path) -> Path:
    """A data dir whose pipelines.json names the store the API serves, as `fleetflow up` writes it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    entry = {"fleet": FLEET, "sink": pipeline().spec.sink.to_k8s(), "sqlitePath": str(tmp_path / "store.sqlite3")}
    (data_dir / "pipelines.json").write_text(json.dumps({PIPELINE: entry}))
    return data_dir


async def query(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`fleetflow query FLEET ...` as a user runs it, off the event loop the API answers on."""
    return await asyncio.to_thread(fleetflow, "query", FLEET, *argv, env=env)


async def printed(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    """What `fleetflow query FLEET ARGV` prints, run in this process (the command's own work, without the logging
    set-up of `main`, which would redirect this process's logs)."""
    args = build_parser().parse_args(["query", FLEET, *map(str, argv)])
    assert await query_command.run(args) == 0
    return capsys.readouterr().out


async def test_query_through_the_api_prints_what_the_local_store_prints(
    api: RunningApi, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await log_commands(tmp_path / "store.sqlite3")
    data_dir = data_dir_of(tmp_path)
    monkeypatch.setenv("FLEETFLOW_API_KEY", api.keys["read"])
    cases = [
        (BUSY, "--limit", "300"),  # every reading of the busy device
        ("--aggregates", "--limit", "30"),
        (BUSY, "--aggregates", "--limit", "5"),
        ("--alerts",),
        (BUSY, "--commands"),
        (BUSY, "--since", "1h", "--limit", "5"),
        ("--devices", "--limit", "30"),
        ("--devices", "--since", "5m"),  # all but the stale device
        (BUSY, "--devices"),
    ]
    for case in cases:
        for output in ("--json", None):
            flags = (*case, output) if output else case
            local = await printed(capsys, *flags, "--data-dir", data_dir)
            assert local, f"{flags}: the local store answered nothing, so the comparison would prove nothing"
            assert await printed(capsys, *flags, "--api", api.url) == local, flags

    rows = [json.loads(line) for line in (await printed(capsys, BUSY, "--json", "--limit", "300", "--data-dir",
                                                        data_dir)).splitlines()]  # fmt: skip
    assert [r["seq"] for r in rows] == list(range(len(READINGS) - 1, -1, -1))
    logged = [json.loads(line) for line in (await printed(capsys, BUSY, "--commands", "--json", "--api",
                                                          api.url)).splitlines()]  # fmt: skip
    assert [c["id"] for c in logged] == [f"cmd-{i}" for i in reversed(range(COMMANDS))]
    registry = await printed(capsys, "--devices", "--since", "5m", "--json", "--limit", "100", "--api", api.url)
    heard_from = [json.loads(line)["device"] for line in registry.splitlines()]
    assert sorted(heard_from) == [d for d in DEVICES if d != STALE]


async def test_a_fleets_commands_come_from_its_command_state_newest_first(
    api: RunningApi, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = []
    for i in range(4):
        status, record = await api.post(f"/v1/fleets/{FLEET}/devices/d-00{i}/commands", {"name": "ping", "id": f"p{i}"})
        assert status == 202, record
        sent.append(record)

    printed_json = await printed(capsys, "--commands", "--json", "--limit", "3", "--api", api.url,
                                 "--key", api.keys["read"])  # fmt: skip

    shown = [json.loads(line) for line in printed_json.splitlines()]
    newest = sorted(sent, key=lambda r: (r["createdMs"], r["id"]), reverse=True)[:3]
    assert {c["id"] for c in shown} == {c["id"] for c in newest}
    assert [c["createdMs"] for c in shown] == sorted((c["createdMs"] for c in shown), reverse=True)
    assert all(c["source"].startswith("api-key/") and c["state"] == "queued" for c in shown)


async def test_query_through_the_api_as_a_user_runs_it(api: RunningApi, tmp_path: Path) -> None:
    """The real command line, with the key from --key and from the environment."""
    data_dir = data_dir_of(tmp_path)
    local, with_key, with_env = await asyncio.gather(
        query(BUSY, "--limit", "5", "--data-dir", data_dir),
        query(BUSY, "--limit", "5", "--api", api.url, "--key", api.keys["read"]),
        query(BUSY, "--limit", "5", "--api", api.url, env={"FLEETFLOW_API_KEY": api.keys["read"]}),
    )
    assert local.returncode == with_key.returncode == with_env.returncode == 0, (with_key.stderr, with_env.stderr)
    assert with_key.stdout == with_env.stdout == local.stdout and len(local.stdout.splitlines()) == 6  # header, 5


def query_args(api: RunningApi, device: str | None, limit: int) -> argparse.Namespace:
    return argparse.Namespace(fleet=FLEET, device=device, pipeline=None, limit=limit, api=api.url, key=api.keys["read"])


async def test_query_through_the_api_follows_cursors_page_by_page(api: RunningApi) -> None:
    _, all_readings = await api_items(query_args(api, BUSY, 1000), "readings", 0, 2**62, page=7)
    assert [r.seq for r in all_readings] == list(range(len(READINGS) - 1, -1, -1))  # 36 pages, newest first

    _, newest = await api_items(query_args(api, BUSY, 20), "readings", 0, 2**62, page=7)
    assert [r.seq for r in newest] == list(range(len(READINGS) - 1, len(READINGS) - 21, -1))

    _, one_page = await api_items(query_args(api, None, 10), "aggregates", 0, 2**62)
    _, paged = await api_items(query_args(api, None, 10), "aggregates", 0, 2**62, page=3)  # oldest first: all read
    assert paged == one_page and len(paged) == 10
    assert [a.window_start_ms for a in paged] == sorted((a.window_start_ms for a in paged), reverse=True)

    _, registry = await api_items(query_args(api, None, 100), "devices", 0, 2**62)
    _, registry_paged = await api_items(query_args(api, None, 100), "devices", 0, 2**62, page=4)
    assert registry_paged == registry and sorted(d.device for d in registry) == DEVICES


async def refusal(*argv: str) -> CliError:
    """What `fleetflow query FLEET ARGV` refuses with, run in this process as printed() runs it."""
    args = build_parser().parse_args(["query", FLEET, *argv])
    with pytest.raises(CliError) as refused:
        await query_command.run(args)
    return refused.value


async def test_refusals_of_the_api_are_usage_errors_with_its_reason(
    api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETFLOW_API_KEY", raising=False)
    read = ("--api", api.url, "--key", api.keys["read"])
    for argv, reason in [
        (("never-seen", *read), "404 unknown_device: device 'never-seen'"),
        ((BUSY, "--pipeline", "nope", *read), "400 invalid_parameter: pipeline='nope'"),
        (("--alerts", "--pipeline", "nope", *read), "404 unknown_pipeline: pipeline 'nope'"),
    ]:
        error = await refusal(*argv)
        assert error.exit_code == EXIT_USAGE and str(error).startswith("the application API refused GET "), error
        assert reason in str(error), error

    for argv, message in [
        ((BUSY, "--api", api.url), "--key KEY or set FLEETFLOW_API_KEY"),
        ((BUSY, "--api", "localhost:1", "--key", "k"), "--api 'localhost:1' is not the URL of an application API"),
        ((BUSY, "--key", "k"), "--key is the API key of --api URL"),
    ]:
        error = await refusal(*argv)
        assert error.exit_code == EXIT_USAGE and message in str(error), error


async def test_a_wrong_key_and_an_api_that_does_not_answer_as_a_user_sees_them(api: RunningApi) -> None:
    wrong_key, unreachable = await asyncio.gather(
        query(BUSY, "--api", api.url, "--key", "ffk_000000000000_wrong"),
        query(BUSY, "--api", "http://127.0.0.1:9", env={"FLEETFLOW_API_KEY": api.keys["read"]}),
    )
    one_line_error(wrong_key, 2, "fleetflow query: the application API refused GET", "401 invalid_key")
    one_line_error(unreachable, 1, "cannot reach the application API at http://127.0.0.1:9")
