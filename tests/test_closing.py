"""How a connection ends on the wire: the close frame echoed, and when the server closes
TCP (at once after a completed closing handshake, or after reading until the peer's
FIN), against an independent raw-socket peer (tests/tcp_peers.py)."""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Any, Iterator

import gevent
import pytest

from geventws import ConnectionClosed

from .tcp_peers import Peer, no_descriptor_leaks, server_connection, tcp_pair
from .utils import client_frame


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    yield from no_descriptor_leaks()


def test_close_code_and_reason_of_a_peer_close_are_echoed() -> None:
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        raw.send(client_frame(8, struct.pack("!H", 4001) + b"see you"))
        _, opcode, payload = raw.read_frame()
        return opcode, payload

    peer = Peer(theirs, script)
    connection = server_connection(ours)
    with pytest.raises(ConnectionClosed) as info:
        connection.receive(timeout=10)
    assert (info.value.code, info.value.reason) == (4001, "see you")
    assert peer.finish() == (8, struct.pack("!H", 4001) + b"see you")
    connection.abort()


@pytest.mark.parametrize("fin", [False, True], ids=["peer-open", "peer-fin-in"])
def test_after_the_closing_handshake_the_server_closes_tcp_without_waiting_for_the_peer(
    fin: bool,
) -> None:
    """RFC 6455 §7.1.1: once both close frames are through, the server closes TCP first.
    With nothing left unread (or only the peer's FIN) it closes at once: no half-close,
    no wait for the peer's FIN; the peer still gets the whole close frame, then the end
    of the stream."""
    ours, theirs = tcp_pair()
    go = threading.Event()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        raw.send(client_frame(8, struct.pack("!H", 1000)))
        if fin:
            raw.sock.shutdown(socket.SHUT_WR)
        _, opcode, payload = raw.read_frame()
        go.wait(30)  # the server is done with the socket; ours stays open until now
        return opcode, payload, raw.sock.recv(1)

    peer = Peer(theirs, script)
    connection = server_connection(ours, close_timeout=60)
    with pytest.raises(ConnectionClosed):
        connection.receive(timeout=10)
    with gevent.Timeout(20):  # a wait for the peer's FIN would last close_timeout (60 s)
        connection.abort()
    assert ours.fileno() == -1
    go.set()
    assert peer.finish() == (8, struct.pack("!H", 1000), b"")


def test_input_still_unread_after_the_closing_handshake_is_drained_before_the_close() -> None:
    """A peer that sends more after its close frame (it must not) still gets the close
    frame: what is unread is read and discarded until its FIN, so no reset destroys it."""
    ours, theirs = tcp_pair()
    go, sent = threading.Event(), threading.Event()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        raw.send(client_frame(8, struct.pack("!H", 1000)))
        go.wait(30)  # the server has read the close frame and nothing more
        raw.send(b"stray bytes after the close frame")  # in our socket's buffer on return
        raw.sock.shutdown(socket.SHUT_WR)
        sent.set()
        _, opcode, payload = raw.read_frame()  # a reset would raise here
        return opcode, payload, raw.sock.recv(1)

    peer = Peer(theirs, script)
    connection = server_connection(ours, close_timeout=60)
    with pytest.raises(ConnectionClosed):
        connection.receive(timeout=10)
    go.set()
    assert sent.wait(10)  # blocking the hub: the closing can't start before the bytes came
    connection.abort()  # writes the close frame, then finds the stray bytes unread
    assert ours.fileno() == -1
    assert peer.finish() == (8, struct.pack("!H", 1000), b"")


def test_a_pong_owed_after_the_peer_s_close_keeps_the_lingering_close() -> None:
    """A ping of ours that crossed the peer's close frame may still be answered (RFC 6455
    §5.5.2: the peer had not received our close yet): that pong can arrive after our
    close frame went out, so the server half-closes and reads until the peer's FIN
    rather than closing at once, which would answer the pong with a reset."""
    ours, theirs = tcp_pair()

    def script(peer: Peer) -> Any:
        raw = peer.raw
        _, opcode, ping = raw.read_frame()
        assert opcode == 9
        raw.send(client_frame(8, struct.pack("!H", 1000)))
        select.select([raw.sock], [], [], 30)  # our close frame is coming in
        raw.send(client_frame(10, ping))  # the pong, sent before reading that close
        raw.sock.shutdown(socket.SHUT_WR)
        _, opcode, payload = raw.read_frame()
        end = raw.sock.recv(1)
        # Linux reports a reset that came after the FIN only here (other systems may
        # drop unread data on a reset: the close frame itself).
        return opcode, payload, end, raw.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    peer = Peer(theirs, script)
    connection = server_connection(ours, close_timeout=60)
    pong = connection.ping(b"crossing")
    with pytest.raises(ConnectionClosed):
        connection.receive(timeout=10)
    connection.abort()
    assert peer.finish() == (8, struct.pack("!H", 1000), b"", 0)
    with pytest.raises(ConnectionClosed):
        pong.get(timeout=0)
