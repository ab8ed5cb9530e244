"""``geventws serve`` end to end, in subprocesses: the startup line, signals, runtime
errors, TLS files, logging flags, ``--fd``, ``--reload``, and the request deadline of
``--wsgi``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import requests
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

import geventws

from .test_wsgi_deadline import silent_connection_closed, slow_request
from .utils import LISTENING, wait_for

STARTUP = re.compile(
    r"INFO geventws\.cli: listening on (wss?)://(\S+):(\d+) \(Press CTRL\+C to quit\)"
)


class Served:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.port = 0

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.output()}") from None


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m geventws ARGS`` in ``tmp_path``, its output (stdout and stderr)
    in a file; wait for the startup line unless ``wait=False``."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str,
        wait: bool = True,
        env: Optional[dict[str, str]] = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Served:
        log = tmp_path / f"server{len(processes)}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "geventws", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                pass_fds=pass_fds,
            )
        processes.append(process)
        served = Served(process, log)
        if wait:

            def ready() -> bool:
                match = LISTENING.search(served.output())
                served.port = int(match.group(1)) if match else 0
                return bool(served.port) or process.poll() is not None

            assert wait_for(ready, 30) and served.port, served.output()
        return served

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


ECHO = "geventws.examples.echo:handle"


# -- the startup line and signals ----------------------------------------------------------


def test_startup_line_once_and_sigterm_sends_1001(cli: Any) -> None:
    served = cli("serve", ECHO, "--port", "0")
    with connect(f"ws://127.0.0.1:{served.port}") as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        served.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
        assert ws.protocol.close_code == 1001
    assert served.wait() == 0
    output = served.output()
    assert STARTUP.findall(output) == [("ws", "127.0.0.1", str(served.port))]
    assert output.count("listening on") == 1  # the library's own line is not repeated
    assert "Traceback" not in output


def test_startup_line_ipv6_in_brackets(cli: Any) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    served = cli("serve", ECHO, "--host", "::1", "--port", "0")
    assert STARTUP.search(served.output()).groups() == ("ws", "[::1]", str(served.port))  # type: ignore[union-attr]
    with connect(f"ws://[::1]:{served.port}") as ws:
        ws.send("six")
        assert ws.recv() == "six"


def test_ctrl_c_stops_cleanly(cli: Any) -> None:
    served = cli("serve", ECHO, "--port", "0")
    served.process.send_signal(signal.SIGINT)
    assert served.wait() == 0
    assert "Traceback" not in served.output()


def test_second_signal_exits_at_once(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "stubborn.py").write_text(
        textwrap.dedent(
            """
            import gevent

            def handle(connection, request):
                connection.accept()
                while True:  # ignores the close: only a kill ends it
                    try:
                        gevent.sleep(0.1)
                    except Exception:
                        pass
            """
        )
    )
    served = cli("serve", "stubborn:handle", "--port", "0", "--close-timeout", "60")
    with connect(f"ws://127.0.0.1:{served.port}"):
        served.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "SIGTERM received" in served.output(), 10)
        served.process.send_signal(signal.SIGTERM)
        # Far sooner than the 60 s a graceful stop would allow the handler.
        assert served.wait(timeout=20) == 1
    assert "exiting now" in served.output()


def test_monkey_patches_before_importing_the_application(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "patched.py").write_text(
        textwrap.dedent(
            """
            import gevent.monkey
            import socket
            import threading

            AT_IMPORT = gevent.monkey.is_module_patched("socket") and gevent.monkey.is_module_patched("threading")

            def handle(connection, request):
                connection.send(str(AT_IMPORT))
            """
        )
    )
    served = cli("serve", "patched:handle", "--port", "0")
    with connect(f"ws://127.0.0.1:{served.port}") as ws:
        assert ws.recv() == "True"


def test_table_options_reach_the_server(cli: Any) -> None:
    served = cli(
        "serve",
        ECHO,
        "--port",
        "0",
        "--origin",
        "https://ok.example",
        "--max-size",
        "1KiB",
        "--log-level",
        "debug",
    )
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{served.port}", origin="https://bad.example")
    assert info.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{served.port}", origin="https://ok.example") as ws:
        ws.send("x" * 1024)
        assert ws.recv() == "x" * 1024
        ws.send("x" * 1025)
        with pytest.raises(Exception):  # noqa: B017 - the close code is what matters
            ws.recv(timeout=10)
        assert ws.protocol.close_code == 1009


def test_debug_line_says_whether_speedups_are_on(cli: Any) -> None:
    served = cli("serve", ECHO, "--port", "0", "--log-level", "debug")
    expected = (
        "C speedups: on (geventws._speedups)"
        if geventws.speedups_available()  # the same installation as the subprocess's
        else "C speedups: off: pure-Python masking and sends"
    )
    assert expected in served.output()
    quiet = cli("serve", ECHO, "--port", "0")
    assert "C speedups" not in quiet.output()


# -- errors: exit 2 for the command line, 1 for the rest ---------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:handle", "cannot import module 'nosuchmodule': not found"),
        ("geventws.examples.echo:nope", "module 'geventws.examples.echo' has no attribute 'nope'"),
        (
            "broken:handle",
            "module 'broken' failed to import: ModuleNotFoundError: No module named 'missing_dependency'",
        ),
    ],
)
def test_import_errors_are_one_line_and_exit_2(
    cli: Any, tmp_path: Path, spec: str, message: str
) -> None:
    (tmp_path / "broken.py").write_text("import missing_dependency\n")
    served = cli("serve", spec, "--port", "0", wait=False)
    assert served.wait() == 2
    assert served.output() == f"geventws: error: {message}\n"


def test_port_in_use_is_one_line_and_exit_1(cli: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            served = cli("serve", ECHO, "--port", str(port), *extra, wait=False)
            assert served.wait() == 1
            assert served.output() == (
                f"geventws: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
            )


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA and a certificate for 127.0.0.1, as PEM files."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    other = trustme.CA().issue_cert("127.0.0.1")
    files = {
        "ca": tmp_path / "ca.pem",
        "both": tmp_path / "both.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "other_key": tmp_path / "other-key.pem",
        "garbage": tmp_path / "garbage.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(files["cert"]), append=i > 0)
    cert.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    files["garbage"].write_text("not a certificate\n")
    return files


def client_context(pem: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pem["ca"]))
    return context


@pytest.mark.parametrize("files", [("both",), ("cert", "key")])
def test_tls_serves_wss(cli: Any, pem: dict[str, Path], files: tuple[str, ...]) -> None:
    flags = ["--certfile", str(pem[files[0]])]
    if len(files) > 1:
        flags += ["--keyfile", str(pem[files[1]])]
    served = cli("serve", ECHO, "--port", "0", *flags)
    assert STARTUP.search(served.output()).group(1) == "wss"  # type: ignore[union-attr]
    with connect(f"wss://127.0.0.1:{served.port}", ssl=client_context(pem)) as ws:
        ws.send("secret")
        assert ws.recv() == "secret"


def test_tls_with_workers(cli: Any, pem: dict[str, Path]) -> None:
    served = cli("serve", ECHO, "--port", "0", "--workers", "2", "--certfile", str(pem["both"]))
    lines = [line for line in served.output().splitlines() if "listening on" in line]
    assert len(lines) == 1
    assert lines[0].endswith(
        f"geventws.supervisor: listening on wss://127.0.0.1:{served.port} (2 workers, "
        "SO_REUSEPORT; Press CTRL+C to quit)"
    )
    with connect(f"wss://127.0.0.1:{served.port}", ssl=client_context(pem)) as ws:
        ws.send("secret")
        assert ws.recv() == "secret"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--certfile", "missing.pem"],
            "cannot read --certfile missing.pem: No such file or directory",
        ),
        (["--certfile", "{garbage}"], "--certfile {garbage}: no PEM certificate in it"),
        (
            ["--certfile", "{cert}"],
            "--certfile {cert}: no private key in it (give the key with --keyfile)",
        ),
        (
            ["--certfile", "{cert}", "--keyfile", "missing-key.pem"],
            "cannot read --keyfile missing-key.pem: No such file or directory",
        ),
        (
            ["--certfile", "{cert}", "--keyfile", "{garbage}"],
            "--keyfile {garbage}: no PEM private key in it",
        ),
        (
            ["--certfile", "{cert}", "--keyfile", "{other_key}"],
            "the private key in {other_key} does not match the certificate in --certfile {cert}",
        ),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_tls_files_are_one_line_naming_the_file(
    cli: Any, pem: dict[str, Path], flags: list[str], message: str, workers: str
) -> None:
    names = {name: str(path) for name, path in pem.items()}
    argv = [flag.format(**names) for flag in flags]
    served = cli("serve", ECHO, "--port", "0", "--workers", workers, *argv, wait=False)
    assert served.wait() == 1
    assert served.output() == f"geventws: error: {message.format(**names)}\n"


# -- logging ---------------------------------------------------------------------------------

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


WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page"]
"""


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


