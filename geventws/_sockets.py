"""Socket helpers of the gevent layer: TLS under a deadline, reading an HTTP head,
answering an HTTP error and closing gracefully, batched non-blocking sends, addresses.

Every function here closes what it owns in a ``finally`` whatever the exception
(:class:`gevent.Timeout` and :class:`greenlet.GreenletExit` are not :class:`OSError`),
and the ones used on shutdown paths never raise.
"""

from __future__ import annotations

import os
import socket as _socket
import ssl as _ssl
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import gevent
import gevent.ssl

from ._deadline import Deadline
from .core.http11 import find_head_end
from .core.server_handshake import Rejected

if TYPE_CHECKING:
    from .core.server_handshake import Accepted

__all__ = [
    "SOCKET_ANSWER",
    "HandshakeAnswer",
    "close_socket",
    "format_address",
    "raw_socket",
    "read_head",
    "recv_into_now",
    "recv_now",
    "refuse",
    "send_nowait",
    "start_tls",
]


def start_tls(
    sock: Any,
    context: _ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: Optional[str] = None,
) -> Any:
    """Wrap ``sock`` in TLS and complete the TLS handshake in the calling greenlet, under
    the caller's deadline (a :class:`gevent.Timeout` around the call).

    The TLS socket takes ``sock``'s descriptor over, so closing ``sock`` afterwards would
    close nothing: if the handshake fails or is interrupted in any way, the TLS socket
    is closed here before the exception propagates (no descriptor is left to the
    garbage collector). Raises :class:`OSError` (including :class:`ssl.SSLError`).
    """
    tls = gevent.ssl.SSLSocket(
        sock=sock,
        server_side=server_side,
        server_hostname=server_hostname,
        do_handshake_on_connect=False,
        _context=context,
    )
    done = False
    try:
        tls.do_handshake()
        done = True
    finally:
        if not done:
            tls.close()
    return tls


def recv_now(raw: Any, size: int, flags: int = 0) -> Optional[bytes]:
    """What the non-blocking OS socket ``raw`` has now (``b""`` at its end), ``None``
    when nothing yet; raises :class:`OSError` for a lost connection. (A function of its
    own: the frame object the exception's traceback holds ends with it.)"""
    try:
        data: bytes = raw.recv(size, flags)
    except BlockingIOError:
        return None
    return data


def recv_into_now(raw: Any, into: memoryview) -> Optional[int]:
    """:func:`recv_now`, reading into ``into``: the count read (0 at its end)."""
    try:
        count: int = raw.recv_into(into)
    except BlockingIOError:
        return None
    return count


def read_head(
    sock: Any, chunk: int = 16384, deadline: Optional[Deadline] = None
) -> Optional[tuple[bytes, bytes]]:
    """Read an HTTP head from ``sock``: ``(head, bytes read past it)``, or ``None`` if
    the peer closed first. Raises :class:`~geventws.InvalidRequest` (414/431) as soon as
    the head proves too large.

    Without ``deadline``, the caller sets one. With it, the waits are bounded by it
    (:class:`TimeoutError`), and a plain socket is first read without waiting: a head
    already there (the usual case for a server, the client having sent its request at
    once) costs no timer."""
    if deadline is None:
        return _read_head(sock, chunk, None)
    raw = raw_socket(sock)
    first = None if raw is None else recv_now(raw, chunk)
    if first is not None and (not first or find_head_end(first) >= 0):
        return _read_head(sock, chunk, first)  # all there (or closed): nothing to wait for
    with deadline.timeout():
        return _read_head(sock, chunk, first)


def _read_head(sock: Any, chunk: int, first: Optional[bytes]) -> Optional[tuple[bytes, bytes]]:
    """:func:`read_head` from ``first``, the bytes already read, if any."""
    buffer = bytearray()
    while True:
        data = first if first is not None else sock.recv(chunk)
        first = None
        if not data:
            return None
        buffer += data
        end = find_head_end(buffer)
        if end >= 0:
            return bytes(buffer[:end]), bytes(buffer[end:])


