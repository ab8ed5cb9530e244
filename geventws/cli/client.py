"""``geventws client URL``: an interactive client.

Each line read from standard input is sent as a text message; each message received is
printed after ``< ``. At the end of the input the connection is closed (1000).

Exit status: 0 after a normal close (1000, 1001, or none: 1005), 1 after any other
close or when the connection fails, 2 for a usage error (argparse), 130 after Ctrl-C:
the first SIGINT closes the connection (1001, within ``--close-timeout``) and exits
quietly, a second one exits at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Union

from .errors import FAILURE, INTERRUPTED, USAGE, CommandError
from .tls import client_context

__all__ = ["run"]

#: Close codes after which the exit status is 0.
NORMAL_CLOSE = (1000, 1001, 1005)


def run(args: argparse.Namespace) -> int:
    """Run the client as parsed; return the exit status. Raises :class:`CommandError`."""
    import gevent
    import gevent.event

    values = dict(args.values)
    ssl_context = client_context(args.cafile, args.insecure)
    if ssl_context is not None:
        values["ssl"] = ssl_context

    interrupted = gevent.event.Event()

    def on_sigint() -> None:
        if interrupted.is_set():  # the second Ctrl-C: no more waiting
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        interrupted.set()

    handler = gevent.signal_handler(signal.SIGINT, on_sigint)
    try:
        session = gevent.spawn(_guarded, args, values)
        gevent.wait([session, interrupted], count=1)
        if interrupted.is_set():
            # The session closes the connection (1001) as it dies; bounded by the close
            # timeout, and by a second Ctrl-C.
            session.kill(block=True, timeout=values["close_timeout"] + 1)
            return INTERRUPTED
        result: Union[int, CommandError] = session.get()
        if isinstance(result, CommandError):
            raise result
        return result
    finally:
        handler.cancel()


def _guarded(args: argparse.Namespace, values: dict[str, Any]) -> Union[int, CommandError]:
    """The session's exit status, or its error (returned: an exception that ends a
    greenlet is printed by gevent with a traceback)."""
    try:
        return _session(args, values)
    except CommandError as exc:
        return exc


def _session(args: argparse.Namespace, values: dict[str, Any]) -> int:
    import gevent
    import gevent.fileobject

    from ..client import connect
    from ..exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    try:
        connection = connect(args.url, **values)
    except TimeoutError:
        raise CommandError(
            f"cannot connect to {args.url}: timed out after {values['open_timeout']}s"
        ) from None
    except (InvalidHandshake, OSError) as exc:  # before ValueError: certificate errors are both
        raise CommandError(f"cannot connect to {args.url}: {exc}") from None
    except (InvalidURI, ValueError) as exc:
        raise CommandError(str(exc), USAGE) from None
    out = sys.stdout
    print(f"Connected to {args.url}.", file=sys.stderr, flush=True)

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
    except gevent.GreenletExit:  # Ctrl-C: going away
        sender.kill()
        connection.close(1001, "going away")
        raise
    finally:
        sender.kill()
        connection.close()
    code, reason = connection.close_code, connection.close_reason
    print(f"Connection closed: {code}{f' ({reason})' if reason else ''}.", file=sys.stderr)
    return 0 if code in NORMAL_CLOSE else FAILURE
