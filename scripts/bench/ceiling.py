"""The raw gevent ceiling: the least a gevent WebSocket server can do per message.

    python ceiling.py PORT            echo server
    python ceiling.py PORT broadcast  relays every message to every client
    python ceiling.py PORT log        echo server with ``geventws serve``'s default
                                      logging and its access line per connection

Not a WebSocket implementation: a yardstick for scripts/bench_echo.py and
scripts/bench_broadcast.py, showing what gevent itself costs. A greenlet per connection
(gevent's StreamServer, no monkey-patching), a minimal upgrade (read the request head,
answer 101 with the accept key, nothing validated but the key's presence), then a loop:
one ``recv_into``, parse every complete frame it brought, unmask in C
(``geventws._speedups.apply_mask``), and answer all of them with ONE ``sendall``.

What it does handle: text, binary and continuation frames (echoed frame for frame, so
fragmentation is kept), 7-, 16- and 64-bit lengths, ping (answered with a pong), pong
(ignored), close (answered with the same code, then the TCP connection is closed by
the server, as RFC 6455 7.1.1 asks). An unmasked client frame or a request head over
8 KiB closes the connection. What it skips: UTF-8 validation, size limits, reserved
bits and opcodes, extensions, subprotocols, timeouts, keepalive, and logging but in
log mode. Log mode adds one INFO line per connection, geventws' access line, logged as
``geventws serve`` logs it by default: the bound for handshakes with INFO logging on
(see docs/topics/performance.rst).

In broadcast mode, every text or binary frame a client sends goes to every connected
client (itself included): the frames one ``recv`` brought are joined and written with
one blocking ``sendall`` per client, in a loop. A client whose socket is full stalls the
loop (there is no queue and no slow-consumer policy): fine on loopback with clients
that keep reading, which is what it measures.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import sys
import time
from typing import Any, Callable

from gevent.server import StreamServer

from geventws._speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 8192
#: One read buffer for the whole process: a greenlet never switches between the return
#: of its ``recv_into`` and the moment it has parsed the data and copied what's left
#: (parsing and unmasking don't yield; only ``sendall`` and ``recv_into`` do), so the
#: connections can share it, and an idle connection costs no buffer.
READ_BUFFER = memoryview(bytearray(256 * 1024))


def frame_header(first: int, length: int) -> bytes:
    """The header of an unmasked server frame: ``first`` byte (FIN, opcode), length."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def upgrade(sock: Any) -> bytes | None:
    """Read the request head and answer 101; return the bytes read past the head, or
    None when the connection should be dropped."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data or len(head) > MAX_HEAD:
            return None
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            accept = base64.b64encode(hashlib.sha1(value.strip() + GUID).digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            return rest
    return None


def parse(view: memoryview, replies: list[bytes], relayed: list[bytes]) -> tuple[int, bool]:
    """Handle every complete frame at the start of ``view``: answers for the sender go to
    ``replies``, data frames (as server frames) to ``relayed``. Returns the bytes
    consumed and whether the connection is over (close received, or a protocol error)."""
    pos, end = 0, len(view)
    while end - pos >= 2:
        first, second = view[pos], view[pos + 1]
        length, start = second & 0x7F, pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length, start = int.from_bytes(view[pos + 2 : pos + 4], "big"), pos + 4
        elif length == 127:
            if end - pos < 10:
                break
            length, start = int.from_bytes(view[pos + 2 : pos + 10], "big"), pos + 10
        if not second & 0x80:
            return pos, True  # unmasked client frame: protocol error
        stop = start + 4 + length
        if stop > end:
            break
        payload = apply_mask(view[start + 4 : stop], view[start : start + 4])
        pos = stop
        opcode = first & 0x0F
        if opcode <= 2:  # continuation, text, binary
            relayed.append(frame_header(first & 0x8F, length))
            relayed.append(payload)
        elif opcode == 9:  # ping
            replies.append(frame_header(0x8A, length))
            replies.append(payload)
        elif opcode == 8:  # close: answer with the same code
            replies.append(frame_header(0x88, min(length, 2)))
            replies.append(payload[:2])
            return pos, True
    return pos, False


class Ceiling:
    """The server's state: the connected sockets (broadcast mode only)."""

    def __init__(self, broadcast: bool) -> None:
        self.broadcast = broadcast
        self.clients: set[Any] = set()

    def handle(self, sock: Any, address: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rest = upgrade(sock)
            if rest is None:
                return
            if self.broadcast:
                self.clients.add(sock)
            self.serve(sock, bytearray(rest))
        except OSError:
            pass
        finally:
            self.clients.discard(sock)
            sock.close()

    def serve(self, sock: Any, pending: bytearray) -> None:
        """The frame loop; ``pending`` holds bytes received and not parsed yet (the
        start of a frame): new data is parsed straight from the read buffer when there
        are none."""
        incoming = READ_BUFFER
        while True:
            replies: list[bytes] = []
            relayed: list[bytes] = []
            if pending:
                with memoryview(pending) as view:
                    consumed, over = parse(view, replies, relayed)
                del pending[:consumed]
            else:
                count = sock.recv_into(incoming)
                if not count:
                    return
                with incoming[:count] as view:
                    consumed, over = parse(view, replies, relayed)
                pending += incoming[consumed:count]
            if relayed and self.broadcast:
                data = b"".join(relayed)
                for client in list(self.clients):
                    try:
                        client.sendall(data)
                    except OSError:
                        self.clients.discard(client)
            elif relayed:
                replies[:0] = relayed
            if replies:
                sock.sendall(b"".join(replies))
            if over:
                return
            if pending:  # part of a frame: wait for more
                count = sock.recv_into(incoming)
                if not count:
                    return
                pending += incoming[:count]


def logged(handle: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``handle`` followed by geventws' access line, logging configured as ``geventws
    serve`` does by default (INFO to stderr)."""
    from geventws.cli.logs import configure
    from geventws.upgrade import log_access

    configure(None, None, access_log=True)

    def handle_and_log(sock: Any, address: Any) -> None:
        started = time.monotonic()
        try:
            handle(sock, address)
        finally:
            log_access(address, "GET", "/", 101, started=started, code=1000)

    return handle_and_log


def main() -> None:
    port = int(sys.argv[1])
    mode = sys.argv[2:3]
    ceiling = Ceiling(broadcast=mode == ["broadcast"])
    handle = logged(ceiling.handle) if mode == ["log"] else ceiling.handle
    server = StreamServer(("127.0.0.1", port), handle, backlog=2048)
    server.serve_forever()


if __name__ == "__main__":
    main()