def close_socket(sock: Any, timeout: float, shutdown_first: bool = True) -> None:
    """Close ``sock`` without losing what was written to it; the caller must be the only
    greenlet using it. Never raises.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    an HTTP error still in flight. So: shut the sending side down, read until the peer
    closes its side or ``timeout`` passes, then close.
    """
    try:
        if shutdown_first:
            sock.shutdown(_socket.SHUT_WR)
        with Deadline(timeout).timeout():
            while sock.recv(65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


def refuse(sock: Any, answer: Rejected, timeout: float) -> None:
    """Write an HTTP error ``answer`` and close ``sock`` gracefully, each step within
    ``timeout`` seconds. Never raises; ``sock`` is closed."""
    try:
        with Deadline(timeout).timeout():
            sock.sendall(answer.data)
    except (OSError, TimeoutError):
        pass
    finally:
        close_socket(sock, timeout)


class HandshakeAnswer:
    """How a server connection answers its opening handshake: by writing to its socket
    (this class), or through a WSGI server (see :mod:`geventws.wsgi`)."""

    def accept(self, sock: Any, accepted: Accepted, leftover: bytes, deadline: Deadline) -> bytes:
        """Send the 101 answer within ``deadline``; return the bytes already read past
        the request. Raises :class:`OSError` or :class:`TimeoutError`."""
        data = accepted.data
        raw = raw_socket(sock)
        if raw is not None:  # usually it all fits at once: no timer needed
            try:
                sent = raw.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return leftover
            data = data[sent:]
        with deadline.timeout():
            sock.sendall(data)
        return leftover

    def reject(self, sock: Any, rejected: Rejected, timeout: float) -> None:
        """Answer the HTTP error and close the socket gracefully. Never raises."""
        refuse(sock, rejected, timeout)


#: The answer of connections that write their handshake's answer themselves.
SOCKET_ANSWER = HandshakeAnswer()


def raw_socket(sock: Any) -> Any:
    """The non-blocking OS socket under a plain gevent socket, which may be written
    directly when it can take the bytes right away (skipping gevent's per-call work), or
    ``None`` for a TLS socket (its bytes must go through the TLS layer)."""
    if isinstance(sock, gevent.ssl.SSLSocket):
        return None
    raw = getattr(sock, "_sock", None)
    if raw is None or raw.gettimeout() != 0.0:
        return None
    return raw


def format_address(address: Optional[tuple[Any, ...]]) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for logs; ``-`` when unknown."""
    if not address:
        return "-"
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address)


_INT_MAX = 2**31 - 1


def _send_nowait_python(fds: Sequence[int], data: bytes) -> list[tuple[int, int]]:
    """:func:`send_nowait` without the compiled module: ``os.write`` on each
    non-blocking socket (Python ignores SIGPIPE, so a closed peer is EPIPE). Returns
    ``(index, sent)`` for the writes that did not take all of ``data``: ``sent`` is 0
    when the socket would block, ``-errno`` on errors."""
    incomplete = []
    for fd in fds:
        if not 0 <= fd <= _INT_MAX:
            raise ValueError(f"descriptor out of range: {fd}")
    for index, fd in enumerate(fds):
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            sent = -(exc.errno or 1)
        if sent != len(data):
            incomplete.append((index, sent))
    return incomplete


#: ``send_nowait(fds, data)``: one non-blocking ``send`` of ``data`` on each descriptor;
#: the ``(index, sent)`` of those that did not take it all (0: would block, <0: -errno).
send_nowait: Callable[[Sequence[int], bytes], list[tuple[int, int]]]
try:
    from ._speedups import send_nowait
except ImportError:  # pragma: no cover - built without a compiler, or on Windows
    send_nowait = _send_nowait_python
