"""A server :class:`~geventws.Connection` and an independent raw-socket peer on one real
TCP connection on loopback, for the connection layer's tests: the connection runs in
the test's gevent hub, the peer (:class:`tests.utils.RawPeer`, its own framing code) in
a thread with a plain blocking socket. Waits in the hub poll with ``gevent.sleep``
(never a blocking call that would stall the hub), each with a deadline."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Iterator, Optional

import gevent
import gevent.socket

from geventws import Connection
from geventws.core.protocol import Protocol, Side
from geventws.options import ConnectionSettings, resolve

from .utils import RawPeer, fd_count, wait_in_hub


def tcp_pair(buffer: int = 8192) -> tuple[Any, socket.socket]:
    """A real TCP connection on loopback: (gevent socket, plain blocking socket), with
    small buffers so that a large write blocks until the peer reads."""
    listener = socket.socket()
    # An Ethernet-sized MSS (loopback's is 64 KiB): with buffers smaller than one
    # segment, every window update would wait for TCP's persist timer.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)  # before the window opens
    client.settimeout(20)
    client.connect(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    ours = gevent.socket.socket(fileno=accepted.detach())
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    for sock in (ours, client):  # as the server and the client set them
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, client


def server_connection(sock: Any, **options: Any) -> Connection:
    """A server-side Connection already open (no HTTP handshake)."""
    options.setdefault("ping_interval", None)
    settings = ConnectionSettings(resolve("server", options, "test"))
    protocol = Protocol(Side.SERVER, max_size=settings.max_size)
    return Connection(sock, Side.SERVER, settings, protocol=protocol)


class Peer:
    """The raw peer's script, run in a thread: ``script(peer)``, using ``peer.raw`` (a
    :class:`RawPeer`) and ``peer.go``; its result or exception is kept for the test."""

    def __init__(self, sock: socket.socket, script: Callable[[Peer], Any]) -> None:
        self.raw = RawPeer(sock)
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.go = threading.Event()  # the test lets the script go on
        self._thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self._thread.start()

    def _run(self, script: Callable[[Peer], Any]) -> None:
        try:
            self.result = script(self)
        except BaseException as exc:  # reported to the test
            self.error = exc

    def finish(self, timeout: float = 20.0) -> Any:
        """Wait (in the hub) for the script; its result, or re-raise its error."""
        assert wait_in_hub(lambda: not self._thread.is_alive(), timeout), "peer script hung"
        self._thread.join()
        self.raw.close()
        if self.error is not None:
            raise self.error
        return self.result


def no_descriptor_leaks() -> Iterator[None]:
    """The body of a test module's autouse fixture: the test leaves no descriptor open."""
    gevent.sleep(0)  # the hub and its loop exist (their own descriptors) before counting
    before = fd_count()
    yield
    gevent.sleep(0.05)
    assert wait_in_hub(lambda: fd_count() <= before), (
        f"descriptors leaked: {before} -> {fd_count()}"
    )
