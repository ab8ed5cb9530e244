"""``geventws serve module:handler``: one process, or a supervisor and its workers.

One process (:func:`serve_process`) monkey-patches the standard library with gevent
*first*, then configures logging, loads the TLS files and the application, binds, logs
the startup line ``listening on ws://HOST:PORT (Press CTRL+C to quit)`` and serves
until SIGINT or SIGTERM. The first signal stops gracefully (every connection is closed
with 1001, handlers get ``--close-timeout`` seconds to finish), a second one exits at
once with status 1.

``--workers N`` runs a :class:`~geventws.supervisor.Supervisor`, which never imports
the application, and N forked workers that each run :func:`serve_process` on the socket
it gives them; the supervisor logs the startup line once all of them serve.
``--reload`` runs the reloader (:mod:`geventws.cli.reload`) instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

from .._sockets import format_address
from ..options import keyword, options_for
from . import logs
from .errors import USAGE, CommandError
from .loader import ImportFromStringError, load_handler
from .parser import was_given
from .tls import server_context

if TYPE_CHECKING:
    from ..supervisor import Worker

__all__ = ["run", "serve_process", "startup_line"]

log = logging.getLogger("geventws.cli")
#: The protocol version that ends a request line, and the blanks before it.
_VERSION = re.compile(r"\s+HTTP/\d+\.\d+$")
#: Where the reason at the start of pywsgi's message for a malformed request ends, and
#: what it quotes of the request begins.
_REASON_END = re.compile(r"[:;]")

#: Set by the reloader for the servers it starts: the descriptor of a pipe whose end of
#: file says the reloader is gone. Those servers leave Ctrl-C to the reloader.
RELOADER_FD = "GEVENTWS_RELOADER_FD"

QUIT = "(Press CTRL+C to quit)"

#: Server-scope options the ``--wsgi`` server applies itself.
_WSGI_SERVER_OPTIONS = {
    "handshake_timeout",
    "max_connections",
    "forwarded_allow_ips",
    "proxy_headers",
    "backlog",
}


def _without_query(request_line: str) -> str:
    """``request_line`` without its query string: from the first ``?`` up to the version
    that ends the line, or to its end without one (a blank inside the query, which
    makes the line malformed, doesn't end it)."""
    start = request_line.find("?")
    if start < 0:
        return request_line
    version = _VERSION.search(request_line, start)
    return request_line[:start] + (version.group() if version else "")


def startup_line(address: Any, tls: bool) -> str:
    """``listening on ws://127.0.0.1:8000`` (``wss://`` with TLS, IPv6 in brackets)."""
    return f"listening on {'wss' if tls else 'ws'}://{format_address(address)}"


class _QuietLibraryListening(logging.Filter):
    """Drops :class:`~geventws.WebSocketServer`'s own ``listening on`` line: the command
    logs its startup line instead, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("listening on")


def _ignore_signal(signum: int, frame: Any) -> None:
    """A no-op handler (unlike ``SIG_IGN``, it doesn't carry over to programs run)."""


def run(args: argparse.Namespace, given: list[str]) -> int:
    """Run ``geventws serve`` as parsed; ``given`` are its arguments (for the reloader).
    Returns the exit status; raises :class:`CommandError`."""
    if args.reload:
        from .reload import run_reloader

        return run_reloader(args, given)
    if args.workers > 1:
        return _serve_workers(args)
    return serve_process(args)


def _serve_workers(args: argparse.Namespace) -> int:
    """``--workers N``: a supervisor forks N workers that each run
    :func:`serve_process` on the socket it gives them."""
    from ..supervisor import Supervisor

    # The workers inherit this configuration; they don't configure logging again.
    logs.configure(args.log_level, args.log_config, args.access_log, with_pid=True)
    values = dict(args.values)
    if args.certfile:
        server_context(args.certfile, args.keyfile)  # one error here, not one per worker
    kwargs: dict[str, Any] = {}
    if values.get("backlog") is not None:
        kwargs["backlog"] = values["backlog"]
    supervisor = Supervisor(
        lambda worker: serve_process(args, worker),
        workers=args.workers,
        host=args.host,
        port=args.port,
        close_timeout=values["close_timeout"],
        broker=values.get("broker", getattr(args, "broker", None)),
        scheme="wss" if args.certfile else "ws",
        **kwargs,
    )
    try:
        supervisor.bind()
    except OSError as exc:
        raise _cannot_listen(args, exc) from None
    return supervisor.run()


def _cannot_listen(args: argparse.Namespace, exc: OSError) -> CommandError:
    where = f"--fd {args.fd}" if args.fd is not None else format_address((args.host, args.port))
    # gevent appends the address to strerror: the errno's own words instead.
    if isinstance(exc.errno, int) and exc.errno > 0:
        reason = os.strerror(exc.errno)
    else:  # socket.gaierror has negative codes
        reason = (exc.strerror or str(exc)).split(": (", 1)[0]
    return CommandError(f"cannot listen on {where}: {reason}")


def _speedups_line() -> str:
    from .. import speedups_available

    if speedups_available():
        return "C speedups: on (geventws._speedups)"
    return "C speedups: off: pure-Python masking and sends"


def _inherited_socket(fd: int, backlog: Optional[int]) -> socket.socket:
    """The listening socket of ``--fd`` (a gevent socket: called after patching)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise CommandError(f"--fd {fd}: not a socket: {exc.strerror or exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise CommandError(f"--fd {fd}: not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.listen(backlog or 128)
    return sock


def serve_process(args: argparse.Namespace, worker: Optional[Worker] = None) -> int:
    """Serve in this process (alone, or as a supervisor's ``worker``) until stopped;
    return the exit status. Raises :class:`CommandError`."""
    # Patch before anything imports the application or touches threads and sockets.
    from gevent import monkey

    monkey.patch_all()
    logs.keep_os_lock()

    import gevent

    reloader_fd = os.environ.pop(RELOADER_FD, None)
    if worker is None:
        logs.configure(
            args.log_level, args.log_config, args.access_log, with_pid=reloader_fd is not None
        )
    logging.getLogger("geventws.server").addFilter(_QuietLibraryListening())
    log.debug("%s", _speedups_line())
    values = dict(args.values)
    ssl_context = server_context(args.certfile, args.keyfile) if args.certfile else None

    sys.path.insert(0, os.getcwd())
    try:
        handler = load_handler(args.handler)
        wsgi_app = load_handler(args.wsgi) if args.wsgi else None
    except ImportFromStringError as exc:
        raise CommandError(str(exc), USAGE) from None

    try:
        if worker is not None:
            listener: Any = worker.listener()
        elif args.fd is not None:
            listener = _inherited_socket(args.fd, values.get("backlog"))
        else:
            listener = (args.host, args.port)
        if not isinstance(listener, tuple):  # its backlog was set where it was made
            values["backlog"] = None
        if wsgi_app is not None:
            server, stop = _wsgi_server(args, (handler, wsgi_app), values, ssl_context, listener)
        else:
            from ..server import WebSocketServer

            server = WebSocketServer(listener, handler, ssl_context=ssl_context, **values)
            stop = server.stop
        server.start()
    except ValueError as exc:  # a combination of values the table's parsers can't see
        raise CommandError(str(exc), USAGE) from None
    except OSError as exc:
        raise _cannot_listen(args, exc) from None
    if worker is None and reloader_fd is None:
        log.info("%s %s", startup_line(server.address, ssl_context is not None), QUIT)

    stopping: list[gevent.Greenlet] = []
    close_timeout = values["close_timeout"]

    def stop_once(reason: str) -> None:
        if stopping:
            return
        log.info("%s: closing connections (up to %ss)", reason, close_timeout)
        stopping.append(gevent.spawn(stop, close_timeout))

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping:
            log.warning("%s again: exiting now", name)
            os._exit(1)
        stop_once(f"{name} received")

    if worker is not None:  # the supervisor sends SIGTERM, once
        worker.started(lambda: stopping.append(gevent.spawn(stop, close_timeout)))
    else:
        handlers = [gevent.signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)]
        if reloader_fd is None:
            handlers.append(gevent.signal_handler(signal.SIGINT, on_signal, signal.SIGINT))
        else:  # Ctrl-C reaches the whole process group: the reloader stops us
            signal.signal(signal.SIGINT, _ignore_signal)
            gevent.spawn(_watch_reloader, int(reloader_fd), stop_once)
    server.serve_forever()
    for greenlet in stopping:
        greenlet.join()
    log.info("stopped")
    return 0


def _watch_reloader(fd: int, stop: Callable[[str], None]) -> None:
    """Stop once the reloader is gone: the end of file on a pipe only it writes to.
    (No deadline: the wait lasts as long as the reloader does.)"""
    from gevent.socket import wait_read

    try:
        while True:
            wait_read(fd)
            if not os.read(fd, 64):
                break
    finally:
        os.close(fd)
    stop("the reloader is gone")


def _wsgi_server(
    args: argparse.Namespace,
    handler_and_app: tuple[Callable[..., Any], Callable[..., Any]],
    values: dict[str, Any],
    ssl_context: Any,
    listener: Any,
) -> tuple[Any, Callable[[float], None]]:
    """``--wsgi``: a gevent.pywsgi server for ``app`` with the handler beside it (every
    request head read under ``--handshake-timeout``; pywsgi's access line for each
    HTTP request on ``geventws.http``, without its query string, none with
    ``--no-access-log``), and its graceful stop (WebSocket connections closed with 1001
    first)."""
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    from ..core.proxy import ProxyHeadersMiddleware
    from ..wsgi import RequestDeadlineHandler, WebSocketMiddleware

    handler, app = handler_and_app
    upgrade = {keyword(option) for option in options_for("middleware")}
    for name in sorted(set(values) - upgrade - _WSGI_SERVER_OPTIONS):
        if was_given(args, name):
            log.warning("--%s does not apply with --wsgi: ignored", name.replace("_", "-"))
    middleware = WebSocketMiddleware(
        app, handler, **{name: value for name, value in values.items() if name in upgrade}
    )
    proxied = ProxyHeadersMiddleware(
        middleware, values["forwarded_allow_ips"], values["proxy_headers"]
    )

    class Handler(RequestDeadlineHandler):
        handshake_timeout = values["handshake_timeout"]

        def log_request(self) -> None:
            # A WebSocket has its own access line, when it ends.
            if getattr(self, "code", None) != 101:
                super().log_request()

        def format_request(self) -> str:
            # pywsgi's line, with the query string left out as in geventws.access.
            line: str = super().format_request()
            request_line = self.requestline or ""
            if "?" not in request_line:
                return line
            return line.replace(f'"{request_line}"', f'"{_without_query(request_line)}"', 1)

        def read_request(self, raw_requestline: str) -> Any:
            # pywsgi's error for a malformed request, which it logs, quotes the request
            # line or parts of it: with a query string there, the error names its
            # reason and the line without the query instead.
            try:
                return super().read_request(raw_requestline)
            except ValueError as exc:
                line = raw_requestline.rstrip()
                if "?" not in line:
                    raise
                reason = _REASON_END.split(str(exc), maxsplit=1)[0]
                raise ValueError(f"{reason}: {_without_query(line)!r}") from None

    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        # The TLS handshake then happens on the first read, under the request deadline.
        kwargs.update(ssl_context=ssl_context, do_handshake_on_connect=False)
    if values["max_connections"] is not None:
        kwargs["spawn"] = Pool(values["max_connections"])
    if values["backlog"] is not None:
        kwargs["backlog"] = values["backlog"]
    server = WSGIServer(
        listener,
        proxied,
        handler_class=Handler,
        log=logging.getLogger("geventws.http") if args.access_log else None,
        error_log=logging.getLogger("geventws.http"),
        **kwargs,
    )
    log.info("serving %s beside the WebSocket handler", args.wsgi)

    def stop(timeout: float) -> None:
        server.close()
        middleware.close_all()
        server.stop(timeout=timeout)

    return server, stop
