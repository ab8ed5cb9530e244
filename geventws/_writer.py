"""The write side of a connection: one ordered queue of bytes, never a torn frame.

Theory of operation
-------------------
Everything a connection sends (data frames, pings, pongs, the close frame) is taken
out of the protocol *as it is produced* and appended here, whole frames in order, by
:meth:`Writer.queue`, which never blocks. The queue is then written:

* by the sending greenlet itself, with :meth:`Writer.write`, when it must block (past
  the high-water mark, so ``send()`` pushes back on a fast producer; in ``receive()``;
  in ``close()``), under one write lock and the caller's one :class:`Deadline`;
* otherwise once the sending greenlet yields (coalescing: everything queued in one
  turn of the loop goes out in one system call): :meth:`Writer.write_soon` registers a
  loop callback that writes what a plain socket takes right away, and hands the rest
  to a background greenlet.

Cancellation. Bytes are never lost from the middle of a frame. The only point where a
writer waits is for the socket to become writable, inside ``send``; gevent's ``send``
raises there (a :class:`gevent.Timeout`, ``kill()``, a deadline) *before* sending
anything, and the writer records what a ``send`` took as soon as it returns. What is
being written is kept as a memoryview of its unwritten rest (:attr:`_view`), ahead of
everything queued after it; an interrupted :meth:`write` leaves it there and schedules
a background write, so the frame is completed later, in order. Only a failed transport
drops the queue, and then the connection is failed too (the transport's
``write_failed`` turns the failure into a closed connection): never an open connection
over a corrupt stream.

``send_timeout``: a write that makes no progress for that long fails the connection
(the caller decides the close code: 1008).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import gevent
from gevent.lock import Semaphore

from ._deadline import NO_DEADLINE, Deadline
from ._sockets import raw_socket, send_nowait
from .exceptions import ConnectionClosed

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["HIGH_WATER", "Writer", "SharedBatch"]

#: Past this many bytes queued, ``send()`` writes at once (and so blocks while the peer
#: does not read).
HIGH_WATER = 65536
#: Queued chunks are joined into one write up to this size; larger ones are written
#: one by one, so large payloads are never copied.
_JOIN_LIMIT = 262144

Chunk = Union[bytes, memoryview]
#: Writers that got the same frames in one turn: the frames, the writers, their sockets.
_Group = tuple[list[Chunk], list["Writer"], list[int]]
_UNKNOWN: Any = object()


class SendTimeout(Exception):
    """Internal: a write made no progress for ``send_timeout`` seconds."""


class Writer:
    """The ordered output queue of one connection and the ways it gets written.

    ``sock`` is the gevent socket (plain or TLS), ``raw`` its OS socket when plain
    (:func:`~geventws._sockets.raw_socket`; found here if not given); ``send_timeout``
    bounds a wait without progress (``None``: none). ``owner`` is the connection's
    :class:`~geventws._transport.Transport`: its ``write_failed(exc)`` is called once
    when the transport fails (an :class:`OSError`, or :class:`SendTimeout`) and returns
    the :class:`~geventws.ConnectionClosed` that writers then raise (a copy each). (Once
    the link is over, its socket closed and the writer failed, ``owner`` is set to
    ``None``.)
    """

    __slots__ = (
        "_callback",
        "_chunks",
        "_failure",
        "_flusher",
        "_lock",
        "_loop",
        "_owner",
        "_sock",
        "_view",
        "batched",
        "buffered",
        "raw",
        "send_timeout",
    )

    def __init__(
        self,
        sock: Any,
        send_timeout: Optional[float],
        owner: Optional[Transport],
        raw: Any = _UNKNOWN,
    ) -> None:
        self._sock = sock
        # A plain gevent socket wraps a non-blocking OS socket that can be written
        # without waiting (and without gevent's per-call overhead); TLS can't.
        raw = raw_socket(sock) if raw is _UNKNOWN else raw
        #: The plain OS socket under ``sock``, or ``None`` for TLS.
        self.raw: Any = raw
        self.send_timeout = send_timeout
        self._owner = owner
        self._lock: Optional[Semaphore] = None  # made when a write must wait
        self._chunks: list[Chunk] = []
        self._view: Optional[memoryview] = None  # the unwritten rest being written
        #: Bytes queued and not written yet.
        self.buffered = 0
        #: In this turn's :class:`SharedBatch` (written by its callback).
        self.batched = False
        self._callback: Any = None
        self._flusher: Any = None
        self._failure: Optional[ConnectionClosed] = None
        self._loop = gevent.get_hub().loop

    # -- queueing -------------------------------------------------------------------

    def queue(self, chunks: list[bytes]) -> None:
        """Append ``chunks`` (whole frames, in order) after everything queued; never
        blocks. Dropped once the transport failed."""
        if self._failure is not None:
            return
        if len(chunks) == 1:
            chunk = chunks[0]
            self._chunks.append(chunk)
            self.buffered += len(chunk)
        else:
            self._chunks.extend(chunks)
            self.buffered += sum(map(len, chunks))

    def queue_rest(self, frame: Chunk, sent: int) -> None:
        """Queue what a direct write of ``frame`` left (it wrote ``sent`` bytes while
        nothing was queued: see :class:`SharedBatch`)."""
        self.queue([memoryview(frame)[sent:] if sent else frame])  # type: ignore[list-item]

    def _locked(self) -> bool:
        lock = self._lock
        return lock is not None and bool(lock.locked())

    @property
    def idle(self) -> bool:
        """Nothing queued or being written: a frame may go to the socket directly."""
        return not self.buffered and not self._locked()

    @property
    def failed(self) -> bool:
        """Whether the transport failed: nothing more will be written."""
        return self._failure is not None

    # -- writing ----------------------------------------------------------------------

    def write(self, deadline: Deadline = NO_DEADLINE) -> None:
        """Write everything queued, in order, blocking as needed.

        Raises the connection's :class:`~geventws.ConnectionClosed` when the transport
        fails (or made no progress for ``send_timeout``), and :class:`TimeoutError`
        when ``deadline`` passes. Safe to cancel (``deadline``, a
        :class:`gevent.Timeout`, ``kill()``): what was not written stays queued, in
        order, and is written in the background.
        """
        if self._failure is not None:
            raise self._raised()
        if not self.buffered:
            return
        if self.raw is not None and not self._locked():
            if self.write_nowait():
                return
            if self._failure is not None:
                raise self._raised()
        lock = self._lock
        if lock is None:
            lock = self._lock = Semaphore()
        if not lock.acquire(timeout=deadline.remaining()):
            raise deadline.error()
        try:
            self._write_locked(deadline)
        finally:
            lock.release()
            if self.buffered and self._failure is None:
                self.write_soon()  # interrupted: finish in the background

    def _write_locked(self, deadline: Deadline) -> None:
        sock = self._sock
        send_timeout = self.send_timeout
        while True:
            view = self._next()
            if view is None:
                return
            remaining = deadline.remaining()
            if send_timeout is not None and (remaining is None or send_timeout < remaining):
                timer = gevent.Timeout._start_new_or_dummy(send_timeout, SendTimeout)
            else:
                timer = gevent.Timeout._start_new_or_dummy(remaining, deadline.error())
            try:
                sent = sock.send(view)
            except TimeoutError:
                raise  # the caller's deadline (an OSError too): the rest stays queued
            except (OSError, SendTimeout) as exc:
                self._fail(exc)
                raise self._raised() from exc
            finally:
                timer.close()
            self._sent(view, sent)

    def write_nowait(self) -> bool:
        """Write what a plain socket takes right now, without waiting; True when
        nothing is left. Only while nobody holds the write lock (no greenlet switches
        here, so none can start meanwhile)."""
        raw = self.raw
        if raw is None or self._failure is not None or self._locked():
            return False
        raw_send = raw.send
        while True:
            view = self._next()
            if view is None:
                return True
            try:
                sent = raw_send(view)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._fail(exc)
                return False
            self._sent(view, sent)
            if self._view is not None:
                return False  # the socket took part of it: it is full

    def make_room(self, limit: int) -> bool:
        """Whether fewer than ``limit`` bytes wait once what a plain socket takes right
        now is written (never blocks). Bytes queued in this turn of the loop had no
        chance to be written yet (a burst of broadcasts, see :class:`SharedBatch`):
        only what the socket refuses makes a slow consumer. (TLS can't be written
        without waiting: there, everything queued counts.) May fail the transport (a
        dead socket), which ends the connection at once."""
        if self.buffered >= limit:
            self.write_nowait()
        return self.buffered < limit

    def _next(self) -> Optional[memoryview]:
        """What to write next: the rest in flight, else the queued chunks (joined while
        small), recorded as in flight *before* anything can block."""
        view = self._view
        if view is not None:
            return view
        chunks = self._chunks
        if not chunks:
            return None
        if len(chunks) == 1:
            data: Chunk = chunks[0]
            chunks.clear()
        elif self.buffered <= _JOIN_LIMIT:
            data = b"".join(chunks)
            chunks.clear()
        else:
            data = chunks.pop(0)
        view = self._view = memoryview(data)
        return view

    def _sent(self, view: memoryview, sent: int) -> None:
        self.buffered -= sent
        self._view = view[sent:] if sent < len(view) else None

    def write_soon(self) -> None:
        """Have everything queued written without blocking the caller: once the
        calling greenlet yields (so what it queues meanwhile goes in the same write),
        directly for a plain socket that takes it, else by a background greenlet."""
        if self._callback is None and self._failure is None:
            self._callback = self._loop.run_callback(self._write_in_loop)

    def _write_in_loop(self) -> None:
        # A loop callback: must not block nor raise.
        self._callback = None
        if not self.buffered or self._failure is not None or self._locked():
            return  # nothing to do, or the lock holder writes it (and reschedules)
        if self.write_nowait() or self._failure is not None:
            return
        if self._flusher is None:
            self._flusher = gevent.spawn_raw(self._write_in_background)

    def _write_in_background(self) -> None:
        try:
            self.write()
        except (ConnectionClosed, TimeoutError):
            pass  # the connection reports its own end
        finally:
            self._flusher = None

    def _fail(self, exc: Exception) -> None:
        """The transport failed: drop everything (the connection is over) and let the
        connection record why (it gives what writers raise)."""
        if self._failure is None:
            self._chunks.clear()
            self._view = None
            self.buffered = 0
            assert self._owner is not None  # (released with the writer failed)
            self._failure = self._owner.write_failed(exc)

    def _raised(self) -> ConnectionClosed:
        """What a writer raises: a copy of the failure, so the one kept here is never
        raised. It then never holds the frames of a raise (this writer among them: a
        reference cycle), and each writer gets a traceback of its own."""
        failure = self._failure
        assert failure is not None
        return type(failure)(failure.code, failure.reason)

    def fail(self, closed: ConnectionClosed) -> None:
        """The connection ended without this writer noticing a failure: drop the queue;
        writers blocked or to come raise ``closed``."""
        if self._failure is None:
            self._chunks.clear()
            self._view = None
            self.buffered = 0
            self._failure = closed

    def stop(self) -> None:
        """Cancel a pending loop callback (the connection is released)."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None


