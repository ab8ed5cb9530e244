"""The examples and the demo, run the way their docs say, against independent clients."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from geventws.examples import ticker

from .test_wsgi import pywsgi
from .utils import ThrowawayCA, start_serve_command, wait_for


def test_ticker_pushes_to_every_client(serve: Any) -> None:
    server = serve(ticker.handle)
    with connect(server.url) as first, connect(server.url) as second:
        assert wait_for(lambda: len(server.server.connections) == 2)
        server.call(lambda: ticker.tick(server.server, interval=0.01, count=3))
        for ws in (first, second):
            ticks = [json.loads(ws.recv(timeout=10))["tick"] for _ in range(3)]
            assert ticks == [1, 2, 3]


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The demo as the README starts it, on a free port."""
    log = tmp_path / "chat.log"
    process, port = start_serve_command(
        ["geventws.examples.chat:handle", "--wsgi", "geventws.examples.chat:app"], log
    )
    try:
        yield process, port, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_chat_demo_page_and_room(chat_server: Any) -> None:
    process, port, log = chat_server
    page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.status_code == 200 and "geventws chat" in page.text
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=10).status_code == 404
    with connect(f"ws://127.0.0.1:{port}/chat?name=ann") as ann:
        assert json.loads(ann.recv(timeout=10)) == {"type": "join", "name": "ann", "present": 1}
        with connect(f"ws://127.0.0.1:{port}/chat?name=bob") as bob:
            assert json.loads(bob.recv(timeout=10))["name"] == "bob"
            assert json.loads(ann.recv(timeout=10)) == {"type": "join", "name": "bob", "present": 2}
            ann.send("hello bob")
            expected = {"type": "message", "name": "ann", "text": "hello bob"}
            assert json.loads(bob.recv(timeout=10)) == expected
            assert json.loads(ann.recv(timeout=10)) == expected
        assert json.loads(ann.recv(timeout=10)) == {"type": "leave", "name": "bob", "present": 1}
        # SIGTERM: 1001 to everyone, exit 0.
        process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ann.recv(timeout=30)
        assert ann.close_code == 1001
    assert process.wait(timeout=30) == 0
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text


# -- Flask -----------------------------------------------------------------------------


def test_flask_pages_and_websocket_share_the_session(serve: Any) -> None:
    from geventws.examples import flask_app

    server = pywsgi(serve, flask_app.app)
    base = server.http_url
    with requests.Session() as session:
        assert "Log in" in session.get(base + "/", timeout=10).text
        with pytest.raises(InvalidStatus) as info:
            connect(server.url + "/ws", open_timeout=10)
        assert info.value.response.status_code == 401
        login = session.post(base + "/login", data={"name": "ann"}, allow_redirects=False)
        assert login.status_code == 302
        assert "Logged in as <b>ann</b>" in session.get(base + "/", timeout=10).text
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        with connect(server.url + "/ws", additional_headers={"Cookie": cookie}) as ws:
            assert ws.recv(timeout=10) == "hello ann"
            # A Flask page on the same port while the WebSocket is open.
            assert "ann" in session.get(base + "/", timeout=10).text
            ws.send("note")
            assert ws.recv(timeout=10) == "ann: note"
    del login
    gc.collect()  # requests keeps the POST's socket until collected; the leak check counts fds


def test_cli_wsgi_over_tls(tmp_path: Path) -> None:
    """``--wsgi`` with ``--certfile``: the page over HTTPS and the WebSocket over wss://
    on one port, verified against a test CA."""
    tls = ThrowawayCA("127.0.0.1")
    tls.cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "s.pem")
    process, port = start_serve_command(
        [
            "geventws.examples.chat:handle",
            "--wsgi",
            "geventws.examples.chat:app",
            "--certfile",
            str(tmp_path / "s.pem"),
        ],
        tmp_path / "tls.log",
    )
    try:
        with requests.Session() as session:
            tls.ca.cert_pem.write_to_path(tmp_path / "ca.pem")
            page = session.get(f"https://127.0.0.1:{port}/", verify=str(tmp_path / "ca.pem"))
            assert page.status_code == 200 and "geventws chat" in page.text
        with connect(f"wss://127.0.0.1:{port}/chat?name=tls", ssl=tls.client_context) as ws:
            assert json.loads(ws.recv(timeout=10))["name"] == "tls"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
