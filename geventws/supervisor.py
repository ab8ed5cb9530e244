"""Several worker processes serving one port: ``geventws serve module:handler --workers N``.

The :class:`Supervisor` is a plain process: no gevent loop, no monkey-patching, no
application code. It binds the port, forks the workers and watches them:

* Listening: on Linux every worker binds a socket of its own with ``SO_REUSEPORT`` and
  the kernel balances new connections between them; the supervisor keeps a bound (not
  listening) socket on the port, so ``port=0`` gives every worker the same port and the
  port stays reserved while workers restart. Elsewhere the supervisor makes one
  listening socket that all workers accept on.
* Each worker is forked from the supervisor, so it starts from a process that never
  imported the application; the *target* it runs monkey-patches first, then imports
  the application, serves, calls :meth:`Worker.started` and returns an exit status.
* A worker that exits is replaced; replacements of workers that die young back off
  (0.1 s doubling to 10 s). A worker that fails before it is ready during the initial
  start, or five in a row later, stops everything: :meth:`Supervisor.run` returns the
  failed worker's exit status (the worker printed its error to the shared stderr).
* SIGTERM or SIGINT: every worker gets SIGTERM once and stops gracefully (its
  connections closed with 1001, ``close_timeout`` for the handlers); workers still
  running ``close_timeout + 5`` seconds later get SIGKILL; ``run()`` returns 0. A
  second SIGTERM or SIGINT kills the workers at once and ``run()`` returns 1.
* SIGHUP: a rolling restart. For each worker in turn a new one is started and, once it
  is ready, the old one stops gracefully. A new worker that fails to start ends the
  restart and the old workers keep serving.
* Workers ignore SIGINT and SIGHUP (a Ctrl-C in a terminal reaches the whole process
  group: the supervisor handles it for everyone), and stop gracefully when the
  supervisor dies (they watch a pipe whose other end only the supervisor holds).

Logs (logger ``geventws.supervisor``): one line per worker started and per worker
exited with its pid and exit status, and one ``listening on ws://HOST:PORT (N workers,
SO_REUSEPORT; Press CTRL+C to quit)`` line once all the workers are ready. Needs
``os.fork`` (POSIX).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gevent
from gevent.socket import wait_read

__all__ = ["Supervisor", "Worker", "reuse_port_balances"]

logger = logging.getLogger("geventws.supervisor")

#: Seconds, beyond ``close_timeout``, that a stopping worker has before SIGKILL.
STOP_GRACE = 5.0
#: Seconds to wait for killed workers to be reaped before giving up on them.
KILL_WAIT = 5.0
#: Consecutive workers failing before they are ready that stop the supervisor.
BOOT_FAILURE_LIMIT = 5
#: Backoff of replacements for workers that die young: BASE, doubling, at most MAX.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0
#: A worker that ran this many seconds was healthy: its replacement starts at once.
STABLE_AFTER = 5.0
#: The longest the supervisor sleeps between checks (signals wake it up sooner).
POLL_INTERVAL = 1.0


def reuse_port_balances() -> bool:
    """Whether workers get ``SO_REUSEPORT`` sockets of their own: on Linux, where the
    kernel balances connections between them. (BSD and macOS have the option but hand
    connections to one socket only, so there the workers share one socket.)"""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    """The address family gevent's servers pick for ``(host, port)``."""
    return socket.AF_INET6 if not host or ":" in host else socket.AF_INET


def _bind(
    family: socket.AddressFamily, address: Any, reuse_port: bool, backlog: Optional[int]
) -> socket.socket:
    """A TCP socket bound to ``address``, listening (non-blocking) unless ``backlog`` is
    ``None``. Raises :class:`OSError`; the socket is closed then."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    bound = False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if backlog is not None:
            sock.listen(backlog)
            sock.setblocking(False)
        bound = True
        return sock
    finally:
        if not bound:
            sock.close()


def _format_address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe(code: int) -> str:
    """``exited with status N`` or ``killed by SIGNAME`` for a ``waitstatus_to_exitcode``."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _ignore_signal(signum: int, frame: Any) -> None:
    """A no-op handler: unlike ``SIG_IGN``, it doesn't carry over to programs the
    worker executes."""