# -- --fd ------------------------------------------------------------------------------------


def test_fd_serves_an_inherited_socket(cli: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        served = cli("serve", ECHO, "--fd", str(fd), pass_fds=(fd,))
    assert served.port == port
    with connect(f"ws://127.0.0.1:{port}") as ws:
        ws.send("inherited")
        assert ws.recv() == "inherited"


def test_fd_that_is_not_a_socket(cli: Any, tmp_path: Path) -> None:
    with open(tmp_path / "file", "w") as file:
        fd = file.fileno()
        served = cli("serve", ECHO, "--fd", str(fd), pass_fds=(fd,), wait=False)
        assert served.wait() == 1
    assert served.output() == (
        f"geventws: error: --fd {fd}: not a socket: Socket operation on non-socket\n"
    )


# -- --reload --------------------------------------------------------------------------------

VERSIONED = """
def handle(connection, request):
    connection.accept()
    connection.send({version!r})
    for message in connection:  # until the client or the server closes
        pass
"""


def answer(port: int) -> str:
    with connect(f"ws://127.0.0.1:{port}", open_timeout=10) as ws:
        message = ws.recv(timeout=10)
        assert isinstance(message, str)
        return message


def answers(port: int, expected: str, timeout: float = 30) -> bool:
    """Whether new connections get ``expected`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if answer(port) == expected:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, waiting to be reaped, doesn't)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and move its modification time on by two seconds.

    Python trusts a cached ``.pyc`` whose recorded source mtime (whole seconds) and
    size match, so a same-size version written within the second of the last import
    would bring back the old code.
    """
    later = path.stat().st_mtime + 2
    path.write_text(text)
    os.utime(path, (later, later))


def test_reload_restarts_on_a_change(cli: Any, tmp_path: Path) -> None:
    module = tmp_path / "versioned.py"
    module.write_text(VERSIONED.format(version="v1"))
    served = cli("serve", "versioned:handle", "--port", "0", "--reload")
    output = served.output()
    assert "geventws.reload: listening on ws://127.0.0.1:" in output
    assert wait_for(lambda: "started server process" in served.output(), 10)
    assert answer(served.port) == "v1"
    with connect(f"ws://127.0.0.1:{served.port}") as held:
        assert held.recv(timeout=10) == "v1"
        rewrite(module, VERSIONED.format(version="v2"))
        # The old server stops gracefully: its connections get 1001.
        with pytest.raises(ConnectionClosedOK):
            held.recv(timeout=30)
        assert held.protocol.close_code == 1001
    # The same port, the new code.
    assert wait_for(lambda: "changes in versioned.py: restarting" in served.output(), 30)
    assert answers(served.port, "v2"), served.output()
    # A module that doesn't import: the reloader waits for the next change.
    rewrite(module, "def broken(:\n")
    assert wait_for(lambda: "restarting at the next change" in served.output(), 30)
    assert "geventws: error: module 'versioned' failed to import: SyntaxError" in served.output()
    rewrite(module, VERSIONED.format(version="v3"))
    assert answers(served.port, "v3"), served.output()
    pids = [int(pid) for pid in re.findall(r"started server process (\d+)", served.output())]
    served.process.send_signal(signal.SIGINT)
    assert served.wait() == 0
    assert served.output().rstrip().endswith("geventws.reload: stopped")
    assert not [pid for pid in pids if alive(pid)]
    assert "Traceback" not in served.output()


def test_reload_watches_the_reload_dirs_only(cli: Any, tmp_path: Path) -> None:
    watched = tmp_path / "src"
    watched.mkdir()
    (watched / "app.py").write_text(VERSIONED.format(version="v1"))
    served = cli(
        "serve",
        "app:handle",
        "--port",
        "0",
        "--reload",
        "--reload-dir",
        str(watched),
        env={"PYTHONPATH": str(watched)},
    )
    assert f"watching {watched} for changes to *.py files" in served.output()
    assert answer(served.port) == "v1"
    (tmp_path / "elsewhere.py").write_text("x = 1\n")  # not watched
    (watched / "notes.txt").write_text("not python\n")  # not *.py
    rewrite(watched / "app.py", VERSIONED.format(version="v2"))
    assert wait_for(lambda: "restarting" in served.output(), 30)
    assert "changes in app.py: restarting" in served.output()
    assert "elsewhere" not in served.output() and "notes.txt" not in served.output()


def test_reload_server_stops_when_the_reloader_is_killed(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "versioned.py").write_text(VERSIONED.format(version="v1"))
    served = cli("serve", "versioned:handle", "--port", "0", "--reload")
    assert wait_for(lambda: "started server process" in served.output(), 10)
    (pid,) = re.findall(r"started server process (\d+)", served.output())
    with connect(f"ws://127.0.0.1:{served.port}") as ws:
        assert ws.recv(timeout=10) == "v1"
        served.process.kill()
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=30)
        assert ws.protocol.close_code == 1001
    assert wait_for(lambda: not alive(int(pid)), 30)


