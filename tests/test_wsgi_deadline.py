"""The request-head deadline of :class:`geventws.wsgi.RequestDeadlineHandler`: slow
clients (slowloris), silent and idle keep-alive connections are closed under plain
gevent.pywsgi, with :class:`~geventws.wsgi.WebSocketHandler`, and under gunicorn with
geventws' worker (``geventws serve --wsgi``: test_cli_serve.py)."""

from __future__ import annotations

import logging
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
from typing import Any, Callable, Optional

import pytest
import requests
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from websockets.sync.client import connect

from geventws.wsgi import RequestDeadlineHandler, WebSocketHandler

from .utils import wait_for
from .wsgi_apps import app as combined_app

ROOT = Path(__file__).resolve().parent.parent


def slow_request(port: int, *, tls: Optional[ssl.SSLContext] = None, limit: float = 30) -> str:
    """Send a request head one byte at a time (a slowloris); return ``"closed"`` when the
    server closes the connection, ``"answered"`` when it answers, ``"open"`` when it
    does neither within ``limit`` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit)
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.05)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X")
                data = sock.recv(4096)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except (BrokenPipeError, ConnectionResetError):
                return "closed"
            return "answered" if data else "closed"
        return "open"
    finally:
        sock.close()


def silent_connection_closed(port: int, limit: float = 30) -> bool:
    """Whether a connection that sends nothing is closed by the server within ``limit``."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def idle_keep_alive_closed(port: int, limit: float = 30) -> bool:
    """Send one complete request, read its answer, then wait: whether the server closes
    the idle keep-alive connection within ``limit``."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while not received.endswith(b"hello from WSGI"):
            data = sock.recv(4096)
            assert data, received
            received += data
        assert received.startswith(b"HTTP/1.1 200")
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def handler_class(base: type[RequestDeadlineHandler], timeout: float) -> type[Any]:
    class Handler(base):  # type: ignore[valid-type,misc]
        handshake_timeout = timeout

    return Handler


def pywsgi(serve: Any, handler: type[Any], app: Callable[..., Any] = combined_app) -> Any:
    return serve(
        app,
        factory=WSGIServer,
        handler_class=handler,
        log=None,
        error_log=logging.getLogger("test.pywsgi"),
        spawn=Pool(),
    )


@pytest.mark.parametrize("base", [RequestDeadlineHandler, WebSocketHandler])
def test_slow_request_head_is_closed_after_the_deadline(
    serve: Any, base: type[RequestDeadlineHandler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "geventws.wsgi")
    server = pywsgi(serve, handler_class(base, 0.5))
    assert slow_request(server.port) == "closed"
    assert wait_for(
        lambda: any(
            r.levelno == logging.INFO and r.getMessage().startswith("request head timed out: ")
            for r in caplog.records
        ),
        10,
    )
    assert silent_connection_closed(server.port)


def test_idle_keep_alive_is_closed_quietly(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "geventws.wsgi")
    server = pywsgi(serve, handler_class(RequestDeadlineHandler, 0.5))
    assert idle_keep_alive_closed(server.port)
    assert wait_for(
        lambda: any(
            r.levelno == logging.DEBUG
            and r.getMessage().startswith("idle keep-alive connection closed: ")
            for r in caplog.records
        ),
        10,
    )
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_normal_clients_are_not_affected(serve: Any) -> None:
    server = pywsgi(serve, handler_class(WebSocketHandler, 1.0))
    with requests.Session() as session:
        for _ in range(3):  # keep-alive: each request has its own deadline
            response = session.get(f"{server.http_url}/hello", timeout=10)
            assert response.text == "hello from WSGI"
        response = session.post(f"{server.http_url}/echo-body", data=b"x" * 10000, timeout=10)
        assert response.content == b"x" * 10000
    # A WebSocket outlives the deadline: it only covers the request head.
    with connect(f"{server.url}/ws") as ws:
        ws.send("first")
        assert ws.recv(timeout=10) == "first"
        time.sleep(1.5)  # longer than the deadline (not an assertion on time)
        ws.send("later")
        assert ws.recv(timeout=10) == "later"


def test_default_deadline_is_the_tables_handshake_timeout() -> None:
    from geventws.options import OPTIONS

    (option,) = [o for o in OPTIONS if o.name == "handshake_timeout"]
    assert RequestDeadlineHandler.handshake_timeout == option.default
    assert issubclass(WebSocketHandler, RequestDeadlineHandler)


# -- gunicorn with geventws' worker -----------------------------------------------------------

WORKER_MODULE = """
from geventws.worker import GeventWebSocketWorker

class Worker(GeventWebSocketWorker):
    handshake_timeout = 1.0
"""


class Gunicorn:
    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.log = tmp_path / f"gunicorn{len(list(tmp_path.glob('gunicorn*.log')))}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-k",
                    "deadline_worker.Worker",
                    "-b",
                    "127.0.0.1:0",
                    "-w",
                    "1",
                    "--graceful-timeout",
                    "5",
                    *extra,
                    "tests.wsgi_apps:app",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
                },
            )
        self.port = 0

        def ready() -> bool:
            text = self.log.read_text()
            match = re.search(r"Listening at: https?://127\.0\.0\.1:(\d+)", text)
            self.port = int(match.group(1)) if match else 0
            return (bool(self.port) and "Booting worker" in text) or self.process.poll() is not None

        assert wait_for(ready, timeout=60) and self.port, self.log.read_text()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    (tmp_path / "deadline_worker.py").write_text(textwrap.dedent(WORKER_MODULE))
    started: list[Gunicorn] = []

    def start(*extra: str) -> Gunicorn:
        server = Gunicorn(tmp_path, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def test_gunicorn_worker_closes_slow_request_heads(gunicorn: Callable[..., Gunicorn]) -> None:
    server = gunicorn()
    assert slow_request(server.port) == "closed"
    assert silent_connection_closed(server.port)
    assert idle_keep_alive_closed(server.port)
    with requests.Session() as session:
        for _ in range(2):
            response = session.get(f"http://127.0.0.1:{server.port}/hello", timeout=10)
            assert response.text == "hello from WSGI"
    with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        ws.send("through gunicorn")
        assert ws.recv(timeout=10) == "through gunicorn"


def test_gunicorn_worker_tls_handshake_is_under_the_deadline(
    gunicorn: Callable[..., Gunicorn], tmp_path: Path
) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = (tmp_path / name for name in ("c.pem", "k.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = gunicorn("--certfile", str(certfile), "--keyfile", str(keyfile))
    assert silent_connection_closed(server.port)  # never starts TLS
    context = ssl.create_default_context(cafile=str(cafile))
    assert slow_request(server.port, tls=context) == "closed"
    response = requests.get(
        f"https://127.0.0.1:{server.port}/hello", verify=str(cafile), timeout=10
    )
    assert response.text == "hello from WSGI"
