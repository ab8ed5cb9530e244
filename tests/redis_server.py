"""A real ``redis-server`` for the tests (Debian's package), and a gevent hub in a thread.

:class:`RedisServer` starts one on a free loopback port with persistence off, waits until
it answers, and can be stopped, killed, paused (SIGSTOP) and restarted on the same port.
:func:`redis_servers` is the body of a fixture that always cleans up.

:class:`HubThread` runs a gevent hub in a thread of its own, so that a test can drive
brokers there (``call``) while checking from outside, with deadlines, that the hub keeps
answering.
"""

from __future__ import annotations

import concurrent.futures
import gc
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import gevent
import gevent.event
import greenlet

from .utils import require

T = TypeVar("T")

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


def require_redis() -> None:
    """Skip when redis-server is missing, except in CI, where it fails (see
    :func:`tests.utils.require`)."""
    require(
        redis_available(), f"redis-server not found ({REDIS_SERVER}): apt-get install redis-server"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 (or TLS, or a Unix socket)."""

    def __init__(self, directory: Path, *args: str, tls: Optional[Any] = None) -> None:
        self.directory = directory
        self.args = list(args)
        self.tls = tls  # (certfile, keyfile) to serve TLS only
        self.port = _free_port()
        self.unix_path = directory / "redis.sock"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def command_line(self) -> list[str]:
        line = [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--unixsocket", str(self.unix_path),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls:
            certfile, keyfile = self.tls
            line += ["--port", "0", "--tls-port", str(self.port)]
            line += ["--tls-cert-file", str(certfile), "--tls-key-file", str(keyfile)]
            line += ["--tls-auth-clients", "no"]
        else:
            line += ["--port", str(self.port)]
        return line + self.args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it accepts connections."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.process = None
                raise RuntimeError(f"redis-server exited at start: {log[-2000:]}")
            if self._accepting():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("redis-server did not start in time")
            time.sleep(0.02)

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _signal(self, signum: int, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused server can't stop
            process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait: the connections die with it."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def client(self) -> Any:
        """A plain (blocking, not gevent) redis-py client, for the test's own checks."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def numsub(self, channel: str) -> int:
        """Subscribers of ``channel`` according to Redis."""
        with self.client() as client:
            return int(dict(client.pubsub_numsub(channel))[channel.encode()])

    def close(self) -> None:
        self.kill()


def redis_servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Fixture body: a factory of started :class:`RedisServer`, all killed afterwards."""
    require_redis()
    servers: list[RedisServer] = []

    def start(*args: str, tls: Optional[Any] = None) -> RedisServer:
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, *args, tls=tls)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close()


class HubThread:
    """A gevent hub in a thread of its own; :meth:`call` runs a function there."""

    def __init__(self) -> None:
        self.hub: Any = None
        self.leftover_greenlets: list[Any] = []
        self._ready = threading.Event()
        self._stop: Any = None
        self._thread = threading.Thread(target=self._run, name="geventws-test-hub", daemon=True)

    def start(self) -> HubThread:
        self._thread.start()
        assert self._ready.wait(10), "hub thread did not start"
        return self

    def _run(self) -> None:
        self.hub = gevent.get_hub()
        self._stop = gevent.event.Event()
        self._ready.set()
        while not self._stop.wait(1):
            pass
        gevent.sleep(0.01)  # let finished greenlets unwind
        gc.collect()
        hub = gevent.get_hub()
        self.leftover_greenlets = [
            g
            for g in gc.get_objects()
            if type(g) is not weakref.ProxyType
            and isinstance(g, greenlet.greenlet)
            and g.parent is hub
            and not g.dead
        ]
        hub.destroy(destroy_loop=True)

    def submit(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``function`` in a new greenlet of the hub; its future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function())
            except Exception as exc:  # handed to the test thread
                future.set_exception(exc)

        self.hub.loop.run_callback_threadsafe(gevent.spawn, run)
        return future

    def call(self, function: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``function`` in the hub and return its result; fails if the hub doesn't
        finish it within ``timeout`` seconds (a blocked hub, for one)."""
        return self.submit(function).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.hub.loop.run_callback_threadsafe(self._stop.set)
            self._thread.join(10)
            assert not self._thread.is_alive(), "hub thread did not stop"
