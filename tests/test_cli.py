"""``geventws serve`` end to end, in subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect

from geventws.cli import ImportFromStringError, load_handler

from .utils import wait_for


class Served:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.port = 0

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, wait: bool = True, module: str = "geventws") -> Served:
        log = tmp_path / f"server{len(processes)}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        processes.append(process)
        served = Served(process, log)
        if wait:

            def ready() -> bool:
                match = re.search(r"listening on 127\.0\.0\.1:(\d+)", served.output())
                served.port = int(match.group(1)) if match else 0
                return bool(served.port) or process.poll() is not None

            assert wait_for(ready, 30) and served.port, served.output()
        return served

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_echo_and_sigterm_sends_1001(cli: Any) -> None:
    served = cli("serve", "geventws.examples.echo:handle", "--port", "0")
    with connect(f"ws://127.0.0.1:{served.port}") as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        served.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=10)
        assert ws.protocol.close_code == 1001
    assert served.process.wait(timeout=30) == 0
    output = served.output()
    assert "geventws.access: 127.0.0.1:" in output and " GET / 101 close=1001 " in output
    assert "Traceback" not in output


def test_ctrl_c_stops_cleanly(cli: Any) -> None:
    served = cli("serve", "geventws.examples.echo:handle", "--port", "0")
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=30) == 0
    assert "Traceback" not in served.output()


def test_second_signal_exits_at_once(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "stubborn.py").write_text(
        textwrap.dedent(
            """
            import gevent

            def handle(connection, request):
                connection.accept()
                while True:  # ignores the close: only a kill ends it
                    try:
                        gevent.sleep(0.1)
                    except Exception:
                        pass
            """
        )
    )
    served = cli("serve", "stubborn:handle", "--port", "0", "--close-timeout", "60")
    with connect(f"ws://127.0.0.1:{served.port}"):
        served.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "SIGTERM received" in served.output(), 10)
        served.process.send_signal(signal.SIGTERM)
        # Far sooner than the 60 s a graceful stop would allow the handler.
        assert served.process.wait(timeout=20) == 1
    assert "exiting now" in served.output()


def test_monkey_patches_before_importing_the_application(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "patched.py").write_text(
        textwrap.dedent(
            """
            import gevent.monkey
            import socket
            import threading

            AT_IMPORT = gevent.monkey.is_module_patched("socket") and gevent.monkey.is_module_patched("threading")

            def handle(connection, request):
                connection.send(str(AT_IMPORT))
            """
        )
    )
    served = cli("serve", "patched:handle", "--port", "0")
    with connect(f"ws://127.0.0.1:{served.port}") as ws:
        assert ws.recv() == "True"


def test_options_origin_and_max_size(cli: Any) -> None:
    served = cli(
        "serve",
        "geventws.examples.echo:handle",
        "--port",
        "0",
        "--origin",
        "https://ok.example",
        "--max-size",
        "1KiB",
        "--log-level",
        "debug",
    )
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{served.port}", origin="https://bad.example")
    assert info.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{served.port}", origin="https://ok.example") as ws:
        ws.send("x" * 1024)
        assert ws.recv() == "x" * 1024
        ws.send("x" * 1025)
        with pytest.raises(Exception):  # noqa: B017 - the close code is what matters
            ws.recv(timeout=10)
        assert ws.protocol.close_code == 1009


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:handle", "cannot import module 'nosuchmodule': not found"),
        ("geventws.examples.echo:nope", "module 'geventws.examples.echo' has no attribute 'nope'"),
        ("geventws.examples.echo", "expected module:handler, got 'geventws.examples.echo'"),
        (
            "broken:handle",
            "module 'broken' failed to import: ModuleNotFoundError: No module named 'missing_dependency'",
        ),
    ],
)
def test_import_errors_are_one_line(cli: Any, tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "broken.py").write_text("import missing_dependency\n")
    served = cli("serve", spec, "--port", "0", wait=False)
    assert served.process.wait(timeout=30) == 2
    output = served.output().strip()
    assert output == f"geventws: error: {message}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("geventws")
    assert script.exists()
    out = subprocess.run(
        [str(script), "serve", "--help"], capture_output=True, text=True, check=True
    )
    assert "--max-size" in out.stdout and "--origin" in out.stdout


def test_load_handler_dotted_attribute() -> None:
    assert load_handler("geventws.examples.echo:handle").__name__ == "handle"
    with pytest.raises(ImportFromStringError):
        load_handler("geventws:__version__")  # not callable
