"""The conformance suite: a raw-socket client of our own against a real
``geventws serve`` echo server in a subprocess (see cases.py for the categories)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ..utils import RawClient, wait_for
from .cases import Case, all_cases

CASES = all_cases()


@pytest.fixture(scope="module")
def echo_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log_path = tmp_path_factory.mktemp("conformance") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geventws",
                "serve",
                "geventws.examples.echo:handle",
                "--port",
                "0",
                "--max-size",
                "16MiB",
                "--close-timeout",
                "5",
            ],
            stderr=log,  # a file, not a pipe: nobody has to drain it
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = 0

        def listening() -> bool:
            nonlocal port
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
            port = int(match.group(1)) if match else 0
            return bool(port) or process.poll() is not None

        assert wait_for(listening, timeout=30) and port, log_path.read_text()
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
    try:
        for piece in case.send:
            try:
                client.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server failed the connection early: read what it said
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
            if code is not None and not case.clean_close:
                # Complete the closing handshake from our side, as a client should.
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
    categories = {case.id.split(".")[0] for case in CASES}
    assert categories == {"1", "2", "3", "4", "5", "6", "7", "9", "10"}


def test_server_still_serves_after_all_cases(echo_port: int) -> None:
    client = RawClient(echo_port)
    assert client.status == 101
    client.close()
    with socket.create_connection(("127.0.0.1", echo_port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 426")
