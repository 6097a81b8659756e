"""`fleetflow command send|list|show` functions against a real nats-server."""

import pytest
from nats.aio.client import Client

from fleetflow.gateway import command_admin
from fleetflow.runtime import jetstream
from fleetflow.runtime.commands import CommandError
from tests.integration.connectivity.conftest import fleet_resource
from tests.support.natsserver import NatsServer


async def test_send_list_and_show_a_command(nats_server: NatsServer) -> None:
    nc = await jetstream.connect(nats_server.url, "test")
    try:
        await send_list_and_show(nc)
    finally:
        await nc.close()


async def send_list_and_show(nc: Client) -> None:
    await jetstream.provision_fleet(nc.jetstream(), fleet_resource())
    params = command_admin.parse_params(["setpoint=4.5", "mode=eco", "on=true", 'label="7"'])
    assert params == {"setpoint": 4.5, "mode": "eco", "on": True, "label": "7"}
    record = await command_admin.send(nc, "demo", "pump-1", "set", params, ttl_seconds=60)
    listed = await command_admin.list_records(nc, "demo", device="pump-1")
    assert [r.command.id for r in listed] == [record.command.id]
    assert await command_admin.list_records(nc, "demo", state="delivered") == []
    shown = await command_admin.show(nc, "demo", record.command.id)
    text = command_admin.describe(shown)
    assert "state    queued" in text and '"setpoint": 4.5' in text and "source   cli" in text
    assert f"command  {record.command.id}" in text
    with pytest.raises(CommandError, match="no command"):
        await command_admin.show(nc, "demo", "nope")
    with pytest.raises(CommandError, match="not key=value"):
        command_admin.parse_params(["oops"])
    with pytest.raises(CommandError, match="not one of"):
        await command_admin.list_records(nc, "demo", state="done")
