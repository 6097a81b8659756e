"""Time, limit, metric and list parameters of the application API: each form, and each refusal naming its value."""

import pytest

from fleetflow.appapi import params
from fleetflow.runtime.httpserver import HttpRefusal

NOW = 1_796_000_000_000


@pytest.mark.parametrize(
    "text, expected",
    [("now", NOW), ("1796000000000", 1796000000000), ("-1h", NOW - 3_600_000), ("-15m", NOW - 900_000),
     ("-30s", NOW - 30_000), ("-7d", NOW - 7 * 86_400_000), ("-2w", NOW - 14 * 86_400_000), ("-250ms", NOW - 250),
     ("2026-11-23T10:00:00Z", 1795428000000), ("2026-11-23T11:00:00.5+01:00", 1795428000500),
     ("2026-11-23t10:00:00.123456789z", 1795428000123)],
)  # fmt: skip
def test_time_forms(text: str, expected: int) -> None:
    assert params.parse_time("from", text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1h", "-1y", "2026-11-23", "2026-11-23T10:00:00", "2026-02-30T00:00:00Z",
                                  "", "-", "1e12", "١٢٣", "99999999999999999"])  # fmt: skip
def test_bad_times_are_refused_naming_the_parameter_and_value(text: str) -> None:
    with pytest.raises(HttpRefusal) as refused:
        params.parse_time("to", text, NOW)
    assert refused.value.status == 400
    assert refused.value.detail.startswith(f"to={text!r} is not valid: use ")


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(HttpRefusal, match="is not before"):
        params.time_range({"from": "-1h", "to": "-1h"}, "-1h", lambda: NOW / 1000)
    assert params.time_range({}, "-1h", lambda: NOW / 1000) == (NOW - 3_600_000, NOW + 1)


@pytest.mark.parametrize("text", ["0", "-1", "10001", "ten", "1.5", " 5", "\uff15"])
def test_limits_outside_the_range_are_refused(text: str) -> None:
    with pytest.raises(HttpRefusal, match=f"limit={text!r}"):
        params.limit({"limit": text}, 100)


def test_metrics_and_choices() -> None:
    assert params.metrics({"metrics": "temp_c, battery_v"}) == {"temp_c", "battery_v"}
    assert params.metrics({}) is None
    with pytest.raises(HttpRefusal, match="metrics='temp,'"):
        params.metrics({"metrics": "temp,"})
    assert params.choices({"kinds": "alerts,alerts,commands"}, "kinds", ("alerts", "commands")) == (
        "alerts",
        "commands",
    )
    with pytest.raises(HttpRefusal, match="kinds='alerts,nope'"):
        params.choices({"kinds": "alerts,nope"}, "kinds", ("alerts", "commands"))
    assert params.group({"group": "site=depot-a,cooler=c1"}) == "site=depot-a,cooler=c1"
    with pytest.raises(HttpRefusal, match="group='site'"):
        params.group({"group": "site"})
