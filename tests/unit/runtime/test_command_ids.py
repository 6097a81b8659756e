"""Command ids made by the platform sort as the commands were created, so lists ordered by (created_ms, id) keep
the order in which an application sent them, within one millisecond too."""

from fleetflow.runtime.commands import new_command, record_key


def test_commands_sent_in_a_burst_list_in_the_order_they_were_sent() -> None:
    sent = [new_command("demo", "pump-1", "step", {"i": i}) for i in range(2000)]
    assert len({c.created_ms for c in sent}) < len(sent), "the burst should put several commands in one millisecond"
    listed = sorted(sent, key=lambda c: (c.created_ms, c.id))
    assert [c.params["i"] for c in listed] == list(range(2000))
    assert len({c.id for c in sent}) == len(sent)
    assert all(len(c.id) == 32 and record_key("pump-1", c.id) == f"pump-1.{c.id}" for c in sent)


def test_an_id_the_caller_gives_is_kept() -> None:
    assert new_command("demo", "pump-1", "step", command_id="my-id-1").id == "my-id-1"
