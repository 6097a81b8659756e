"""What the hub reports per edge site (sitestates.py): bytes add up over reconnections, and the backlog's age runs
from the last moment the centre was caught up."""

from fleetflow.local.sitelinks import LeafLink
from fleetflow.local.sitestates import SiteStates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def link(address: str, received: int, sent: int) -> LeafLink:
    return LeafLink("fleetflow-yard-north", address, received, sent, "site-yard-north")


def test_bytes_add_up_over_reconnections_and_the_backlog_ages_while_the_link_is_down() -> None:
    clock = Clock()
    states = SiteStates([("yard", "north")], clock)
    (state,) = states.observe([link("10.0.0.1:5000", 1000, 200)], {"yard-north": 0})
    assert state.link_up and (state.received_bytes, state.sent_bytes) == (1000, 200)
    assert state.backlog_age_seconds == 0

    clock.now += 30
    (state,) = states.observe([], {"yard-north": 0})
    assert not state.link_up and state.received_bytes == 1000 and state.backlog_age_seconds == 30

    clock.now += 10  # back, on a new connection that counts from zero, with 7 messages to catch up
    (state,) = states.observe([link("10.0.0.1:5001", 50, 5)], {"yard-north": 7})
    assert state.link_up and (state.received_bytes, state.sent_bytes) == (1050, 205)
    assert state.backlog_messages == 7 and state.backlog_age_seconds == 40

    clock.now += 2
    (state,) = states.observe([link("10.0.0.1:5001", 900, 40)], {"yard-north": 0})
    assert (state.received_bytes, state.backlog_messages, state.backlog_age_seconds) == (1900, 0, 0)


def test_a_declared_site_that_never_connected_is_down_with_nothing_carried() -> None:
    other = LeafLink("fleetflow-yard-south", "10.0.0.2:5000", 5, 5, "site-yard-south")
    (state,) = SiteStates([("yard", "north")], Clock()).observe([other], {"yard-south": 3})
    assert not state.link_up and (state.received_bytes, state.sent_bytes, state.backlog_messages) == (0, 0, 0)
