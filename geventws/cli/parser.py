"""The argument parsers of ``geventws serve`` and ``geventws client``.

The option flags are *generated* from :data:`geventws.options.OPTIONS`: every option
with a ``cli`` spec becomes a flag of each command whose API takes its scope (``serve``:
the options of :class:`~geventws.WebSocketServer`; ``client``: those of
:func:`~geventws.connect`), with the table's flag, metavar, parser, documentation and
default; repeatable options collect a list; ``Cli.env`` names an environment variable
that replaces the default. A new table entry with a ``cli`` spec is a new flag, with no
change here. :func:`table_values` turns the parsed flags back into keyword arguments
named as in the table.

What is not a connection option (the address to bind, workers, TLS files, logging,
reloading, the client's display) is written out here by hand.

Every bad value is a usage error: one line ``geventws serve: error: argument --flag:
what is wrong`` on standard error and exit status 2 (see :class:`Parser`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from .. import options as _options
from ..core.uri import parse_uri
from ..exceptions import InvalidURI
from ..options import Option, keyword, parse_size

__all__ = [
    "LOG_LEVELS",
    "Parser",
    "build_parser",
    "table_options",
    "table_values",
    "version_text",
]

#: The API whose options each command takes.
COMMAND_API = {"serve": "server", "client": "client"}

#: Titles of the groups of generated flags in ``--help``, by scope.
SCOPE_TITLES = {
    "connection": "connection options (every WebSocket connection; see the options reference)",
    "upgrade": "upgrade options (which requests are accepted)",
    "server": "server options (accepting, TLS, proxies)",
    "client": "client options",
}

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose usage errors are one line: ``PROG:
    error: MESSAGE`` on standard error, exit status 2 (argparse prints the whole usage
    first, which buries the message under dozens of generated flags)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Unset:
    """The default of a generated flag: not given on the command line."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


def version_text() -> str:
    """``geventws X.Y.Z (CPython A.B.C, gevent D.E.F) on Linux``, for ``--version``."""
    import gevent

    from .. import __version__

    return (
        f"geventws {__version__} ({platform.python_implementation()} "
        f"{platform.python_version()}, gevent {gevent.__version__}) on {platform.system()}"
    )


# -- values ----------------------------------------------------------------------------------

_PYTHON_INT = re.compile(r"invalid literal for int\(\) with base 10")
_PYTHON_FLOAT = re.compile(r"could not convert string to float")


def _problem(option_name: str, exc: ValueError, text: str) -> str:
    """The message of a value the table's parser refused: its own words, or plain ones
    instead of Python's ``int()``/``float()`` messages."""
    message = str(exc)
    if _PYTHON_INT.match(message):
        return f"expected a whole number: {text!r}"
    if _PYTHON_FLOAT.match(message):
        return f"expected a number: {text!r}"
    prefix = f"{option_name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _converter(option: Option) -> Callable[[str], Any]:
    """The argparse ``type`` of a table option: its parser, whose :class:`ValueError`
    becomes argparse's error naming the flag."""
    assert option.cli is not None
    parse = option.cli.parse or str

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(_problem(option.name, exc, text)) from None

    convert.__name__ = option.name
    return convert


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535: {text!r}")
    return port


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more: {text!r}")
    return count


