"""The errors of the ``geventws`` command: one line, and an exit status."""

from __future__ import annotations

__all__ = ["CommandError", "USAGE", "FAILURE", "INTERRUPTED"]

#: Exit status of a usage error: a bad flag or value, or a handler that can't be imported.
USAGE = 2
#: Exit status when the command can't do its job: a port in use, TLS files, a connection.
FAILURE = 1
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class CommandError(Exception):
    """Ends the command with ``geventws: error: MESSAGE`` on standard error and exit
    status ``status`` (:data:`FAILURE` unless told)."""

    def __init__(self, message: str, status: int = FAILURE) -> None:
        super().__init__(message)
        self.status = status
