"""``geventws serve``'s logging, end to end in subprocesses: the access lines (and
what they leave out), ``--no-access-log``, ``--log-config`` and ``--log-level``."""

from __future__ import annotations

import json
import re
import signal
import socket
import textwrap
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from websockets.sync.client import connect

from .cli_runner import ECHO, WSGI_APP
from .utils import wait_for

ACCESS_APP = """
import logging

access = logging.getLogger("geventws.access")

def handle(connection, request):
    access.info("ACCESS-LINE %s", request.target)
    connection.accept()
    connection.send("ok")
"""


def test_no_access_log_disables_geventws_access(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "accessapp.py").write_text(ACCESS_APP)
    on = cli("serve", "accessapp:handle", "--port", "0")
    off = cli("serve", "accessapp:handle", "--port", "0", "--no-access-log")
    for served in (on, off):
        with connect(f"ws://127.0.0.1:{served.port}/x") as ws:
            assert ws.recv() == "ok"
        served.process.send_signal(signal.SIGTERM)
        assert served.wait() == 0
    assert "INFO geventws.access: ACCESS-LINE /x" in on.output()
    assert "ACCESS-LINE" not in off.output()
    assert "listening on" in off.output()  # the rest still logs


def test_no_access_log_drops_the_connection_lines(cli: Any) -> None:
    """The connections' own access lines (``geventws.access``, since main's b5af0ea)."""
    on = cli("serve", ECHO, "--port", "0")
    off = cli("serve", ECHO, "--port", "0", "--no-access-log")
    for served in (on, off):
        with connect(f"ws://127.0.0.1:{served.port}/path") as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
        served.process.send_signal(signal.SIGTERM)
        assert served.wait() == 0
    assert re.search(
        r"INFO geventws\.access: 127\.0\.0\.1:\d+ GET /path 101 close=1000 ", on.output()
    )
    assert "/path" not in off.output(), off.output()


