"""One deadline for everything a blocking call does.

A call such as ``receive(timeout=0.5)`` may wait several times (for the write lock, for
a flush, for the socket to become readable); each wait gets what is *left* of one
:class:`Deadline`, so the call as a whole returns on time.
"""

from __future__ import annotations

import time
from typing import Optional

import gevent

__all__ = ["Deadline", "NO_DEADLINE"]


class Deadline:
    """A point in time ``timeout`` seconds from now (never, for ``None``).

    ``message`` is the text of the :class:`TimeoutError` raised when it passes.
    """

    __slots__ = ("_end", "message")

    def __init__(self, timeout: Optional[float], message: str = "timed out") -> None:
        self._end = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.message = message

    @property
    def unbounded(self) -> bool:
        """Whether this deadline never passes."""
        return self._end is None

    def remaining(self) -> Optional[float]:
        """Seconds left (0 once passed), ``None`` for no deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def timeout(self) -> gevent.Timeout:
        """A started :class:`gevent.Timeout` for what is left, raising
        :class:`TimeoutError`; a no-op one for no deadline. Use it as a context manager
        around one wait."""
        if self._end is None:
            return gevent.Timeout._start_new_or_dummy(None)
        return gevent.Timeout._start_new_or_dummy(
            max(0.0, self._end - time.monotonic()), TimeoutError(self.message)
        )

    def error(self) -> TimeoutError:
        """The exception that says this deadline passed."""
        return TimeoutError(self.message)


#: The deadline of calls without a timeout.
NO_DEADLINE = Deadline(None)