class _QuietListening(logging.Filter):
    """Drops a worker's own ``listening on`` line: the supervisor logs the one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("listening on")


_QUIET_LISTENING = _QuietListening()
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
_SERVER_LOGGER = "geventws.server"


class Worker:
    """A worker process's link to its supervisor, given to the target in the forked
    process. The target calls :meth:`listener` (after monkey-patching) to get the socket
    to serve, then :meth:`started` once it serves."""

    def __init__(
        self,
        shared: Optional[socket.socket],
        address: Any,
        backlog: int,
        notify_fd: int,
        alive_fd: int,
    ) -> None:
        self._shared = shared
        self._address = address
        self._backlog = backlog
        self._notify_fd = notify_fd
        self._alive_fd = alive_fd
        self._stopping = False
        self._sigterm: Any = None
        self._watcher: Any = None

    def listener(self) -> socket.socket:
        """The listening socket (non-blocking) to serve: a new ``SO_REUSEPORT`` socket
        bound to the supervisor's port, or the socket all workers share. Made with
        ``socket.socket`` when called, so after monkey-patching it is a gevent socket.
        Raises :class:`OSError` when it can't bind."""
        if self._shared is not None:
            return self._shared
        return _bind(_family(self._address[0]), self._address, True, self._backlog)

    def started(self, stop: Callable[[], object]) -> None:
        """Tell the supervisor this worker serves. From now on SIGTERM, or the
        supervisor's exit, calls ``stop()`` once, from gevent's hub: it must not block
        (spawn a greenlet that stops the server)."""
        logging.getLogger(_SERVER_LOGGER).removeFilter(_QUIET_LISTENING)
        # Kept: gevent stops watching for a signal whose handler object is collected.
        self._sigterm = gevent.signal_handler(signal.SIGTERM, self._stop, stop, "SIGTERM received")
        self._watcher = gevent.spawn(self._watch_supervisor, stop)
        try:
            os.write(self._notify_fd, b"%d\n" % os.getpid())
        finally:
            os.close(self._notify_fd)

    def _stop(self, stop: Callable[[], object], reason: str) -> None:
        if self._stopping:
            logger.debug("%s: already stopping", reason)
            return
        self._stopping = True
        logger.info("%s: closing connections", reason)
        stop()

    def _watch_supervisor(self, stop: Callable[[], object]) -> None:
        """Wait for the end of file on the pipe only the supervisor writes to: it comes
        when the supervisor exits, however it exits. (No deadline: the wait lasts as
        long as the supervisor does.)"""
        while True:
            wait_read(self._alive_fd)
            try:
                if not os.read(self._alive_fd, 64):
                    break
            except BlockingIOError:
                continue  # another worker's wake-up; the pipe is shared
        self._stop(stop, "the supervisor is gone")


class _Forked(Exception):
    """Raised in a newly forked worker to leave the supervisor's loop."""

    def __init__(self, worker: Worker) -> None:
        super().__init__("forked worker")
        self.worker = worker


@dataclass
class _Child:
    pid: int
    started: float
    ready: bool = False
    retiring: bool = False  # sent SIGTERM: its exit is expected


