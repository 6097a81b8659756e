"""The `fleetflow` command line itself: help on every option, the top-level guard, colour only when wanted."""

import argparse
import logging
from collections.abc import Callable

import pytest
import structlog

from fleetflow.cli import main as cli
from fleetflow.cli import tables
from fleetflow.runtime import logs


def every_parser(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += every_parser(sub)
    return found


def options() -> list[tuple[str, argparse.Action]]:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [(f"{prog} {'/'.join(a.option_strings) or a.dest}", a)
            for prog, parser in every_parser(cli.build_parser()) for a in parser._actions
            if not isinstance(a, skip)]  # fmt: skip


@pytest.mark.parametrize(("name", "action"), options(), ids=[name for name, _ in options()])
def test_every_option_says_what_it_does_and_its_default(name: str, action: argparse.Action) -> None:
    assert action.help, f"{name} has no help text"
    has_default = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
    if has_default:
        assert "%(default)s" in action.help, f"{name}: its default {action.default!r} is not in its help"
    elif action.option_strings and not action.required and action.nargs != 0:
        assert "default" in action.help, f"{name}: the help does not say what happens without it"


def failing(exc: BaseException) -> Callable[[str], Callable[[argparse.Namespace], int]]:
    def handler(_command: str) -> Callable[[argparse.Namespace], int]:
        def run(_args: argparse.Namespace) -> int:
            raise exc

        return run

    return handler


def test_an_unexpected_error_is_one_line_with_the_debug_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLEETFLOW_DEBUG", raising=False)
    monkeypatch.setattr(cli, "handler", failing(RuntimeError("the disk\nis full")))
    assert cli.main(["crds"]) == 1
    err = capsys.readouterr().err
    assert err == "fleetflow crds: unexpected RuntimeError: the disk is full; run it again with --debug " \
                  "(or FLEETFLOW_DEBUG=1) to see where\n"  # fmt: skip


@pytest.mark.parametrize("argv", [["--debug", "crds"], ["crds", "-v"]])
def test_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setattr(cli, "handler", failing(RuntimeError("boom")))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("fleetflow crds: unexpected RuntimeError: boom\n")


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "handler", failing(KeyboardInterrupt()))
    assert cli.main(["crds"]) == 130
    assert capsys.readouterr().err == "fleetflow crds: interrupted\n"


def colour_of_a_log_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tty: bool) -> str:
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    logs.configure("info", "auto")
    structlog.get_logger("test").warning("hello")
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    return capsys.readouterr().err


def test_log_lines_are_coloured_only_on_a_terminal_and_without_no_color(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" in colour_of_a_log_line(monkeypatch, capsys, tty=True)
    assert "\x1b[" not in colour_of_a_log_line(monkeypatch, capsys, tty=False)
    monkeypatch.setenv("NO_COLOR", "1")
    line = colour_of_a_log_line(monkeypatch, capsys, tty=True)
    assert "hello" in line and "\x1b[" not in line


def test_a_table_has_a_header_and_aligned_columns() -> None:
    text = tables.render(("ID", "STATE"), [("a-long-id", "queued"), ("b", "succeeded")])
    assert text.splitlines() == ["ID         STATE", "a-long-id  queued", "b          succeeded"]