def _fd(text: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        fd = -1
    if fd < 0:
        raise argparse.ArgumentTypeError(f"expected a file descriptor number: {text!r}")
    return fd


def _spec(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        module, sep, attribute = text.partition(":")
        if not sep or not module or not attribute:
            raise argparse.ArgumentTypeError(f"expected module:{what}, got {text!r}")
        return text

    check.__name__ = what
    return check


def _uri(text: str) -> str:
    try:
        parse_uri(text)
    except InvalidURI as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- help ------------------------------------------------------------------------------------

_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``")


def _plain(doc: str) -> str:
    """reStructuredText of the table, as plain text for ``--help``: ``None`` is spelt
    ``none`` as on the command line, roles keep their last name."""

    def role(match: re.Match[str]) -> str:
        text = match.group(1)
        return text.rsplit(".", 1)[-1] if "<" not in match.group(0) else text.strip()

    text = _ROLE.sub(role, doc)
    text = _LITERAL.sub(lambda m: "none" if m.group(1) == "None" else m.group(1), text)
    return " ".join(text.split()).replace("%", "%%")


def _shown(option: Option) -> str:
    """The table's default, as it would be typed on the command line."""
    value = option.default
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value) or "none"
    assert option.cli is not None
    if option.cli.parse is parse_size and isinstance(value, int):
        for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= factor and value % factor == 0:
                return f"{value // factor}{unit}"
    return str(value)


def _help(option: Option) -> str:
    assert option.cli is not None
    default = _shown(option)
    if option.cli.env:
        default = f"${option.cli.env} if set, else {default}"
    repeat = " Repeatable." if option.cli.repeatable else ""
    return f"{_plain(option.doc)}{repeat} (default: {default})"


# -- the generated flags ---------------------------------------------------------------------


def table_options(command: str) -> list[Option]:
    """The table's options that are flags of ``command`` (``serve`` or ``client``), read
    from the table when called."""
    scopes = _options.API_SCOPES[COMMAND_API[command]]
    return [
        option for option in _options.OPTIONS if option.cli is not None and option.scope in scopes
    ]


def _add_table_flags(parser: argparse.ArgumentParser, command: str) -> None:
    groups: dict[str, Any] = {}
    for option in table_options(command):
        cli = option.cli
        assert cli is not None
        if option.scope not in groups:
            title = SCOPE_TITLES.get(option.scope, f"{option.scope} options")
            groups[option.scope] = parser.add_argument_group(title)
        kwargs: dict[str, Any] = {
            "dest": keyword(option),
            "metavar": cli.metavar,
            "type": _converter(option),
            "help": _help(option),
        }
        if cli.repeatable:
            kwargs.update(action="append", default=None)
        else:
            kwargs.update(default=UNSET)
        groups[option.scope].add_argument(cli.flag_for(option.name), **kwargs)


def table_values(
    parser: argparse.ArgumentParser, args: argparse.Namespace, command: str
) -> dict[str, Any]:
    """The generated flags of ``command`` as keyword arguments named as in the table:
    the value given, else the ``Cli.env`` variable's (parsed like the flag; a bad one is
    a usage error naming the variable), else the table's default."""
    values: dict[str, Any] = {}
    for option in table_options(command):
        cli = option.cli
        assert cli is not None
        value = getattr(args, keyword(option))
        if value is UNSET or (cli.repeatable and value is None):
            text = os.environ.get(cli.env) if cli.env else None
            if text is not None:
                try:
                    value = _converter(option)(text)
                except argparse.ArgumentTypeError as exc:
                    parser.error(f"environment variable {cli.env}: {exc}")
                if cli.repeatable:
                    value = [value]
            else:
                value = option.default
        values[keyword(option)] = value
    return values


def was_given(args: argparse.Namespace, name: str) -> bool:
    """Whether the generated flag of keyword ``name`` was on the command line."""
    value = getattr(args, name, UNSET)
    return value is not UNSET and value is not None


# -- the parsers -----------------------------------------------------------------------------


def _add_serve(commands: Any) -> None:
    serve: Parser = commands.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve handler(connection, request) from module:handler",
        description="Serve a WebSocket handler. Monkey-patches the standard library "
        "with gevent before importing the application. Exit status: 0 after a "
        "graceful stop, 1 when it cannot serve (port in use, TLS files, a second "
        "signal), 2 for a usage error or a handler that cannot be imported.",
    )
    serve.set_defaults(command_parser=serve)
    serve.add_argument("handler", type=_spec("handler"), help="the handler, as module:function")
    serve.add_argument(
        "--version", action="version", version=version_text(), help="print versions and exit"
    )
    where = serve.add_argument_group("where and how to serve")
    where.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    where.add_argument(
        "--port", type=_port, default=8000, help="port to bind, 0 for any free port (default: 8000)"
    )
    where.add_argument(
        "--fd",
        type=_fd,
        metavar="FD",
        help="serve the listening socket inherited as this file descriptor (from a "
        "process manager) instead of binding --host and --port",
    )
    where.add_argument(
        "--wsgi",
        type=_spec("app"),
        metavar="MODULE:APP",
        help="also serve this WSGI application on the same port (gevent.pywsgi): "
        "WebSocket upgrade requests go to the handler, everything else to the app",
    )
    where.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="processes serving the port, under a supervisor that replaces the ones "
        "that die (default: 1: this process serves, no supervisor)",
    )
    where.add_argument(
        "--certfile", metavar="PEM", help="TLS certificate chain (PEM) to serve wss://"
    )
    where.add_argument(
        "--keyfile", metavar="PEM", help="TLS private key (PEM), if not in --certfile"
    )
    logs = serve.add_argument_group("logging")
    logs.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="critical, error, warning, info or debug (default: info; with "
        "--log-config: the file's levels)",
    )
    logs.add_argument(
        "--log-config",
        metavar="FILE",
        help="logging configuration: dictConfig from .json, .yaml or .yml (needs "
        "PyYAML), fileConfig from .ini, .conf or any other file",
    )
    logs.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log a line per connection on the geventws.access logger, and with --wsgi "
        "one per HTTP request on geventws.http (default: on)",
    )
    dev = serve.add_argument_group("development")
    dev.add_argument(
        "--reload",
        action="store_true",
        help="restart the server when Python files change (needs watchfiles: pip "
        "install 'geventws[reload]'); not with --workers",
    )
    dev.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="directory to watch with --reload (repeatable; default: the current one)",
    )
    _add_table_flags(serve, "serve")


