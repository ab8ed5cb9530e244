"""The conformance suite: a raw-socket client of our own against a real
``geventws serve`` echo server in a subprocess (see cases.py, utf8_cases.py and
deflate_cases.py for the categories)."""

from __future__ import annotations

import re
import socket
import zlib
from collections.abc import Iterator
from typing import Optional

import pytest

from ..utils import RawClient, client_frame, start_serve_command
from .cases import Case, all_cases
from .deflate_cases import DeflateCase, all_deflate_cases

CASES = all_cases()
DEFLATE_CASES = all_deflate_cases()


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log_path = tmp_path_factory.mktemp("conformance") / "server.log"
    process, port = start_serve_command(
        ["geventws.examples.echo:handle", "--max-size", "16MiB", "--close-timeout", "5"],
        log_path,
    )
    try:
        yield port
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    errors = [line for line in log_path.read_text().splitlines() if " ERROR " in line]
    assert not errors, errors


CLOSE_1000 = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


def run(port: int, case: Case) -> tuple[list[tuple[int, bytes]], int | None, bool]:
    """Play ``case``; return the frames received, the server's close code and whether
    the server closed the TCP connection afterwards."""
    client = RawClient(port, timeout=30)
    assert client.status == 101, client.head
    frames: list[tuple[int, bytes]] = []
    sent = 0  # pieces of case.send
    try:
        for piece in case.send:
            try:
                client.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server failed the connection early: read what it said
            sent += 1
        code = None
        if case.clean_close:
            while len(frames) < len(case.expect):
                _, opcode, payload = client.read_frame()
                if opcode == 8:
                    code = int.from_bytes(payload[:2], "big") if payload else 1005
                    break
                frames.append((opcode, payload))
            if code is None:
                client.send(CLOSE_1000)
        if code is None:
            more, code = client.read_until_close()
            frames += more
            if (
                code is not None
                and not case.clean_close
                and not sends_close(b"".join(case.send[:sent]))
            ):
                # Complete the closing handshake from our side, as a client should. A
                # client that sent a close frame, valid or not, must send no other
                # (RFC 6455 §5.5.1): one could reach the server as it closes the TCP
                # connection after the closing handshake, and the kernel would reset it.
                reply = b"\x88\x80\x00\x00\x00\x00"
                if code != 1005:
                    reply = b"\x88\x82\x00\x00\x00\x00" + code.to_bytes(2, "big")
                try:
                    client.send(reply)
                except OSError:
                    pass
        closed = client.wait_eof()
    finally:
        client.close()
    return frames, code, closed


def sends_close(data: bytes) -> bool:
    """Whether the frames in ``data`` include a close frame (read until the data ends or
    a frame's length runs past it)."""
    at = 0
    while at + 2 <= len(data):
        opcode, masked, length = data[at] & 0x0F, data[at + 1] & 0x80, data[at + 1] & 0x7F
        if opcode == 8:
            return True
        at += 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length = int.from_bytes(data[at : at + size], "big")
            at += size
        at += (4 if masked else 0) + length
    return False


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(echo_port: int, case: Case) -> None:
    frames, code, closed = run(echo_port, case)
    got = [(opcode, payload) for opcode, payload in frames]
    assert [(o, len(p)) for o, p in got] == [(o, len(p)) for o, p in case.expect]
    assert got == case.expect
    assert code == case.close
    assert closed, "the server did not close the TCP connection"


def test_suite_size() -> None:
    # Several hundred cases, every category represented.
    assert len(CASES) >= 400
    categories = {case.id.split(".")[0] for case in CASES + DEFLATE_CASES}  # type: ignore[operator]
    assert categories == {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"}


def _params(agreed: Optional[str]) -> dict[str, Optional[str]]:
    """The parameters of a negotiated permessage-deflate, parsed by hand here."""
    if agreed is None:
        return {}
    params: dict[str, Optional[str]] = {}
    for item in agreed.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        params[name] = value or None
    return params


@pytest.mark.parametrize("case", DEFLATE_CASES, ids=[case.id for case in DEFLATE_CASES])
def test_deflate_case(echo_port: int, case: DeflateCase) -> None:
    client = RawClient(echo_port, headers=f"Sec-WebSocket-Extensions: {case.offer}\r\n", timeout=30)
    try:
        assert client.status == 101, client.head
        answered = re.findall(rb"(?im)^Sec-WebSocket-Extensions: *(.*?) *$", client.head)
        assert [value.decode() for value in answered] == (
            [case.agreed] if case.agreed is not None else []
        )
        params = _params(case.agreed)
        client_bits = int(params.get("client_max_window_bits") or 15)
        server_bits = int(params.get("server_max_window_bits") or 15)
        compress = case.agreed is not None and client_bits >= 9
        compressor = zlib.compressobj(6, zlib.DEFLATED, -max(9, client_bits))
        decompressor = zlib.decompressobj(-server_bits)
        for opcode, data in case.messages():
            # Send one message, compressed (RSV1) if agreed, whole or fragmented.
            if compress:
                if "client_no_context_takeover" in params:
                    compressor = zlib.compressobj(6, zlib.DEFLATED, -client_bits)
                body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
                body = body[:-4]
            else:
                body = data
            size = case.fragment or max(1, len(body))
            pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
            client.send(
                b"".join(
                    client_frame(
                        opcode if i == 0 else 0,
                        piece,
                        fin=i == len(pieces) - 1,
                        rsv=4 if compress and i == 0 else 0,
                    )
                    for i, piece in enumerate(pieces)
                )
            )
            # Read the echo (possibly several frames) and inflate it.
            b0, echo_opcode, echoed = client.read_frame()
            while not b0 & 0x80:
                more_b0, more_opcode, more = client.read_frame()
                assert more_opcode == 0 and not more_b0 & 0x70
                b0, echoed = b0 | (more_b0 & 0x80), echoed + more
            assert echo_opcode == opcode
            if case.agreed is not None and len(data) >= 128:
                assert b0 & 0x40, "the server should compress messages of 128 bytes or more"
            if b0 & 0x40:
                if "server_no_context_takeover" in params:
                    decompressor = zlib.decompressobj(-server_bits)
                echoed = decompressor.decompress(echoed + b"\x00\x00\xff\xff")
            assert echoed == data
        client.send(CLOSE_1000)
        assert client.read_until_close() == ([], 1000)
        assert client.wait_eof()
    finally:
        client.close()


def test_server_still_serves_after_all_cases(echo_port: int) -> None:
    client = RawClient(echo_port)
    assert client.status == 101
    client.close()
    with socket.create_connection(("127.0.0.1", echo_port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 426")
