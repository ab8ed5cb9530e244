"""``geventws serve --workers N``: the supervisor and its workers, as real processes.

Each test starts the command in a subprocess, in a temporary directory holding the
application modules below, and talks to it with websockets' client. The handler sends
its worker's pid first, so a test knows which worker serves each connection.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from geventws.supervisor import Supervisor, reuse_port_balances

from . import cli_runner
from .utils import LISTENING, wait_for

MODULES = {
    # Sends the worker's pid, then echoes.
    "pids.py": """
        import os

        def handle(connection, request):
            connection.send(str(os.getpid()))
            for message in connection:
                connection.send(message)

        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", str(len(str(os.getpid()))))])
            return [str(os.getpid()).encode()]
    """,
    # Sends the pid, then keeps its handler running long after the connection closed.
    "stubborn.py": """
        import os
        import gevent
        from geventws import ConnectionClosed

        def handle(connection, request):
            connection.send(str(os.getpid()))
            try:
                for message in connection:
                    pass
            except ConnectionClosed:
                pass
            gevent.sleep(600)
    """,
    # Never finishes importing; says so with a file per worker.
    "slow.py": """
        import os
        import time

        open(f"importing-{os.getpid()}", "w").close()
        time.sleep(600)
    """,
    "broken.py": """
        raise ZeroDivisionError("broken at import")
    """,
    # Imports while the file "broken-now" doesn't exist in the working directory.
    "flaky.py": """
        import os

        if os.path.exists("broken-now"):
            raise RuntimeError("flaky module is broken now")

        def handle(connection, request):
            connection.send(str(os.getpid()))
            for message in connection:
                pass
    """,
    # The Python API, with the workers sharing one listening socket.
    "shared.py": """
        import logging
        import os
        import sys

        from geventws.supervisor import Supervisor


        def handle(connection, request):
            connection.send(str(os.getpid()))
            for message in connection:
                pass


        def serve(worker):
            from gevent import monkey

            monkey.patch_all()
            import gevent
            from geventws import WebSocketServer

            server = WebSocketServer(worker.listener(), handle)
            server.start()
            stopping = []
            worker.started(lambda: stopping.append(gevent.spawn(server.stop)))
            server.serve_forever()
            gevent.joinall(stopping)
            return 0


        if __name__ == "__main__":
            logging.basicConfig(level="INFO", format="%(process)d %(name)s: %(message)s")
            supervisor = Supervisor(serve, workers=2, port=0, reuse_port=False)
            supervisor.bind()
            sys.exit(supervisor.run())
    """,
}


class Served(cli_runner.Served):
    """:class:`tests.cli_runner.Served`, with the clients it opened and the workers it
    started."""

    wait_timeout = 60.0

    def __init__(
        self, process: subprocess.Popen[bytes], log: Path, directory: Path, clients: ExitStack
    ) -> None:
        super().__init__(process, log)
        self.clients = clients
        self.directory = directory

    def worker_pids(self) -> list[int]:
        """Every worker started so far, in order."""
        return [int(pid) for pid in re.findall(r"started worker (\d+)", self.output())]

    def connect(self) -> tuple[ClientConnection, int]:
        """A connection, and the pid of the worker that serves it."""
        ws = self.clients.enter_context(connect(f"ws://127.0.0.1:{self.port}", open_timeout=10))
        return ws, int(ws.recv(timeout=10))

    def pid_of_new_connection(self) -> int:
        ws, pid = self.connect()
        ws.close()
        return pid

    def connect_until(
        self, wanted: Callable[[int], bool], timeout: float = 30
    ) -> tuple[ClientConnection, int]:
        """Open connections (closing the others) until one is served by a worker that
        ``wanted``, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws, pid = self.connect()
            if wanted(pid):
                return ws, pid
            ws.close()
        raise AssertionError(f"no wanted worker within {timeout}s:\n{self.output()}")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``python -m geventws serve ARGS --port 0`` (or ``command``) in a directory
    with the test modules; wait for ``listening on`` unless ``wait=False``."""
    for name, source in MODULES.items():
        (tmp_path / name).write_text(textwrap.dedent(source))
    started: list[Served] = []
    clients = ExitStack()

    def start(
        *args: str,
        wait: bool = True,
        command: Optional[list[str]] = None,
        new_session: bool = False,
    ) -> Served:
        log = tmp_path / f"server{len(started)}.log"
        argv = command or [sys.executable, "-m", "geventws", "serve", *args, "--port", "0"]
        with open(log, "w") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=new_session,
            )
        served = Served(process, log, tmp_path, clients)
        started.append(served)
        if wait:
            served.wait_listening()
        return served

    yield start
    clients.close()
    for served in started:
        pids = served.worker_pids()
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()
        for pid in pids:  # workers stop when the supervisor is gone; make sure
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, waiting to be reaped, doesn't)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def assert_going_away(ws: ClientConnection) -> None:
    """The server closes ``ws`` with 1001."""
    with pytest.raises(ConnectionClosedOK):
        while True:
            ws.recv(timeout=30)
    assert ws.protocol.close_code == 1001


def test_workers_share_one_port_chosen_with_port_0(start: Any) -> None:
    served = start("pids:handle", "--workers", "2")
    workers = served.worker_pids()
    assert len(workers) == 2 and served.process.pid not in workers
    seen = {served.pid_of_new_connection()}
    ws, pid = served.connect_until(lambda pid: pid not in seen)
    seen.add(pid)
    ws.close()
    assert seen == set(workers)  # both workers serve the one port the log gave
    assert len(LISTENING.findall(served.output())) == 1
    assert "topics (publish/subscribe) stay per process" in served.output()
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0


def test_one_worker_is_todays_single_process(start: Any) -> None:
    served = start("pids:handle")
    assert served.pid_of_new_connection() == served.process.pid
    assert "worker" not in served.output()
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0


def test_workers_must_be_positive(start: Any) -> None:
    served = start("pids:handle", "--workers", "0", wait=False)
    assert served.wait() == 2
    assert served.output() == (
        "geventws serve: error: argument --workers: expected a whole number, 1 or more: '0'\n"
    )


def test_a_killed_worker_is_replaced(start: Any) -> None:
    served = start("pids:handle", "--workers", "2")
    first, second = served.worker_pids()
    ws, survivor = served.connect()
    victim = second if survivor == first else first
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(served.worker_pids()) == 3, 30), served.output()
    replacement = served.worker_pids()[2]
    assert f"worker {victim} killed by SIGKILL: replacing it" in served.output()
    other, _ = served.connect_until(lambda pid: pid == replacement)
    ws.send("still served")
    assert ws.recv(timeout=10) == "still served"
    assert not alive(victim)
    served.process.send_signal(signal.SIGTERM)
    assert_going_away(ws)
    assert_going_away(other)
    assert served.wait() == 0


def test_sigterm_closes_every_connection_with_1001_and_exits_0(start: Any) -> None:
    served = start("pids:handle", "--workers", "2")
    first, pid = served.connect()
    second, _ = served.connect_until(lambda other: other != pid)
    more = [served.connect()[0] for _ in range(4)]
    served.process.send_signal(signal.SIGTERM)
    for ws in [first, second, *more]:
        assert_going_away(ws)
    assert served.wait() == 0
    output = served.output()
    for worker in served.worker_pids():
        assert f"worker {worker} exited with status 0" in output
    assert "Traceback" not in output


def test_ctrl_c_reaches_the_process_group_and_stops_gracefully(start: Any) -> None:
    # A terminal sends SIGINT to every process of the foreground group: the workers
    # leave it to the supervisor, which stops them once.
    served = start("pids:handle", "--workers", "2", new_session=True)
    ws, _ = served.connect()
    os.killpg(served.process.pid, signal.SIGINT)
    assert_going_away(ws)
    assert served.wait() == 0
    assert served.output().count("SIGTERM received: closing connections") == 2


def test_second_sigint_exits_at_once(start: Any) -> None:
    served = start("stubborn:handle", "--workers", "2", "--close-timeout", "600")
    ws, _ = served.connect()
    served.process.send_signal(signal.SIGINT)
    assert_going_away(ws)  # the graceful stop began; the handler keeps running
    assert wait_for(lambda: "SIGINT received" in served.output(), 30)
    served.process.send_signal(signal.SIGINT)
    assert served.wait() == 1  # well before the 600 s the handlers were given
    assert "SIGINT again: exiting now" in served.output()
    assert not any(alive(pid) for pid in served.worker_pids())


def test_workers_stop_gracefully_when_the_supervisor_dies(start: Any) -> None:
    served = start("pids:handle", "--workers", "2")
    ws, _ = served.connect()
    served.process.kill()
    served.process.wait()
    assert_going_away(ws)
    assert wait_for(lambda: not any(alive(pid) for pid in served.worker_pids()), 30)
    assert "the supervisor is gone: closing connections" in served.output()


def test_sighup_restarts_the_workers_one_by_one(start: Any) -> None:
    served = start("pids:handle", "--workers", "2")
    old = set(served.worker_pids())
    first, pid = served.connect()
    second, _ = served.connect_until(lambda other: other != pid)
    served.process.send_signal(signal.SIGHUP)
    assert_going_away(first)
    assert_going_away(second)
    assert wait_for(lambda: served.output().count(" replaces worker ") == 2, 30)
    new = set(served.worker_pids()) - old
    assert len(new) == 2
    assert wait_for(lambda: not any(alive(pid) for pid in old), 30)
    for _ in range(10):
        assert served.pid_of_new_connection() in new
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0


def test_a_failed_restart_keeps_the_old_workers(start: Any) -> None:
    served = start("flaky:handle", "--workers", "2")
    old = set(served.worker_pids())
    (served.directory / "broken-now").write_text("")
    served.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "restart abandoned" in served.output(), 30), served.output()
    assert len(served.worker_pids()) == 3  # one replacement tried, no retry
    first, pid = served.connect()
    second, other = served.connect_until(lambda other: other != pid)
    assert {pid, other} == old
    served.process.send_signal(signal.SIGTERM)
    assert_going_away(first)
    assert_going_away(second)
    assert served.wait() == 0


def test_sigterm_while_workers_start(start: Any) -> None:
    served = start("slow:handle", "--workers", "2", wait=False)
    assert wait_for(lambda: len(list(served.directory.glob("importing-*"))) == 2, 30)
    served.process.send_signal(signal.SIGTERM)
    assert served.wait() == 0
    output = served.output()
    for pid in served.worker_pids():
        assert f"worker {pid} killed by SIGTERM" in output
    assert "listening on" not in output


def test_a_module_that_fails_to_import_exits_non_zero_without_respawning(start: Any) -> None:
    served = start("broken:handle", "--workers", "2", wait=False)
    assert served.wait() == 2  # the status of `geventws serve` without --workers
    output = served.output()
    assert "module 'broken' failed to import: ZeroDivisionError: broken at import" in output
    assert "a worker failed to start: stopping" in output
    assert len(served.worker_pids()) == 2
    assert "listening on" not in output


def test_workers_that_keep_failing_to_start_stop_the_supervisor(start: Any) -> None:
    served = start("flaky:handle", "--workers", "2")
    ws, pid = served.connect()
    (served.directory / "broken-now").write_text("")
    victim = next(worker for worker in served.worker_pids() if worker != pid)
    os.kill(victim, signal.SIGKILL)
    assert_going_away(ws)  # the healthy worker is stopped gracefully
    assert served.wait() == 2
    output = served.output()
    assert "5 workers in a row failed to start: stopping" in output
    assert output.count("RuntimeError: flaky module is broken now") == 5
    assert len(served.worker_pids()) == 2 + 5


def test_a_busy_port_is_an_error(start: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        argv = [sys.executable, "-m", "geventws", "serve", "pids:handle", "--workers", "2"]
        served = start(command=[*argv, "--port", port], wait=False)
        assert served.wait() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in served.output()


@pytest.mark.skipif(not reuse_port_balances(), reason="SO_REUSEPORT balances on Linux only")
def test_a_second_server_cannot_join_the_port(start: Any) -> None:
    first = start("pids:handle", "--workers", "2")
    argv = [sys.executable, "-m", "geventws", "serve", "pids:handle", "--workers", "2"]
    second = start(command=[*argv, "--port", str(first.port)], wait=False)
    assert second.wait() == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.output()
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 0


def test_wsgi_app_and_handler_in_every_worker(start: Any) -> None:
    served = start("pids:handle", "--wsgi", "pids:app", "--workers", "2")
    http_pids = set()
    for _ in range(200):
        response = requests.get(f"http://127.0.0.1:{served.port}/", timeout=10)
        http_pids.add(int(response.text))
        if len(http_pids) == 2:
            break
    assert http_pids == set(served.worker_pids())
    ws, pid = served.connect()
    assert pid in http_pids
    served.process.send_signal(signal.SIGTERM)
    assert_going_away(ws)
    assert served.wait() == 0


def test_shared_socket_when_so_reuseport_is_not_used(start: Any) -> None:
    served = start(command=[sys.executable, "shared.py"])
    assert "(2 workers, one shared socket; Press CTRL+C to quit)" in served.output()
    ws, pid = served.connect()
    # A stopped worker accepts nothing: the other one takes every connection from the
    # socket they share.
    os.kill(pid, signal.SIGSTOP)
    try:
        other, other_pid = served.connect()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert {pid, other_pid} == set(served.worker_pids())
    served.process.send_signal(signal.SIGTERM)
    assert_going_away(ws)
    assert_going_away(other)
    assert served.wait() == 0


def test_supervisor_refuses_zero_workers() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(lambda worker: 0, workers=0)