class SharedBatch:
    """The shared frames of one turn of a hub's loop, written together: for
    broadcasts and topics.

    :meth:`current` is the hub's batch. :meth:`add` queues a frame on a writer, in
    order with everything else the writer sends; an idle writer on a plain socket joins
    the batch, any other is written soon as usual. Once the greenlet that broadcasts
    yields, one loop callback (:meth:`_flush`) writes every writer of the batch: the
    frames a writer got in this turn go out in *one* non-blocking ``send``, and writers
    that got the same frames share one joined copy and one batch of ``send`` calls made
    from C (:func:`~geventws._sockets.send_nowait`). Several broadcasts in one turn (a
    publisher's burst read in one ``recv``) therefore cost one system call per client,
    not one per message, with ``TCP_NODELAY`` kept on; a delivery waits at most for the
    broadcasting greenlet to yield.

    Descriptors are looked up in the callback, not when the frame is added, so a
    connection closed meanwhile is skipped (its writer failed) and never confused with
    a socket that reused its number. Whatever a socket doesn't take stays queued on its
    writer and is written in the background, like any other write.
    """

    __slots__ = ("_callback", "_loop", "_writers")

    _batches: ClassVar[weakref.WeakKeyDictionary[Any, SharedBatch]] = weakref.WeakKeyDictionary()

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._writers: list[Writer] = []
        self._callback: Any = None

    @classmethod
    def current(cls) -> SharedBatch:
        """The batch of the current hub."""
        hub = gevent.get_hub()
        batch = cls._batches.get(hub)
        if batch is None:
            batch = cls._batches[hub] = cls(hub.loop)
        return batch

    def add(self, writer: Writer, frame: bytes) -> None:
        """Queue ``frame`` on ``writer``; written in this batch or soon after."""
        self.add_all([writer], [frame])

    def add_all(self, writers: list[Writer], frames: list[bytes]) -> int:
        """:meth:`add` each frame of ``frames`` to the writer at the same index; return
        how many were queued (a failed writer drops its frame)."""
        # Writer.queue() and the checks inlined: this runs once per delivery.
        joined = self._writers
        queued = 0
        for writer, frame in zip(writers, frames, strict=True):
            if writer._failure is not None:
                continue
            queued += 1
            writer._chunks.append(frame)
            before = writer.buffered
            writer.buffered = before + len(frame)
            if writer.batched:
                continue  # already in this turn's batch: its frames go out together
            lock = writer._lock
            if before == 0 and writer.raw is not None and (lock is None or not lock.locked()):
                writer.batched = True
                joined.append(writer)
            else:
                writer.write_soon()
        if joined and self._callback is None:
            self._callback = self._loop.run_callback(self._flush)
        return queued

    def _flush(self) -> None:
        # A loop callback: must not block nor raise, and doesn't switch greenlets.
        self._callback = None
        writers, self._writers = self._writers, []
        groups: dict[Any, _Group] = {}
        # The last single frame seen and its group: most writers of a turn got just the
        # same one broadcast, so most find their group without a lookup.
        last: object = None
        last_group: _Group = ([], [], [])
        for writer in writers:
            writer.batched = False
            buffered = writer.buffered
            if not buffered:
                continue  # written meanwhile (Writer.make_room): nothing left
            chunks = writer._chunks
            lock = writer._lock
            raw = writer.raw
            # Once the gevent socket is closed its OS socket is replaced (and the number
            # may soon belong to another socket): the identity check sees it.
            fd = raw.fileno() if writer._sock._sock is raw and writer._failure is None else -1
            if (
                fd < 0
                or not chunks
                or writer._view is not None
                or (lock is not None and lock.locked())
                or buffered > _JOIN_LIMIT
            ):
                writer.write_soon()  # changed since it joined: its own way
                continue
            if len(chunks) == 1 and chunks[0] is last:
                group = last_group
            else:
                key: Any = id(chunks[0]) if len(chunks) == 1 else tuple(map(id, chunks))
                group = groups.get(key) or groups.setdefault(key, (chunks, [], []))
                if len(chunks) == 1:
                    last, last_group = chunks[0], group
            group[1].append(writer)
            group[2].append(fd)
            writer._chunks = []
            writer.buffered = 0
        for chunks, group_writers, fds in groups.values():
            data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            try:
                incomplete = send_nowait(fds, data)
            except Exception:  # pragma: no cover - a descriptor out of range
                incomplete = [(index, 0) for index in range(len(fds))]
            for index, sent in incomplete:
                writer = group_writers[index]
                # Lost (sent < 0): the writer's own write finds the error and fails.
                writer.queue_rest(data, max(sent, 0))
                writer.write_soon()
