"""``geventws serve`` end to end, in subprocesses: the startup line, signals, runtime
errors, TLS files, ``--fd``, ``--reload``, and the request deadline of ``--wsgi``
(logging is in test_cli_logging.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

import geventws

from .cli_runner import ECHO, STARTUP, WSGI_APP
from .test_wsgi_deadline import silent_connection_closed, slow_request
from .utils import wait_for

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
