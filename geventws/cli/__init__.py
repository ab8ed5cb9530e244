"""The ``geventws`` command: ``geventws serve`` and ``geventws client``.

:mod:`~geventws.cli.parser` generates the option flags from
:data:`geventws.options.OPTIONS`; :mod:`~geventws.cli.serve` serves (one process, or
workers under :mod:`geventws.supervisor`), :mod:`~geventws.cli.reload` restarts on
changes, :mod:`~geventws.cli.client` is the interactive client.

Exit statuses: 0 success; 1 the command could not do its job (a port in use, TLS files,
a failed or abnormally closed connection, a second Ctrl-C while stopping); 2 a usage
error (a bad flag or value, one line naming it) or a handler that cannot be imported;
130 the client was interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .errors import CommandError
from .loader import ImportFromStringError, load_handler
from .parser import build_parser, parse

__all__ = ["main", "load_handler", "ImportFromStringError", "build_parser"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``geventws`` command; returns the exit status (usage errors
    exit with status 2 from argparse)."""
    args, given = parse(argv)
    try:
        if args.command == "serve":
            from .serve import run

            return run(args, given)
        from .client import run as run_client

        return run_client(args)
    except CommandError as exc:
        print(f"geventws: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
