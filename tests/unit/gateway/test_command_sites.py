"""How the centre's record of a command forwarded to an edge site follows the site's record of it (docs/edge.md,
Commands): the centre's own steps stay, the site's come after them, and a command back to `queued` at the site is
still `forwarded` as the centre sees it."""

from fleetflow.gateway.command_sites import forwarded_detail, forwarded_site, mirrored, stored_at, stored_detail
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import CommandRecord, Transition

COMMAND = Command(id="c1", fleet="yard", device="crane-1", name="cool", params={}, created_ms=1000, ttl_ms=60_000,
                  source="cli")  # fmt: skip


def record(state: str, *steps: tuple[str, int, str]) -> CommandRecord:
    return CommandRecord(command=COMMAND, state=state, history=[Transition(state=s, at_ms=t, detail=d)
                                                                for s, t, d in steps])  # fmt: skip


CENTRE = record("forwarded", ("queued", 1000, ""), ("forwarded", 1100, forwarded_detail("north")),
                ("forwarded", 1200, stored_detail("north")))  # fmt: skip


def test_the_site_a_command_went_to_and_whether_it_stored_it_are_read_from_the_history() -> None:
    claimed = record("forwarded", ("queued", 1000, ""), ("forwarded", 1100, forwarded_detail("north")))
    assert forwarded_site(claimed) == "north" and stored_at(claimed, "north") is None
    assert forwarded_site(CENTRE) == "north" and stored_at(CENTRE, "north") == 3
    assert forwarded_site(record("queued", ("queued", 1000, ""))) is None


def test_the_centre_takes_the_sites_steps_after_its_own() -> None:
    at_site = record("succeeded", ("queued", 1000, ""), ("delivered", 1300, "via http"), ("succeeded", 1400, "ok"))
    merged = mirrored(CENTRE, at_site, "north")
    assert merged is not None and merged.state == "succeeded"
    assert [(t.state, t.detail) for t in merged.history] == [
        ("queued", ""), ("forwarded", "to site north"), ("forwarded", "stored at site north"),
        ("delivered", "at site north: via http"), ("succeeded", "at site north: ok"),
    ]  # fmt: skip
    assert mirrored(merged, at_site, "north") is None, "copying it again changes nothing"


def test_a_command_the_site_expired_or_requeued_shows_so_in_the_centre() -> None:
    expired = mirrored(CENTRE, record("expired", ("queued", 1000, ""), ("expired", 61_000, "ttl passed")), "north")
    assert expired is not None and expired.state == "expired"
    assert expired.history[-1] == Transition(state="expired", at_ms=61_000, detail="at site north: ttl passed")
    requeued = record("queued", ("queued", 1000, ""), ("delivered", 1300, "via mqtt"), ("queued", 1350, "gone"))
    back = mirrored(CENTRE, requeued, "north")
    assert back is not None and back.state == "forwarded"
    assert [t.state for t in back.history[3:]] == ["delivered", "forwarded"]


def test_nothing_is_copied_before_the_site_acknowledged_the_push() -> None:
    claimed = record("forwarded", ("queued", 1000, ""), ("forwarded", 1100, forwarded_detail("north")))
    assert mirrored(claimed, record("delivered", ("queued", 1000, ""), ("delivered", 1300, "")), "north") is None
    assert mirrored(CENTRE, record("queued", ("queued", 1000, "")), "north") is None  # the site has nothing new
