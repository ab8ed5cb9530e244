"""Debian's nginx in front of ``geventws serve``, with the configuration the deployment
docs show (``docs/deploy/nginx.conf``, ports and certificate paths replaced): TLS ends
at nginx, a real WebSocket echoes through it, the handler sees the client's address and
scheme from ``X-Forwarded-For`` / ``X-Forwarded-Proto``, and keepalive pings keep an
idle connection open past ``proxy_read_timeout``.

Without nginx these tests skip, except when ``GEVENTWS_CI=1`` (CI installs nginx and
sets it): there a missing nginx fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .utils import ThrowawayCA, require, start_serve_command, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS_CONFIG = ROOT / "docs" / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

#: The client connects from another loopback address than nginx's own, so the address
#: the handler reports can only come from X-Forwarded-For.
CLIENT_ADDRESS = "127.0.0.2"

HANDLER_MODULE = textwrap.dedent(
    """
    import json

    def handle(connection, request):
        connection.send(json.dumps([list(request.remote_address)[:2], request.scheme]))
        for message in connection:
            connection.send(message, binary=isinstance(message, bytes))
    """
)


@pytest.fixture(scope="module", autouse=True)
def need_nginx() -> None:
    require(os.access(NGINX, os.X_OK), f"nginx not found ({NGINX}); Debian: apt-get install nginx")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} not found once in {DOCS_CONFIG}"
    return text.replace(old, new)


class Nginx:
    """nginx in the foreground (``daemon off``, one process), everything it writes
    under ``directory``, serving the docs' site configuration."""

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = directory
        self.port = free_port()
        site = replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;")
        (directory / "site.conf").write_text(site)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / name).mkdir()
        (directory / "nginx.conf").write_text(
            textwrap.dedent(
                f"""
                daemon off;
                master_process off;
                worker_processes 1;
                pid {directory}/nginx.pid;
                error_log {directory}/error.log info;
                events {{ worker_connections 64; }}
                http {{
                    access_log {directory}/access.log;
                    client_body_temp_path {directory}/client_body;
                    proxy_temp_path {directory}/proxy;
                    fastcgi_temp_path {directory}/fastcgi;
                    uwsgi_temp_path {directory}/uwsgi;
                    scgi_temp_path {directory}/scgi;
                    include {directory}/site.conf;
                }}
                """
            )
        )
        self.log = directory / "error.log"
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-e", str(self.log), "-c", str(directory / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def listening() -> bool:
            if self.process.poll() is not None:
                return True
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        assert wait_for(listening, timeout=30) and self.process.poll() is None, self.errors()

    def errors(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no error log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def ca() -> ThrowawayCA:
    return ThrowawayCA("localhost", "127.0.0.1")


@pytest.fixture
def stack(
    tmp_path: Path, ca: ThrowawayCA, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., str]]:
    """``start(serve_args, read_timeout)``: geventws serve behind nginx; returns the
    wss:// URL."""
    (tmp_path / "nginxapp.py").write_text(HANDLER_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    ca.cert.private_key_pem.write_to_path(str(key))
    ca.cert.cert_chain_pems[0].write_to_path(str(cert))
    processes: list[subprocess.Popen[bytes]] = []
    proxies: list[Nginx] = []

    def start(serve_args: tuple[str, ...] = (), read_timeout: str = "60s") -> str:
        backend, port = start_serve_command(
            ["nginxapp:handle", *serve_args], tmp_path / f"serve{len(processes)}.log"
        )
        processes.append(backend)
        site = DOCS_CONFIG.read_text()
        site = replace_once(site, "server 127.0.0.1:8000;", f"server 127.0.0.1:{port};")
        site = replace_once(site, "/etc/letsencrypt/live/example.com/fullchain.pem", str(cert))
        site = replace_once(site, "/etc/letsencrypt/live/example.com/privkey.pem", str(key))
        site = replace_once(site, "proxy_read_timeout 60s;", f"proxy_read_timeout {read_timeout};")
        directory = tmp_path / f"nginx{len(proxies)}"
        directory.mkdir()
        proxies.append(Nginx(directory, site))
        return f"wss://localhost:{proxies[-1].port}/chat?room=1"

    yield start
    for proxy in proxies:
        proxy.stop()
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def open_ws(url: str, ca: ThrowawayCA) -> ClientConnection:
    """websockets' client from 127.0.0.2, without keepalive of its own, with a forged
    X-Forwarded-For that nginx appends to (and geventws must see through)."""
    return connect(
        url,
        ssl=ca.client_context,
        proxy=None,
        ping_interval=None,
        open_timeout=10,
        additional_headers={"X-Forwarded-For": "6.6.6.6"},
        source_address=(CLIENT_ADDRESS, 0),
    )


def test_nginx_websocket_through_the_documented_config(
    stack: Callable[..., str], ca: ThrowawayCA
) -> None:
    url = stack()
    with open_ws(url, ca) as ws:
        address, scheme = json.loads(ws.recv(timeout=10))
        assert address == [CLIENT_ADDRESS, 0], "X-Forwarded-For not used"
        assert scheme == "wss", "X-Forwarded-Proto not used"
        ws.send("hello through nginx")
        assert ws.recv(timeout=10) == "hello through nginx"
        ws.send(b"\x00\x01" * 40000)
        assert ws.recv(timeout=10) == b"\x00\x01" * 40000


def test_nginx_keepalive_pings_outlive_proxy_read_timeout(
    stack: Callable[..., str], ca: ThrowawayCA
) -> None:
    """An idle connection stays open past nginx's proxy_read_timeout because geventws
    pings more often; with pings off, nginx closes it (the FAQ's "closes after N s")."""
    kept = stack(("--ping-interval", "0.5"), "2s")
    dropped = stack(("--ping-interval", "none"), "2s")
    with open_ws(kept, ca) as alive, open_ws(dropped, ca) as idle:
        alive.recv(timeout=10)
        idle.recv(timeout=10)
        # nginx closes the idle one after 2 s without a byte from geventws.
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=20)
        time.sleep(1)  # the other has been idle longer than 2 s by now, pinged twice a second
        alive.send("still here")
        assert alive.recv(timeout=10) == "still here"


def test_nginx_config_is_the_one_in_the_docs() -> None:
    text = DOCS_CONFIG.read_text()
    for line in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_read_timeout 60s;",
    ):
        assert line in text
    docs = (ROOT / "docs" / "howto" / "deploy.rst").read_text()
    assert "literalinclude:: ../deploy/nginx.conf" in docs