# -- the request deadline with --wsgi ---------------------------------------------------------


def test_wsgi_request_heads_have_a_deadline(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "page.py").write_text(WSGI_APP)
    served = cli("serve", ECHO, "--wsgi", "page:app", "--port", "0", "--handshake-timeout", "1")
    assert slow_request(served.port) == "closed"
    assert wait_for(
        lambda: "INFO geventws.wsgi: request head timed out: 127.0.0.1:" in served.output(), 10
    )
    # Normal clients: HTTP, keep-alive, WebSocket.
    with requests.Session() as session:
        for _ in range(2):
            assert session.get(f"http://127.0.0.1:{served.port}/page", timeout=10).text == "page"
    with connect(f"ws://127.0.0.1:{served.port}/") as ws:
        ws.send("still")
        assert ws.recv() == "still"


def test_wsgi_tls_handshake_is_under_the_deadline(
    cli: Any, tmp_path: Path, pem: dict[str, Path]
) -> None:
    (tmp_path / "page.py").write_text(WSGI_APP)
    served = cli(
        "serve", ECHO, "--wsgi", "page:app", "--port", "0", "--handshake-timeout", "1",
        "--certfile", str(pem["both"]),
    )  # fmt: skip
    assert STARTUP.search(served.output()).group(1) == "wss"  # type: ignore[union-attr]
    assert silent_connection_closed(served.port)  # TCP, and TLS never starts
    assert slow_request(served.port, tls=client_context(pem)) == "closed"
    response = requests.get(
        f"https://127.0.0.1:{served.port}/page", verify=str(pem["ca"]), timeout=10
    )
    assert response.text == "page"
    with connect(f"wss://127.0.0.1:{served.port}/", ssl=client_context(pem)) as ws:
        ws.send("secret")
        assert ws.recv() == "secret"