def test_wsgi_access_lines_leave_query_strings_out_and_no_access_log_drops_them(
    cli: Any, tmp_path: Path
) -> None:
    (tmp_path / "page.py").write_text(WSGI_APP)
    on = cli("serve", ECHO, "--wsgi", "page:app", "--port", "0")
    off = cli("serve", ECHO, "--wsgi", "page:app", "--port", "0", "--no-access-log")
    for served in (on, off):
        page = f"http://127.0.0.1:{served.port}/page?token=SECRET"
        assert requests.get(page, timeout=10).text == "page"
        with connect(f"ws://127.0.0.1:{served.port}/ws?token=SECRET") as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
    assert wait_for(lambda: '"GET /page HTTP/1.1" 200' in on.output(), 10), on.output()
    with socket.create_connection(("127.0.0.1", on.port), timeout=10) as sock:  # odd spacing
        sock.sendall(b"GET  /page?token=SECRET  HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: "GET /ws 101" in on.output(), 10), on.output()
    assert wait_for(lambda: "GET  /page  HTTP/1.1" in on.output(), 10), on.output()
    # Tokens passed in query strings stay out of both access logs.
    assert "SECRET" not in on.output(), on.output()
    # The WebSocket has its own access line, not pywsgi's 101.
    assert "GET /ws HTTP/1.1" not in on.output()
    assert "INFO geventws.http: " in next(
        line for line in on.output().splitlines() if "GET /page" in line
    )
    off.process.send_signal(signal.SIGTERM)
    assert off.wait() == 0
    assert "GET /page" not in off.output()


@pytest.mark.parametrize(
    ("request_line", "shown"),
    [
        (b"GET /page?token=SECRET HTTP/9.9", "Invalid http version: 'GET /page HTTP/9.9'"),
        # No version at the end: the query goes to the end of the line.
        (b"GET /page?token=SECRET HTTP/1.1 more", "Invalid HTTP method: 'GET /page'"),
        (b"GET /page?x=1 HTTP/1.1&token=SECRET", "with base 10: 'GET /page'"),
        # A blank inside the query makes the line malformed, and doesn't end it.
        (b"GET /page?a=b c&token=SECRET HTTP/1.1", "Invalid HTTP method: 'GET /page HTTP/1.1'"),
        (b"GET /page?a=b\tc&token=SECRET HTTP/1.1", "Invalid HTTP method: 'GET /page HTTP/1.1'"),
        # pywsgi would quote the path and the line; a repr escapes control characters.
        (b"POST /page?token=SECRET", "Expected GET method: 'POST /page'"),
        (b"GET /page?token=SECRET\x01 HTTP/9.9", "Invalid http version: 'GET /page HTTP/9.9'"),
    ],
)
def test_wsgi_error_lines_leave_query_strings_out(
    cli: Any, tmp_path: Path, request_line: bytes, shown: str
) -> None:
    """pywsgi's own line for a malformed request quotes it: without the query string."""
    (tmp_path / "page.py").write_text(WSGI_APP)
    served = cli("serve", ECHO, "--wsgi", "page:app", "--port", "0")
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")

    def error_line() -> bool:
        return any(
            " ERROR geventws.http: " in line and shown in line
            for line in served.output().splitlines()
        )

    assert wait_for(error_line, 10), served.output()
    assert wait_for(lambda: '" 400 ' in served.output(), 10), served.output()  # access line
    assert "SECRET" not in served.output(), served.output()


def write_config(tmp_path: Path, kind: str) -> Path:
    formatter = "CONFIGURED %(levelname)s %(name)s %(message)s"
    if kind == "json":
        path = tmp_path / "logging.json"
        path.write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {"plain": {"format": formatter}},
                    "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain"}},
                    "root": {"handlers": ["err"], "level": "INFO"},
                }
            )
        )
    elif kind == "yaml":
        path = tmp_path / "logging.yaml"
        path.write_text(
            textwrap.dedent(
                f"""
                version: 1
                formatters:
                  plain:
                    format: "{formatter}"
                handlers:
                  err:
                    class: logging.StreamHandler
                    formatter: plain
                root:
                  handlers: [err]
                  level: INFO
                """
            )
        )
    else:
        path = tmp_path / "logging.ini"
        path.write_text(
            textwrap.dedent(
                f"""
                [loggers]
                keys = root

                [handlers]
                keys = err

                [formatters]
                keys = plain

                [logger_root]
                level = INFO
                handlers = err

                [handler_err]
                class = StreamHandler
                formatter = plain
                args = (sys.stderr,)

                [formatter_plain]
                format = {formatter}
                """
            )
        )
    return path


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config(cli: Any, tmp_path: Path, kind: str) -> None:
    path = write_config(tmp_path, kind)
    served = cli("serve", ECHO, "--port", "0", "--log-config", str(path))
    assert "CONFIGURED INFO geventws.cli listening on ws://127.0.0.1:" in served.output()
    with connect(f"ws://127.0.0.1:{served.port}"):
        pass
    # geventws' loggers existed before the file was read, and still log: the
    # connection's lines (whichever logger has them) are there.
    line = re.compile(r"CONFIGURED INFO geventws\.(?!cli )\S+ .*127\.0\.0\.1:\d+")
    assert wait_for(lambda: bool(line.search(served.output())), 10), served.output()


def test_log_config_and_log_level(cli: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, "json")
    served = cli("serve", ECHO, "--port", "0", "--log-config", str(path), "--log-level", "debug")
    assert "CONFIGURED DEBUG geventws.cli C speedups" in served.output()


def test_yaml_log_config_without_pyyaml_says_so(cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "no-yaml"
    blocker.mkdir()
    (blocker / "yaml.py").write_text("raise ImportError('PyYAML is not installed')\n")
    path = write_config(tmp_path, "yaml")
    served = cli(
        "serve",
        ECHO,
        "--log-config",
        str(path),
        wait=False,
        env={"PYTHONPATH": str(blocker)},
    )
    assert served.wait() == 1
    assert served.output() == (
        f"geventws: error: --log-config {path}: reading YAML needs PyYAML (pip install "
        "pyyaml), or give the configuration as .json\n"
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "cannot read --log-config {path}: No such file or directory"),
        ("bad.json", "{", "--log-config {path}: invalid JSON: "),
        ("list.json", "[]", "--log-config {path}: expected a dictConfig mapping"),
        (
            "nover.json",
            "{}",
            "--log-config {path}: ValueError: dictionary doesn't specify a version",
        ),
        ("missing.ini", None, "cannot read --log-config {path}: no such file"),
    ],
)
def test_bad_log_config_is_one_line(
    cli: Any, tmp_path: Path, name: str, content: Optional[str], message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    served = cli("serve", ECHO, "--log-config", str(path), wait=False)
    assert served.wait() == 1
    output = served.output()
    assert output.startswith(f"geventws: error: {message.format(path=path)}")
    assert output.count("\n") == 1
