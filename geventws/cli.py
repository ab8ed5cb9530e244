"""The ``geventws`` command.

``geventws serve module:handler [options]`` monkey-patches the standard library with
gevent *first*, then imports the application, configures logging and serves until
SIGINT or SIGTERM. The first signal stops gracefully (every connection is closed with
1001, handlers get ``--close-timeout`` seconds to finish), a second one exits at once.
With ``--workers N``, a supervisor (:mod:`geventws.supervisor`) runs N such processes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from .supervisor import Worker

__all__ = ["main", "load_handler", "ImportFromStringError"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With ``--workers N``: the same, with the process id of the supervisor or worker.
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class ImportFromStringError(Exception):
    """``module:attribute`` could not be loaded; the message says what is missing."""


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (the attribute may be dotted) and return it.

    Raises :class:`ImportFromStringError` with a one-line message that tells a missing
    module from a missing attribute, or from a module that failed on import.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportFromStringError(f"expected module:handler, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ImportFromStringError(
                f"cannot import module {module_name!r}: not found"
            ) from None
        raise ImportFromStringError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise ImportFromStringError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportFromStringError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ImportFromStringError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def _size(text: str) -> Optional[int]:
    """Parse ``1048576``, ``64KiB``, ``16MiB`` or ``none``."""
    value = text.strip().lower()
    if value in ("none", "0", "unlimited"):
        return None
    for suffix, factor in (
        ("kib", 2**10),
        ("mib", 2**20),
        ("gib", 2**30),
        ("k", 2**10),
        ("m", 2**20),
    ):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _seconds(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "off") else float(text)


def _workers(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("use 1 or more")
    return count


def _origin(text: str) -> Optional[str]:
    return None if text.lower() == "none" else text


def _add_max_size(parser: argparse.ArgumentParser) -> None:
    """``--max-size``: one definition for every command that takes it."""
    parser.add_argument(
        "--max-size",
        type=_size,
        default=2**20,
        metavar="BYTES",
        help="largest message accepted, e.g. 1048576, 16MiB or none (default 1MiB)",
    )


def _compression(text: str) -> Optional[str]:
    if text.lower() == "none":
        return None
    if text != "deflate":
        raise argparse.ArgumentTypeError("use 'deflate' or 'none'")
    return text


def _add_compression(parser: argparse.ArgumentParser) -> None:
    """The ``--compression*`` flags, shared by ``serve`` and ``client``."""
    group = parser.add_argument_group("compression (permessage-deflate, RFC 7692)")
    group.add_argument(
        "--compression",
        type=_compression,
        default="deflate",
        metavar="deflate|none",
        help="negotiate permessage-deflate (default deflate)",
    )
    group.add_argument(
        "--compression-window-bits",
        type=int,
        default=12,
        metavar="9-15",
        help="LZ77 window for compressing, as a power of two (default 12: 4 KiB)",
    )
    group.add_argument(
        "--compression-mem-level",
        type=int,
        default=5,
        metavar="1-9",
        help="zlib memory level for compressing (default 5)",
    )
    group.add_argument(
        "--compression-threshold",
        type=int,
        default=128,
        metavar="BYTES",
        help="messages shorter than this are sent uncompressed (default 128)",
    )
    group.add_argument(
        "--compression-level",
        type=int,
        default=-1,
        metavar="0-9",
        help="zlib compression level (default -1: zlib's default, 6)",
    )


def _compression_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "compression": args.compression,
        "compression_window_bits": args.compression_window_bits,
        "compression_mem_level": args.compression_mem_level,
        "compression_threshold": args.compression_threshold,
        "compression_level": args.compression_level,
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each option has the name of the matching keyword argument."""
    parser = argparse.ArgumentParser(
        prog="geventws", description="WebSocket servers on gevent with a blocking API."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser(
        "serve",
        help="serve handler(connection, request) from module:handler",
        description="Serve a WebSocket handler. Monkey-patches with gevent before "
        "importing the application.",
    )
    serve.add_argument("handler", help="the handler, as module:function")
    serve.add_argument(
        "--wsgi",
        metavar="MODULE:APP",
        help="also serve this WSGI application on the same port (gevent.pywsgi): "
        "WebSocket upgrade requests go to the handler, everything else to the app",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="processes serving the port, under a supervisor that replaces the ones "
        "that die (default 1: this process serves, no supervisor)",
    )
    serve.add_argument(
        "--origin",
        dest="origins",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="allowed Origin (repeatable; 'none' allows clients without Origin); "
        "others get HTTP 403. Default: any origin",
    )
    serve.add_argument(
        "--subprotocol",
        dest="subprotocols",
        action="append",
        metavar="NAME",
        help="supported subprotocol, in order of preference (repeatable)",
    )
    _add_max_size(serve)
    serve.add_argument(
        "--max-queue",
        type=int,
        default=16,
        metavar="N",
        help="received messages that may wait for the handler (default 16)",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to send its upgrade request (default 10; not with --wsgi)",
    )
    serve.add_argument(
        "--close-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time allowed for the closing handshake and for a graceful stop (default 10)",
    )
    serve.add_argument(
        "--ping-interval",
        type=_seconds,
        default=20.0,
        metavar="SECONDS",
        help="keepalive ping interval, or none (default 20)",
    )
    serve.add_argument(
        "--ping-timeout",
        type=_seconds,
        default=20.0,
        metavar="SECONDS",
        help="close with 1011 when a keepalive pong takes longer, or none (default 20)",
    )
    serve.add_argument(
        "--send-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="close with 1008 a client that doesn't read for this long (default none)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="connections served at once; beyond it HTTP 503 (with --wsgi: new "
        "connections wait to be accepted) (default no limit)",
    )
    _add_compression(serve)
    serve.add_argument(
        "--broker",
        default=os.environ.get("GEVENTWS_BROKER") or None,
        metavar="URL",
        help="where topics meet other processes: redis://host:6379/0 (default "
        "$GEVENTWS_BROKER, else this process only)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        metavar="IPS",
        help="proxies (comma-separated addresses or networks, or '*') whose headers give the "
        "client's address and scheme (default $FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )
    serve.add_argument(
        "--proxy-headers",
        default="x-forwarded",
        metavar="x-forwarded|forwarded|none",
        help="which headers those proxies set: X-Forwarded-For/-Proto, RFC 7239 Forwarded, "
        "or none to ignore both (default x-forwarded)",
    )
    serve.add_argument("--certfile", help="TLS certificate (PEM) to serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error", "critical"],
        help="logging level (default info)",
    )
    client = commands.add_parser(
        "client",
        help="interactive client: send lines typed or piped, print what arrives",
        description="Connect to URL; each line read from standard input is sent as a "
        "text message, each message received is printed after '< '. The exit status is "
        "0 after a normal close, 1 otherwise.",
    )
    client.add_argument("url", help="ws:// or wss:// URL")
    client.add_argument(
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    client.add_argument(
        "--subprotocol",
        dest="subprotocols",
        action="append",
        metavar="NAME",
        help="subprotocol to offer (repeatable)",
    )
    client.add_argument("--origin", help="Origin header to send")
    client.add_argument(
        "--binary",
        action="store_true",
        help="show received binary messages as hex (default: Python bytes literal)",
    )
    _add_max_size(client)
    client.add_argument(
        "--open-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time allowed to connect and complete the handshake (default 10)",
    )
    client.add_argument("--insecure", action="store_true", help="don't verify TLS certificates")
    _add_compression(client)
    return parser


def _serve_workers(args: argparse.Namespace) -> int:
    """``--workers N``: a supervisor, which never imports the application, forks N
    workers that each run :func:`_serve` on the socket it gives them."""
    from .supervisor import Supervisor

    # The workers inherit this configuration: their basicConfig() does nothing.
    logging.basicConfig(level=args.log_level.upper(), format=WORKERS_LOG_FORMAT)
    supervisor = Supervisor(
        lambda worker: _serve(args, worker),
        workers=args.workers,
        host=args.host,
        port=args.port,
        close_timeout=args.close_timeout,
        broker=args.broker,
    )
    try:
        supervisor.bind()
    except OSError as exc:
        print(f"geventws: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return supervisor.run()


def _serve(args: argparse.Namespace, worker: Optional[Worker] = None) -> int:
    # Patch before anything imports the application or touches threads and sockets.
    from gevent import monkey

    monkey.patch_all()

    import gevent

    from .server import WebSocketServer

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    log = logging.getLogger("geventws.cli")
    sys.path.insert(0, os.getcwd())
    try:
        handler = load_handler(args.handler)
        wsgi_app = load_handler(args.wsgi) if args.wsgi else None
    except ImportFromStringError as exc:
        print(f"geventws: error: {exc}", file=sys.stderr)
        return 2

    ssl_context = None
    if args.certfile:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.certfile, args.keyfile)

    options: dict[str, Any] = dict(
        origins=args.origins,
        subprotocols=args.subprotocols,
        max_size=args.max_size,
        max_queue=args.max_queue,
        close_timeout=args.close_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        send_timeout=args.send_timeout,
        broker=args.broker,
        **_compression_options(args),
    )
    try:
        listener = (args.host, args.port) if worker is None else worker.listener()
        if wsgi_app is not None:
            server, stop = _wsgi_server(
                args, handler, wsgi_app, options, ssl_context, listener=listener
            )
        else:
            server = WebSocketServer(
                listener,
                handler,
                handshake_timeout=args.handshake_timeout,
                max_connections=args.max_connections,
                ssl_context=ssl_context,
                forwarded_allow_ips=args.forwarded_allow_ips,
                proxy_headers=args.proxy_headers,
                **options,
            )
            stop = server.stop
        server.start()
    except ValueError as exc:
        print(f"geventws: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"geventws: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    stopping: list[gevent.Greenlet] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stopping:
            log.warning("%s again: exiting now", name)
            os._exit(1)
        log.info("%s received: closing connections (up to %ss)", name, args.close_timeout)
        stopping.append(gevent.spawn(stop, args.close_timeout))

    if worker is None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, on_signal, signum)
    else:  # the supervisor sends SIGTERM, once
        worker.started(lambda: stopping.append(gevent.spawn(stop, args.close_timeout)))
    server.serve_forever()
    for greenlet in stopping:
        greenlet.join()
    log.info("stopped")
    return 0


def _wsgi_server(
    args: argparse.Namespace,
    handler: Callable[..., Any],
    app: Callable[..., Any],
    options: dict[str, Any],
    ssl_context: Any,
    *,
    listener: Any,
) -> tuple[Any, Callable[[float], None]]:
    """``--wsgi``: a gevent.pywsgi server for ``app`` with the handler beside it, and
    its graceful stop (WebSocket connections closed with 1001 first)."""
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    from ._sockets import format_address as _format_address
    from .core.proxy import ProxyHeadersMiddleware
    from .wsgi import WebSocketMiddleware

    middleware = WebSocketMiddleware(app, handler, **options)
    proxied = ProxyHeadersMiddleware(middleware, args.forwarded_allow_ips, args.proxy_headers)
    kwargs: dict[str, Any] = {}
    if ssl_context is not None:
        kwargs["ssl_context"] = ssl_context
    if args.max_connections is not None:
        kwargs["spawn"] = Pool(args.max_connections)

    class LoggedWSGIServer(WSGIServer):  # type: ignore[misc]
        def start(self) -> None:
            super().start()
            host, port = self.address[:2]
            logging.getLogger("geventws.server").info(
                "listening on %s (WSGI app and WebSocket handler)",
                _format_address((host, port)),
            )

    server = LoggedWSGIServer(
        listener,
        proxied,
        log=logging.getLogger("geventws.http"),
        error_log=logging.getLogger("geventws.http"),
        **kwargs,
    )

    def stop(timeout: float) -> None:
        server.close()
        middleware.close_all()
        server.stop(timeout=timeout)

    return server, stop


def _client(args: argparse.Namespace) -> int:
    import gevent
    import gevent.fileobject

    from .client import connect
    from .exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    headers = []
    for header in args.headers:
        name, sep, value = header.partition(":")
        if not sep:
            print(f"geventws: error: --header needs 'Name: value', got {header!r}", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    ssl_context = None
    if args.insecure:
        import ssl

        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    try:
        connection = connect(
            args.url,
            headers=headers,
            origin=args.origin,
            subprotocols=args.subprotocols,
            open_timeout=args.open_timeout,
            max_size=args.max_size,
            ssl=ssl_context,
            **_compression_options(args),
        )
    except ValueError as exc:
        print(f"geventws: error: {exc}", file=sys.stderr)
        return 2
    except (InvalidHandshake, InvalidURI, OSError) as exc:
        print(f"geventws: error: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout
    print(f"Connected to {args.url}.", file=sys.stderr)

    def show(message: Any) -> None:
        if isinstance(message, str):
            out.write(f"< {message}\n")
        elif args.binary:
            out.write(f"< (binary) {message.hex()}\n")
        else:
            out.write(f"< (binary) {message!r}\n")
        out.flush()

    def pump_stdin() -> None:
        stdin = gevent.fileobject.FileObject(sys.stdin.fileno(), "rb", close=False)
        try:
            for line in stdin:
                connection.send(line.rstrip(b"\r\n").decode("utf-8", "replace"))
        except ConnectionClosed:
            return
        connection.close()

    sender = gevent.spawn(pump_stdin)
    try:
        for message in connection:
            show(message)
    except ConnectionClosed:
        pass
    finally:
        sender.kill()
        connection.close()
    code, reason = connection.close_code, connection.close_reason
    print(f"Connection closed: {code}{f' ({reason})' if reason else ''}.", file=sys.stderr)
    return 0 if code in (1000, 1001, 1005) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``geventws`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args) if args.workers == 1 else _serve_workers(args)
    if args.command == "client":
        return _client(args)
    return 2  # pragma: no cover - argparse refuses unknown commands