class Supervisor:
    """Run ``target(worker)`` in ``workers`` forked processes serving
    ``host``:``port`` (see the module's description for the whole behaviour).

    ``target`` runs in the worker process and returns its exit status; it gets a
    :class:`Worker`. ``close_timeout`` is the workers' graceful-stop time, which the
    supervisor waits (plus 5 s) before it kills them. ``broker`` is the URL of the
    publish/subscribe broker the workers use, for the startup warning only: without
    one, topics stay per process. ``scheme`` (``ws`` or ``wss``) is for the startup
    line. ``reuse_port`` chooses between a socket per worker
    (``SO_REUSEPORT``) and one shared socket; the default is
    :func:`reuse_port_balances`. ``backlog`` is each listening socket's.

    Call :meth:`bind` (raises :class:`OSError`), then :meth:`run`.
    """

    def __init__(
        self,
        target: Callable[[Worker], int],
        *,
        workers: int,
        host: str = "127.0.0.1",
        port: int = 8000,
        close_timeout: float = 10.0,
        broker: Optional[str] = None,
        scheme: str = "ws",
        reuse_port: Optional[bool] = None,
        backlog: int = 128,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.target = target
        self.workers = workers
        self.host = host
        self.port = port
        self.close_timeout = close_timeout
        self.broker = broker
        self.scheme = scheme
        self.reuse_port = reuse_port_balances() if reuse_port is None else reuse_port
        self.backlog = backlog
        #: The bound address (its real port once :meth:`bind` returned).
        self.address: Any = None
        self._pid = 0  # the supervisor's, set by run()
        self._socket: Optional[socket.socket] = None
        self._fds: list[int] = []
        self._children: dict[int, _Child] = {}
        self._signals: collections.deque[int] = collections.deque()
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1
        self._notified = b""
        self._spawn_at: list[float] = []
        self._booted = False
        self._boot_failures = 0
        self._young_deaths = 0
        self._stopping = False
        self._killed = False
        self._deadline = 0.0
        self._status = 0
        self._restart_queue: list[int] = []
        self._replacement: Optional[int] = None
        self._retiree: Optional[int] = None

    # -- the supervisor ---------------------------------------------------------------

    def bind(self) -> None:
        """Bind the port (a free one for port 0) and set :attr:`address`. Raises
        :class:`OSError` when it can't; nothing stays open then."""
        family = _family(self.host)
        if self.reuse_port:
            # A socket without SO_REUSEPORT first: it fails when anything holds the
            # port (another server with SO_REUSEPORT would otherwise share it
            # silently) and picks the port for port 0.
            probe = _bind(family, (self.host, self.port), False, None)
            try:
                address = probe.getsockname()
            finally:
                probe.close()
            # Hold the port, without listening: the workers listen.
            self._socket = _bind(family, address, True, None)
        else:
            self._socket = _bind(family, (self.host, self.port), False, self.backlog)
        self.address = self._socket.getsockname()

    def run(self) -> int:
        """Start the workers and supervise them until they are stopped; return the
        exit status: 0 after SIGTERM or SIGINT, 1 after a second one, a failed worker's
        status when workers fail to start. In a forked worker, return what the target
        returned instead (so the process ends like any program). Binds first if
        :meth:`bind` wasn't called."""
        if not hasattr(os, "fork"):
            raise RuntimeError("several workers need os.fork (POSIX)")
        self._pid = os.getpid()
        if self._socket is None:
            self.bind()
        if self.workers > 1 and self.broker is None:
            logger.warning(
                "%d workers and no broker: topics (publish/subscribe) stay per process, "
                "a message published in one worker reaches only that worker's subscribers",
                self.workers,
            )
        self._open()
        try:
            return self._supervise()
        except _Forked as forked:
            worker = forked.worker
        finally:
            if os.getpid() == self._pid:
                self._close()
        return self.target(worker)

    def _open(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._notify_r, self._notify_w = os.pipe()
        self._alive_r, self._alive_w = os.pipe()
        self._fds = [self._wakeup_r, self._wakeup_w, self._notify_r, self._notify_w]
        self._fds += [self._alive_r, self._alive_w]
        for fd in (self._wakeup_r, self._wakeup_w, self._notify_r, self._alive_r):
            os.set_blocking(fd, False)
        for signum in _HANDLED:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)

    def _close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._socket is not None:
            self._socket.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _supervise(self) -> int:
        for _ in range(self.workers):
            self._spawn()
        while True:
            self._handle_signals()
            exits = self._reap()
            self._read_notifications()  # after reaping: a worker's last words count
            for pid, code in exits:
                self._on_exit(pid, code)
            if self._stopping:
                if not self._children:
                    logger.info("stopped")
                    return self._status
                self._enforce_deadline()
            else:
                self._spawn_due()
                self._continue_restart()
            self._wait()

    def _spawn(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        # Signals wait until the new process has its own handlers: a SIGTERM sent to
        # it early must stop it, not run the supervisor's handler in it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
            if pid == 0:
                raise _Forked(self._become_worker())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._children[pid] = _Child(pid, time.monotonic())
        logger.info("started worker %d", pid)
        return pid

    def _become_worker(self) -> Worker:
        """In the forked process: drop the supervisor's signals and file descriptors."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the target calls started()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, _ignore_signal)
        signal.signal(signal.SIGHUP, _ignore_signal)
        for fd in (self._wakeup_r, self._wakeup_w, self._notify_r, self._alive_w):
            os.close(fd)
        assert self._socket is not None
        shared: Optional[socket.socket] = None
        if self.reuse_port:
            self._socket.close()
        else:
            shared = self._socket
        logging.getLogger(_SERVER_LOGGER).addFilter(_QUIET_LISTENING)
        return Worker(shared, self.address, self.backlog, self._notify_w, self._alive_r)

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = list(self._spawn_at)
        if self._stopping:
            deadlines.append(self._deadline)
        timeout = POLL_INTERVAL
        if deadlines:
            timeout = max(0.0, min(min(deadlines) - now, POLL_INTERVAL))
        if not self._signals:
            select.select([self._wakeup_r, self._notify_r], [], [], timeout)
        try:
            while os.read(self._wakeup_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            name = signal.Signals(signum).name
            if signum in (signal.SIGINT, signal.SIGTERM):
                if not self._stopping:
                    logger.info(
                        "%s received: stopping %d workers (up to %ss)",
                        name,
                        len(self._children),
                        self.close_timeout,
                    )
                    self._begin_stop(0)
                elif not self._killed:
                    logger.warning("%s again: exiting now", name)
                    self._status = 1
                    self._kill_all()
            elif signum == signal.SIGHUP and not self._stopping:
                logger.info("SIGHUP received: restarting the workers one by one")
                self._restart_queue = [c.pid for c in self._children.values() if not c.retiring]

    def _reap(self) -> list[tuple[int, int]]:
        exits = []
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exits.append((pid, os.waitstatus_to_exitcode(status)))
        return exits

    def _read_notifications(self) -> None:
        while True:
            try:
                data = os.read(self._notify_r, 4096)
            except BlockingIOError:
                return
            self._notified += data
            *lines, self._notified = self._notified.split(b"\n")
            for line in lines:
                child = self._children.get(int(line))
                if child is not None:
                    self._on_ready(child)

    def _on_ready(self, child: _Child) -> None:
        child.ready = True
        self._boot_failures = 0
        logger.debug("worker %d is ready", child.pid)
        if child.pid == self._replacement:
            old = self._children.get(self._retiree) if self._retiree is not None else None
            if old is not None and not self._stopping:
                logger.info("worker %d replaces worker %d", child.pid, old.pid)
                self._terminate(old)
            self._replacement = self._retiree = None
        if not self._booted and sum(c.ready for c in self._children.values()) >= self.workers:
            self._booted = True
            logger.info(
                "listening on %s://%s (%d workers, %s; Press CTRL+C to quit)",
                self.scheme,
                _format_address(self.address),
                self.workers,
                "SO_REUSEPORT" if self.reuse_port else "one shared socket",
            )

    def _on_exit(self, pid: int, code: int) -> None:
        child = self._children.pop(pid, None)
        if child is None:
            return
        how = _describe(code)
        if self._stopping or child.retiring:
            logger.info("worker %d %s", pid, how)
            return
        now = time.monotonic()
        if now - child.started >= STABLE_AFTER:
            self._young_deaths = 0
        else:
            self._young_deaths += 1
        if not child.ready:
            logger.error("worker %d %s before it was ready", pid, how)
            if pid == self._replacement:
                logger.error("restart abandoned: the workers that serve keep serving")
                self._replacement = self._retiree = None
                self._restart_queue.clear()
                return
            self._boot_failures += 1
            if not self._booted or self._boot_failures >= BOOT_FAILURE_LIMIT:
                logger.error(
                    "%s: stopping",
                    "a worker failed to start"
                    if not self._booted
                    else f"{self._boot_failures} workers in a row failed to start",
                )
                self._begin_stop(code if code > 0 else 1)
                return
        else:
            logger.warning("worker %d %s: replacing it", pid, how)
        if pid == self._retiree:  # the replacement on its way takes its place
            self._retiree = None
            return
        delay = 0.0
        if self._young_deaths:
            delay = min(BACKOFF_BASE * 2 ** (self._young_deaths - 1), BACKOFF_MAX)
        self._spawn_at.append(now + delay)

    def _spawn_due(self) -> None:
        now = time.monotonic()
        due = [at for at in self._spawn_at if at <= now]
        self._spawn_at = [at for at in self._spawn_at if at > now]
        for _ in due:
            self._spawn()

    def _continue_restart(self) -> None:
        if self._replacement is not None or not self._booted:
            return
        while self._restart_queue:
            old = self._children.get(self._restart_queue.pop(0))
            if old is not None and not old.retiring:
                self._retiree = old.pid
                self._replacement = self._spawn()
                return

    def _begin_stop(self, status: int) -> None:
        self._stopping = True
        self._status = status
        self._deadline = time.monotonic() + self.close_timeout + STOP_GRACE
        self._spawn_at.clear()
        self._restart_queue.clear()
        for child in self._children.values():
            self._terminate(child)

    def _terminate(self, child: _Child) -> None:
        child.retiring = True
        self._send(child.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        self._killed = True
        self._deadline = time.monotonic() + KILL_WAIT
        for pid in self._children:
            self._send(pid, signal.SIGKILL)

    def _enforce_deadline(self) -> None:
        if time.monotonic() < self._deadline:
            return
        if not self._killed:
            for pid in self._children:
                logger.warning("worker %d still running: killing it", pid)
            self._kill_all()
        else:
            logger.error("workers %s outlived SIGKILL: giving up", sorted(self._children))
            self._children.clear()

    @staticmethod
    def _send(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # already reaped
            pass
