"""The ``geventws`` command line: flags generated from the options table, usage errors,
``--version``, loading ``module:handler``. (Serving: test_cli_serve.py, its logging:
test_cli_logging.py; the client: test_cli_client.py.)"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gevent
import pytest

import geventws
from geventws import options
from geventws.cli import ImportFromStringError, build_parser, load_handler, main
from geventws.cli.parser import UNSET, parse, table_options, table_values
from geventws.options import API_SCOPES, OPTIONS, Cli, Option, keyword


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]  # type: ignore[no-any-return]


def flags(command: str) -> dict[str, argparse.Action]:
    return {
        string: action for action in subparser(command)._actions for string in action.option_strings
    }


@pytest.mark.parametrize("command, api", [("serve", "server"), ("client", "client")])
def test_every_table_option_with_a_cli_spec_is_a_flag(command: str, api: str) -> None:
    actions = flags(command)
    expected = [o for o in OPTIONS if o.cli is not None and o.scope in API_SCOPES[api]]
    assert expected and table_options(command) == expected
    for option in expected:
        assert option.cli is not None and option.flag is not None
        action = actions[option.flag]
        assert action.dest == keyword(option)
        assert action.metavar == option.cli.metavar
        assert isinstance(action, argparse._AppendAction) == option.cli.repeatable
        assert action.help is not None and "(default: " in action.help
        # The table's documentation, as plain text.
        assert option.doc.split()[0].strip("`") in action.help
    # And nothing else of the table: options of other scopes are not flags here.
    others = [o for o in OPTIONS if o.cli is not None and o.scope not in API_SCOPES[api]]
    for option in others:
        if option.flag not in {o.flag for o in expected}:
            assert option.flag not in actions


def test_help_shows_the_tables_defaults_as_typed() -> None:
    actions = flags("serve")
    assert actions["--max-size"].help.endswith("(default: 1MiB)")  # type: ignore[union-attr]
    assert actions["--send-timeout"].help.endswith("(default: none)")  # type: ignore[union-attr]
    assert "$FORWARDED_ALLOW_IPS if set, else 127.0.0.1" in actions["--forwarded-allow-ips"].help  # type: ignore[operator]
    # reStructuredText is gone.
    assert "``" not in " ".join(a.help or "" for a in actions.values())


def serve_values(*argv: str) -> dict[str, Any]:
    args, _ = parse(["serve", "app:handle", *argv])
    return table_values(args.command_parser, args, "serve")


def test_values_reach_the_keywords_named_in_the_table() -> None:
    values = serve_values(
        "--max-size",
        "1KiB",
        "--origin",
        "https://a.example",
        "--origin",
        "none",
        "--ping-interval",
        "off",
        "--max-queue",
        "8,2",
        "--subprotocol",
        "chat",
    )
    assert set(values) == {keyword(o) for o in table_options("serve")}
    assert values["max_size"] == 1024
    assert values["origins"] == ["https://a.example", None]
    assert values["ping_interval"] is None
    assert values["max_queue"] == (8, 2)
    assert values["subprotocols"] == ["chat"]
    # Not given: the table's defaults.
    table = {keyword(o): o.default for o in table_options("serve")}
    assert values["close_timeout"] == table["close_timeout"] == 10.0
    assert values["compression"] == table["compression"]
    # They are what the server takes.
    server = geventws.WebSocketServer(("127.0.0.1", 0), lambda c, r: None, **values)
    assert server.policy.settings.max_size == 1024
    assert server.policy.origins == frozenset({"https://a.example", None})


def test_client_values_are_connect_keywords() -> None:
    args, _ = parse(["client", "ws://h/", "--header", "X-A: 1", "--subprotocol", "chat"])
    values = table_values(args.command_parser, args, "client")
    assert values["headers"] == [("X-A", "1")]
    assert values["subprotocols"] == ["chat"]  # the table's client_subprotocols
    assert set(values) <= set(options.resolve("client", {}, "connect"))


def test_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    assert serve_values()["forwarded_allow_ips"] == "10.0.0.0/8"
    assert serve_values("--forwarded-allow-ips", "*")["forwarded_allow_ips"] == "*"
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    assert serve_values()["forwarded_allow_ips"] == "127.0.0.1"


def test_a_new_table_entry_becomes_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    new = Option(
        "broker_url_test",
        "Optional[str]",
        None,
        "A new option, from the ``table``.",
        "server",
        Cli(str, "URL", flag="--broker-test", env="GEVENTWS_TEST_BROKER"),
    )
    monkeypatch.setattr(options, "OPTIONS", (*OPTIONS, new))
    action = flags("serve")["--broker-test"]
    assert action.dest == "broker_url_test" and action.metavar == "URL"
    assert "--broker-test" not in flags("client")
    assert serve_values("--broker-test", "redis://x")["broker_url_test"] == "redis://x"
    assert serve_values()["broker_url_test"] is None
    monkeypatch.setenv("GEVENTWS_TEST_BROKER", "redis://env")
    assert serve_values()["broker_url_test"] == "redis://env"


def test_generated_flags_default_to_unset() -> None:
    args, _ = parse(["serve", "app:handle"])
    assert args.max_size is UNSET and args.origins is None


USAGE_ERRORS = [
    (
        ["serve", "a:b", "--port", "99999"],
        "geventws serve: error: argument --port: expected a port from 0 to 65535: '99999'",
    ),
    (
        ["serve", "a:b", "--max-size", "12XB"],
        "geventws serve: error: argument --max-size: expected a size such as 1048576, 64KiB "
        "or 16MiB, or none: '12XB'",
    ),
    (
        ["serve", "a:b", "--origin", "example.com"],
        "geventws serve: error: argument --origin: an origin is scheme://host[:port] as "
        "browsers send it (such as https://example.com), or none: 'example.com'",
    ),
    (
        ["serve", "a:b", "--workers", "0"],
        "geventws serve: error: argument --workers: expected a whole number, 1 or more: '0'",
    ),
    (
        ["serve", "a:b", "--max-queue", "lots"],
        "geventws serve: error: argument --max-queue: expected a whole number: 'lots'",
    ),
    (
        ["serve", "a:b", "--ping-interval", "soon"],
        "geventws serve: error: argument --ping-interval: expected a number: 'soon'",
    ),
    (
        ["serve", "a:b", "--compression-window-bits", "20"],
        "geventws serve: error: argument --compression-window-bits: expected a whole number "
        "from 9 to 15: '20'",
    ),
    (
        ["serve", "a:b", "--forwarded-allow-ips", "10.0.0.1,proxy"],
        "geventws serve: error: argument --forwarded-allow-ips: 'proxy' is not an IP "
        "address, a network or '*'",
    ),
    (
        ["serve", "a:b", "--reload", "--workers", "2"],
        "geventws serve: error: argument --reload: not allowed with --workers 2",
    ),
    (
        ["serve", "a:b", "--reload-dir", "."],
        "geventws serve: error: argument --reload-dir: only with --reload",
    ),
    (
        ["serve", "a:b", "--keyfile", "key.pem"],
        "geventws serve: error: argument --keyfile: only with --certfile",
    ),
    (
        ["serve", "a:b", "--fd", "3", "--workers", "2"],
        "geventws serve: error: argument --fd: not allowed with --workers or --reload",
    ),
    (
        ["serve", "a:b", "--log-level", "loud"],
        "geventws serve: error: argument --log-level: invalid choice: 'loud' (choose from "
        + ", ".join(repr(level) for level in ("critical", "error", "warning", "info", "debug"))
        + ")",
    ),
    (
        ["serve", "nocolon"],
        "geventws serve: error: argument handler: expected module:handler, got 'nocolon'",
    ),
    (
        ["serve", "a:b", "--max-siz", "1"],  # no abbreviations: the table grows
        "geventws: error: unrecognized arguments: --max-siz 1",
    ),
    (
        ["client", "http://example.com/"],
        "geventws client: error: argument url: 'http://example.com/' is not a WebSocket "
        "URI: the scheme must be ws or wss",
    ),
    (
        ["client", "ws://h/", "--cafile", "ca.pem", "--insecure"],
        "geventws client: error: argument --insecure: not allowed with argument --cafile",
    ),
    (
        ["client", "ws://h/", "--header", "X-Missing-Colon"],
        "geventws client: error: argument --header: expected 'Name: value': 'X-Missing-Colon'",
    ),
]


@pytest.mark.parametrize(("argv", "line"), USAGE_ERRORS)
def test_usage_errors_are_one_line_naming_the_flag(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "nope")
    with pytest.raises(SystemExit) as info:
        main(["serve", "a:b"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "geventws serve: error: environment variable FORWARDED_ALLOW_IPS: 'nope' is not "
        "an IP address, a network or '*'\n"
    )


def test_usage_error_in_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geventws", "serve", "a:b", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "geventws serve: error: argument --port: expected a port from 0 to 65535: '99999'\n"
    )


@pytest.mark.parametrize("argv", [["--version"], ["serve", "--version"], ["client", "--version"]])
def test_version(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geventws", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    python = f"{sys.implementation.name.replace('cpython', 'CPython')} {sys.version.split()[0]}"
    assert result.stdout.startswith(
        f"geventws {geventws.__version__} ({python}, gevent {gevent.__version__}) on "
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("geventws")
    assert script.exists()
    out = subprocess.run(
        [str(script), "serve", "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "--max-size" in out.stdout and "--origin" in out.stdout
    assert "--reload" in out.stdout and "--access-log" in out.stdout


def test_load_handler_dotted_attribute() -> None:
    assert load_handler("geventws.examples.echo:handle").__name__ == "handle"
    with pytest.raises(ImportFromStringError):
        load_handler("geventws:__version__")  # not callable


def test_speedups_available_reports_the_compiled_module() -> None:
    from geventws.core import frames

    available = geventws.speedups_available()
    assert available is frames.SPEEDUPS
    assert available == ("geventws._speedups" in sys.modules)
    assert "speedups_available" in geventws.__all__


def test_cli_package_exports() -> None:
    import geventws.cli

    assert {"main", "load_handler", "ImportFromStringError"} <= set(geventws.cli.__all__)
    assert os.path.isdir(Path(geventws.cli.__file__).parent)  # a package
