"""Running ``python -m geventws`` in a subprocess for the CLI tests: the ``cli``
fixture (in conftest.py) and what the tests share."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from .utils import LISTENING, wait_for

STARTUP = re.compile(
    r"INFO geventws\.cli: listening on (wss?)://(\S+):(\d+) \(Press CTRL\+C to quit\)"
)


class Served:
    """The command in a subprocess, its log (stdout and stderr) and its port."""

    #: How long :meth:`wait` waits for the process to end by default.
    wait_timeout = 30.0

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.port = 0

    def output(self) -> str:
        return self.log.read_text()

    def wait_listening(self) -> None:
        """Wait for the startup line (its port goes to ``port``); fail if the process
        ends, or 30 s pass, without it."""

        def listening() -> bool:
            match = LISTENING.search(self.output())
            self.port = int(match.group(1)) if match else 0
            return bool(self.port) or self.process.poll() is not None

        assert wait_for(listening, 30) and self.port, self.output()

    def wait(self, timeout: Optional[float] = None) -> int:
        timeout = self.wait_timeout if timeout is None else timeout
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.output()}") from None


def run_cli(tmp_path: Path) -> Iterator[Any]:
    """Start ``python -m geventws ARGS`` in ``tmp_path``, its output (stdout and stderr)
    in a file; wait for the startup line unless ``wait=False``."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str,
        wait: bool = True,
        env: Optional[dict[str, str]] = None,
        pass_fds: tuple[int, ...] = (),
    ) -> Served:
        log = tmp_path / f"server{len(processes)}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "geventws", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                pass_fds=pass_fds,
            )
        processes.append(process)
        served = Served(process, log)
        if wait:
            served.wait_listening()
        return served

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


ECHO = "geventws.examples.echo:handle"


#: A WSGI application for ``--wsgi page:app``: ``page`` for any request.
WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"page"]
"""
