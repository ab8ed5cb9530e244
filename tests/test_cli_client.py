"""``geventws client`` in subprocesses: each exit status (0 normal close, 1 abnormal
close or failure, 2 usage, 130 Ctrl-C), TLS with ``--cafile`` and ``--insecure``,
headers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from geventws import CloseCode, Connection, Request

from .utils import ThrowawayCA, wait_for


class Client:
    """``python -m geventws client ARGS`` with standard input a pipe, stdout and stderr
    in files (nobody has to drain them)."""

    def __init__(self, tmp_path: Path, args: tuple[str, ...], stdin: Optional[bytes]) -> None:
        n = len(list(tmp_path.glob("client*.out")))
        self.out = tmp_path / f"client{n}.out"
        self.err = tmp_path / f"client{n}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "geventws", "client", *args],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.process.stdin is not None
        if stdin is not None:
            self.process.stdin.write(stdin)
            self.process.stdin.close()

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running:\n{self.stderr()}") from None


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    started: list[Client] = []

    def start(*args: str, stdin: Optional[bytes] = b"") -> Client:
        process = Client(tmp_path, args, stdin)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
        if process.process.stdin is not None and not process.process.stdin.closed:
            process.process.stdin.close()


def echo(connection: Connection, request: Request) -> None:
    connection.accept()
    for message in connection:
        connection.send(message)


def test_exit_0_after_a_normal_close(serve: Any, client: Any) -> None:
    server = serve(echo)
    run = client(server.url, stdin=b"hello\nworld\n")
    assert run.wait() == 0
    assert run.stdout() == "< hello\n< world\n"
    assert run.stderr() == f"Connected to {server.url}.\nConnection closed: 1000.\n"


def test_exit_0_when_the_server_goes_away(serve: Any, client: Any) -> None:
    def going_away(connection: Connection, request: Request) -> None:
        connection.accept()
        connection.send("bye")
        connection.close(CloseCode.GOING_AWAY, "restarting")

    server = serve(going_away)
    run = client(server.url, stdin=None)
    assert run.wait() == 0
    assert run.stdout() == "< bye\n"
    assert run.stderr().endswith("Connection closed: 1001 (restarting).\n")


def test_exit_1_after_an_abnormal_close(serve: Any, client: Any) -> None:
    def fail(connection: Connection, request: Request) -> None:
        connection.accept()
        connection.close(4000, "application error")

    server = serve(fail)
    run = client(server.url, stdin=None)
    assert run.wait() == 1
    assert run.stderr().endswith("Connection closed: 4000 (application error).\n")


def test_exit_1_when_the_connection_fails(client: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    run = client(f"ws://127.0.0.1:{port}/")
    assert run.wait() == 1
    assert run.stderr() == (
        f"geventws: error: cannot connect to ws://127.0.0.1:{port}/: "
        "[Errno 111] Connection refused\n"
    )


def test_exit_1_when_the_handshake_is_refused(serve: Any, client: Any) -> None:
    server = serve(lambda connection, request: connection.reject(403, "no\n"))
    run = client(server.url)
    assert run.wait() == 1
    err = run.stderr()
    assert err.startswith(f"geventws: error: cannot connect to {server.url}: ") and "403" in err
    assert err.count("\n") == 1


def test_exit_2_for_a_usage_error(client: Any) -> None:
    run = client("ws://127.0.0.1:1/", "--max-size", "12XB")
    assert run.wait() == 2
    assert run.stderr() == (
        "geventws client: error: argument --max-size: expected a size such as 1048576, "
        "64KiB or 16MiB, or none: '12XB'\n"
    )


def test_exit_130_on_ctrl_c_closing_with_1001(serve: Any, client: Any) -> None:
    codes: list[Optional[int]] = []

    def record(connection: Connection, request: Request) -> None:
        connection.accept()
        try:
            for message in connection:
                connection.send(message)
        finally:
            codes.append(connection.close_code)

    server = serve(record)
    run = client(server.url, stdin=None)  # standard input stays open: it waits
    assert wait_for(lambda: "Connected to" in run.stderr(), 30), run.stderr()
    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 130
    assert "Traceback" not in run.stderr() and "KeyboardInterrupt" not in run.stderr()
    assert wait_for(lambda: codes == [1001], 10), codes


def test_exit_130_on_ctrl_c_while_connecting(client: Any) -> None:
    with socket.socket() as silent:  # accepts TCP, never answers the upgrade
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        run = client(f"ws://127.0.0.1:{port}/", "--open-timeout", "60")
        connection, _ = silent.accept()
        with connection:
            connection.settimeout(30)
            assert connection.recv(4096).startswith(b"GET / HTTP/1.1")
            run.process.send_signal(signal.SIGINT)
            assert run.wait() == 130
    assert run.stderr() == ""


def test_header_reaches_the_server(serve: Any, client: Any) -> None:
    def show(connection: Connection, request: Request) -> None:
        connection.accept()
        connection.send(request.headers.get("X-Token", "none"))
        connection.close()

    server = serve(show)
    run = client(server.url, "--header", "X-Token: abc")
    assert run.wait() == 0
    assert run.stdout() == "< abc\n"


@pytest.fixture
def tls_server(serve: Any, tmp_path: Path) -> tuple[Any, Path]:
    ca = ThrowawayCA()
    cafile = tmp_path / "ca.pem"
    ca.ca.cert_pem.write_to_path(str(cafile))
    return serve(echo, ssl_context=ca.server_context), cafile


def test_cafile_trusts_a_private_ca(tls_server: tuple[Any, Path], client: Any) -> None:
    server, cafile = tls_server
    url = f"wss://127.0.0.1:{server.port}/"
    run = client(url, "--cafile", str(cafile), stdin=b"secret\n")
    assert run.wait() == 0
    assert run.stdout() == "< secret\n"
    assert "warning" not in run.stderr()


def test_unverified_certificate_is_exit_1(tls_server: tuple[Any, Path], client: Any) -> None:
    server, _ = tls_server
    url = f"wss://127.0.0.1:{server.port}/"
    run = client(url)
    assert run.wait() == 1
    err = run.stderr()
    assert err.startswith(f"geventws: error: cannot connect to {url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in err and err.count("\n") == 1


def test_insecure_connects_with_a_loud_warning(tls_server: tuple[Any, Path], client: Any) -> None:
    server, _ = tls_server
    url = f"wss://127.0.0.1:{server.port}/"
    for _ in range(2):  # every time
        run = client(url, "--insecure", stdin=b"anyone\n")
        assert run.wait() == 0
        assert run.stdout() == "< anyone\n"
        assert run.stderr().startswith(
            "geventws: warning: --insecure: the server's certificate and host name are NOT verified"
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --cafile {path}: No such file or directory"),
        ("not a certificate\n", "--cafile {path}: no PEM certificate in it"),
    ],
)
def test_bad_cafile_is_exit_1(
    client: Any, tmp_path: Path, content: Optional[str], message: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    run = client("wss://127.0.0.1:1/", "--cafile", str(path))
    assert run.wait() == 1
    assert run.stderr() == f"geventws: error: {message.format(path=path)}\n"
