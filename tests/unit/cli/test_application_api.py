"""How `fleetflow query --api` reads what the application API answers: its URL and key, and each status as the
CLI error it becomes (usage error, exit 2, for what the request got wrong; exit 1 for what the API cannot do now)."""

import pytest

from fleetflow.cli import application_api
from fleetflow.cli.errors import EXIT_FAILURE, EXIT_USAGE, Unavailable, UsageError

WHERE = "http://127.0.0.1:8090/v1/fleets/coldchain/devices/box-x/readings"


@pytest.mark.parametrize(("status", "reason"), [(400, "invalid_parameter"), (401, "invalid_key"),
                                                (403, "insufficient_scope"), (404, "unknown_device")])  # fmt: skip
def test_a_refusal_is_a_usage_error_with_the_apis_reason_and_detail(status: int, reason: str) -> None:
    error = application_api.refusal(WHERE, status, {"error": reason, "detail": "what is wrong"}, "")
    assert isinstance(error, UsageError) and error.exit_code == EXIT_USAGE
    assert str(error) == f"the application API refused GET {WHERE}: {status} {reason}: what is wrong"


def test_an_api_that_cannot_answer_now_is_a_runtime_error() -> None:
    error = application_api.refusal(WHERE, 503, {"error": "store_unavailable", "detail": "retry"}, "")
    assert isinstance(error, Unavailable) and error.exit_code == EXIT_FAILURE
    assert "503 store_unavailable: retry" in str(error)
    proxy = application_api.refusal(WHERE, 502, None, "<html>\n<b>Bad Gateway</b></html>")
    assert isinstance(proxy, Unavailable) and "502 <html> <b>Bad Gateway</b></html>" in str(proxy)


@pytest.mark.parametrize("text", ["localhost:8090", "ftp://host", "http://", "http://host:1/?a=b"])
def test_an_api_url_must_be_http_or_https(text: str) -> None:
    with pytest.raises(UsageError, match="is not the URL of an application API"):
        application_api.api_url(text)


def test_the_url_loses_its_trailing_slash_and_the_key_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert application_api.api_url("https://api.example:8090/") == "https://api.example:8090"
    monkeypatch.setenv("FLEETFLOW_API_KEY", "ffk_a_b")
    assert application_api.api_key(None) == "ffk_a_b"
    assert application_api.api_key("ffk_c_d") == "ffk_c_d"
    monkeypatch.delenv("FLEETFLOW_API_KEY")
    with pytest.raises(UsageError, match="give --key KEY or set FLEETFLOW_API_KEY"):
        application_api.api_key(None)
