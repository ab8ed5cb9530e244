"""gunicorn subprocesses with geventws' worker, against independent clients."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .utils import wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKER = "geventws.worker.GeventWebSocketWorker"


class Gunicorn:
    def __init__(self, tmp_path: Path, worker: str, app: str) -> None:
        self.log = tmp_path / "gunicorn.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-k",
                    worker,
                    "-b",
                    "127.0.0.1:0",
                    "-w",
                    "1",
                    "--graceful-timeout",
                    "20",
                    "--access-logfile",
                    "-",
                    app,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.port = 0

        def ready() -> bool:
            text = self.log.read_text()
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
            self.port = int(match.group(1)) if match else 0
            return (bool(self.port) and "Booting worker" in text) or self.process.poll() is not None

        assert wait_for(ready, timeout=60) and self.port, self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[type]:
    started: list[Gunicorn] = []

    def start(worker: str = WORKER, app: str = "tests.wsgi_apps:combined") -> Gunicorn:
        server = Gunicorn(tmp_path, worker, app)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_worker_serves_http_middleware_routes_and_legacy_apps(gunicorn: type) -> None:
    server = gunicorn()
    base = f"127.0.0.1:{server.port}"
    with connect(f"ws://{base}/ws") as ws, connect(f"ws://{base}/legacy") as legacy:
        ws.send("via the middleware")
        assert ws.recv(timeout=10) == "via the middleware"
        legacy.send("via gevent-websocket's API")
        assert legacy.recv(timeout=10) == "via gevent-websocket's API"
        # Plain HTTP on the same port while both WebSockets are open.
        with requests.Session() as session:
            for _ in range(3):
                assert session.get(f"http://{base}/hello", timeout=10).text == "hello from WSGI"
        with connect(f"ws://{base}/info?x=1", additional_headers={"Cookie": "session=c"}) as info:
            seen = json.loads(info.recv(timeout=10))
            assert seen["cookie"] == "c" and "gunicorn" in seen["server"]
        ws.send(b"\x00" * 100000)
        assert ws.recv(timeout=10) == b"\x00" * 100000
    assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log
    assert '"GET /ws HTTP/1.1" 101' in log


def test_sigterm_closes_websockets_with_1001_and_exits(gunicorn: type) -> None:
    server = gunicorn()
    with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=30)
        assert ws.close_code == 1001
    assert server.process.wait(timeout=30) == 0
    # Stopping with a WebSocket open used to log ConcurrentObjectUseError from closing
    # the socket while the handler was still reading it.
    log = server.log.read_text()
    assert "ConcurrentObjectUseError" not in log and "Traceback" not in log, log


def test_sigterm_ends_idle_keep_alive_connections_at_once(gunicorn: type) -> None:
    """A worker stopping gracefully doesn't wait for an idle keep-alive connection to
    time out (the request-head deadline is 120 s here, the graceful timeout 20 s): it is
    closed at once."""
    server = gunicorn(worker="tests.wsgi_apps.PatientWorker")
    with requests.Session() as idle:
        page = idle.get(f"http://127.0.0.1:{server.port}/hello", timeout=10)
        assert page.text == "hello from WSGI" and page.headers.get("Connection") != "close"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0  # not the 20 s graceful timeout
    log = server.log.read_text()
    assert "Worker graceful timeout" not in log and "Traceback" not in log, log


def test_plain_gevent_worker_refuses_with_a_pointer_to_ours(gunicorn: type) -> None:
    server = gunicorn(worker="gevent")
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10)
    assert info.value.response.status_code == 500
    assert requests.get(f"http://127.0.0.1:{server.port}/hello", timeout=10).status_code == 200
    server.stop()
    assert WORKER in server.log.read_text()
