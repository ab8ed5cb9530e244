"""``geventws serve --reload``: restart the server when Python files change (development).

The reloader is a plain process (no gevent loop, no monkey-patching, no application
code), like the workers' supervisor:

* It binds the port itself, once, and logs the startup line. Each server it starts is
  ``geventws serve`` with the same arguments but ``--reload``, serving that socket
  (``--fd``): the port stays the same across restarts (``--port 0`` too), and clients
  that connect while a server restarts wait in the listen backlog instead of being
  refused.
* It watches the ``--reload-dir`` directories (default: the current one), recursively,
  for changes to ``*.py`` files, with ``watchfiles`` (``pip install
  'geventws[reload]'``). On a change it stops the server gracefully (SIGTERM: every
  connection closed with 1001, ``--close-timeout`` seconds for the handlers, SIGKILL
  5 seconds after that) and starts a new one. A server that exits by itself (say, the
  module being edited doesn't import) is restarted at the next change.
* SIGINT (Ctrl-C) or SIGTERM stops the server gracefully and exits 0; a second one
  kills the server at once and exits 1. The servers ignore SIGINT (Ctrl-C in a
  terminal reaches the whole process group: the reloader stops them) and stop
  gracefully when the reloader is gone, however it died (they watch a pipe whose
  other end only the reloader holds).

Logs on ``geventws.reload``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from . import logs
from .errors import CommandError
from .serve import QUIT, RELOADER_FD, _cannot_listen, startup_line

__all__ = ["Reloader", "run_reloader", "server_arguments"]

logger = logging.getLogger("geventws.reload")

#: Seconds, beyond ``close_timeout``, that a stopping server has before SIGKILL.
STOP_GRACE = 5.0
#: How often (milliseconds) the watch loop looks at the server and at signals.
TICK_MS = 500


def server_arguments(given: list[str]) -> list[str]:
    """``given`` without ``--reload`` and ``--reload-dir``: the arguments of the servers
    the reloader starts. (Abbreviated flags are refused by the parser, so these are the
    only spellings.)"""
    kept: list[str] = []
    skip = False
    for argument in given:
        if skip:
            skip = False
        elif argument == "--reload" or argument.startswith("--reload-dir="):
            pass
        elif argument == "--reload-dir":
            skip = True
        else:
            kept.append(argument)
    return kept


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on ``host``:``port``, as gevent's servers make it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    bound = False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        bound = True
        return sock
    finally:
        if not bound:
            sock.close()


def run_reloader(args: argparse.Namespace, given: list[str]) -> int:
    """``geventws serve ... --reload``: the exit status. Raises :class:`CommandError`
    when watchfiles is missing, a directory doesn't exist or the port can't be bound."""
    try:
        watchfiles = importlib.import_module("watchfiles")
    except ImportError:
        raise CommandError("--reload needs watchfiles: pip install 'geventws[reload]'") from None
    logs.configure(args.log_level, args.log_config, args.access_log, with_pid=True)
    # Its "N changes detected" would repeat ours ("changes in PATH: restarting").
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    directories = [Path(d).resolve() for d in (args.reload_dir or [os.getcwd()])]
    for directory in directories:
        if not directory.is_dir():
            raise CommandError(f"--reload-dir {directory}: not a directory")
    values = dict(args.values)
    try:
        sock = _bind(args.host, args.port, values.get("backlog") or 128)
    except OSError as exc:
        raise _cannot_listen(args, exc) from None
    try:
        command = [sys.executable, "-m", "geventws", *server_arguments(given)]
        command += ["--fd", str(sock.fileno())]
        reloader = Reloader(
            watchfiles, command, directories, sock.fileno(), values["close_timeout"]
        )
        logger.info("watching %s for changes to *.py files", ", ".join(str(d) for d in directories))
        logger.info("%s %s", startup_line(sock.getsockname(), bool(args.certfile)), QUIT)
        return reloader.run()
    finally:
        sock.close()


class _Flag:
    """Set from signal handlers, read by watchfiles (``is_set``) without a lock."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True

    def is_set(self) -> bool:
        return self.value


class Reloader:
    """Start ``command`` (a server inheriting descriptor ``listen_fd``) and restart it
    when ``*.py`` files change in ``directories``; see the module."""

    def __init__(
        self,
        watchfiles: Any,
        command: list[str],
        directories: list[Path],
        listen_fd: int,
        close_timeout: float,
    ) -> None:
        self.watchfiles = watchfiles
        self.command = command
        self.directories = directories
        self.listen_fd = listen_fd
        self.close_timeout = close_timeout
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.reported = False  # the server's own exit was logged
        self.stopping = _Flag()
        self.signals = 0
        self.status = 0

    def run(self) -> int:
        """Serve, restart on changes, until SIGINT or SIGTERM; return the exit status."""
        alive_r, alive_w = os.pipe()  # the servers watch alive_r; only we hold alive_w
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._start(alive_r)
            watch = self.watchfiles.watch(
                *self.directories,
                watch_filter=self.watchfiles.PythonFilter(),
                stop_event=self.stopping,
                rust_timeout=TICK_MS,
                yield_on_timeout=True,
                raise_interrupt=False,
            )
            for changes in watch:
                self._check_server()
                if changes and not self.stopping.is_set():
                    self._restart(changes, alive_r)
            self._stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(alive_r)
            os.close(alive_w)
            if self.process is not None and self.process.poll() is None:
                self.process.kill()  # only after an unexpected error here
                self.process.wait()
        logger.info("stopped")
        return self.status

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            logger.info("%s received: stopping the server", name)
            self.stopping.set()
        else:
            logger.warning("%s again: exiting now", name)
            self.status = 1
            if self.process is not None and self.process.poll() is None:
                self.process.kill()

    def _start(self, alive_r: int) -> None:
        env = {**os.environ, RELOADER_FD: str(alive_r)}
        self.process = subprocess.Popen(self.command, pass_fds=(self.listen_fd, alive_r), env=env)
        self.reported = False
        logger.info("started server process %d", self.process.pid)

    def _check_server(self) -> None:
        process = self.process
        if process is None or self.reported or self.stopping.is_set():
            return
        code = process.poll()
        if code is not None:
            self.reported = True
            logger.warning(
                "server process %d exited with status %d: restarting at the next change",
                process.pid,
                code,
            )

    def _restart(self, changes: set[tuple[Any, str]], alive_r: int) -> None:
        paths = sorted({self._relative(path) for _, path in changes})
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        logger.info("changes in %s: restarting", shown)
        self._stop()
        if not self.stopping.is_set():
            self._start(alive_r)

    def _relative(self, path: str) -> str:
        for directory in self.directories:
            try:
                return str(Path(path).relative_to(directory))
            except ValueError:
                continue
        return path

    def _stop(self) -> None:
        """Stop the server gracefully (SIGTERM), then SIGKILL after ``close_timeout``
        plus :data:`STOP_GRACE` seconds, or at once after a second signal."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.close_timeout + STOP_GRACE
        while True:
            try:
                process.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    logger.warning("server process %d still running: killing it", process.pid)
                    process.kill()
                    process.wait()
                    break
        logger.info("server process %d exited with status %d", process.pid, process.returncode)