def _add_client(commands: Any) -> None:
    client: Parser = commands.add_parser(
        "client",
        allow_abbrev=False,
        help="interactive client: send lines typed or piped, print what arrives",
        description="Connect to URL; each line read from standard input is sent as a "
        "text message, each message received is printed after '< '. Exit status: 0 "
        "after a normal close (1000, 1001, none), 1 after another close or when the "
        "connection fails, 2 for a usage error, 130 when interrupted (Ctrl-C).",
    )
    client.set_defaults(command_parser=client)
    client.add_argument("url", type=_uri, help="ws:// or wss:// URL")
    client.add_argument(
        "--version", action="version", version=version_text(), help="print versions and exit"
    )
    shown = client.add_argument_group("display")
    shown.add_argument(
        "--binary",
        action="store_true",
        help="show received binary messages as hex (default: a Python bytes literal)",
    )
    tls = client.add_argument_group("TLS (wss://)").add_mutually_exclusive_group()
    tls.add_argument(
        "--cafile",
        metavar="PEM",
        help="trust the certificate authorities in this file (a private CA) instead "
        "of the system's",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="don't verify the server's certificate or host name (a warning is printed every time)",
    )
    _add_table_flags(client, "client")


def build_parser() -> Parser:
    """The ``geventws`` parser with its ``serve`` and ``client`` commands."""
    # Abbreviated flags (allow_abbrev) would break whenever the table gains an option.
    parser = Parser(
        prog="geventws",
        description="WebSocket servers and clients on gevent, with a blocking API.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=version_text())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(commands)
    _add_client(commands)
    return parser


def check_serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors that are combinations of ``serve`` flags."""
    if args.reload and args.workers > 1:
        parser.error(f"argument --reload: not allowed with --workers {args.workers}")
    if args.reload_dir and not args.reload:
        parser.error("argument --reload-dir: only with --reload")
    if args.fd is not None and (args.workers > 1 or args.reload):
        parser.error("argument --fd: not allowed with --workers or --reload")
    if args.keyfile and not args.certfile:
        parser.error("argument --keyfile: only with --certfile")


def parse(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and check it whole: every usage error
    ends the process here, before anything runs. Return the namespace, whose
    ``values`` are the keyword arguments of :func:`table_values`, and the arguments as
    given (the reloader starts its servers with them)."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(given)
    if args.command == "serve":
        check_serve(args.command_parser, args)
    args.values = table_values(args.command_parser, args, args.command)
    return args, given
