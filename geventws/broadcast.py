"""Sending one message to many connections: :func:`broadcast`.

The message is framed once (:class:`~geventws.core.shared.SharedMessage`) and compressed
once per permessage-deflate setting; each open server connection takes the frame its
protocol picks (:meth:`Protocol.send_shared
<geventws.core.protocol.Protocol.send_shared>`; any other connection goes through
:meth:`Connection.send_shared <geventws.Connection.send_shared>`), and the idle plain
sockets get everything broadcast to them in one turn of the loop in one non-blocking
``send``, made from C for all the clients that got the same frames
(:class:`~geventws._writer.SharedBatch`). Nothing here waits for a client.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Union

from ._writer import HIGH_WATER, SharedBatch, Writer
from .connection import Connection
from .core.events import OPEN
from .core.frames import BytesLike
from .core.shared import SharedMessage
from .exceptions import InvalidState

__all__ = ["broadcast"]

logger = logging.getLogger("geventws.server")


def broadcast(
    connections: Iterable[Connection],
    message: Union[str, BytesLike],
    binary: bool = False,
    *,
    limit: int = HIGH_WATER,
    compress: Optional[bool] = None,
) -> int:
    """Send ``message`` to every open connection in ``connections``; return how many
    it was queued to.

    The frame is built once and queued on each connection; it is written as soon as
    the calling greenlet yields, together with whatever else is broadcast before that
    (one ``send`` per client for a burst of messages); what a socket can't take then is
    written in the background. A connection with ``limit`` bytes (64 KiB by default)
    still waiting once its socket took what it can is a slow consumer and is *skipped*
    for this message (on a plain socket a burst within one turn is never held against
    a client that reads; over TLS the burst counts), as is one in the middle of
    sending a fragmented message (its frames can't be interrupted by another message).
    Never blocks on a slow client and never raises for a connection's failure (logged
    at DEBUG on ``geventws.server``). Raises :class:`ValueError` for bytes sent as text
    that aren't valid UTF-8.

    With compression, the message is compressed *once* from a fresh deflate stream for
    all the connections that negotiated the same settings (``compress`` and the
    threshold as in :meth:`Connection.send`); each of those connections then starts its
    next message without the earlier context, since its peer's window changed.
    """
    shared = SharedMessage(message, binary, compress)
    batch = SharedBatch.current()
    # The common case inlined (this runs once per delivery): an open server connection
    # with room in its queue takes the frame its protocol picks; the batch writes it.
    # Anything else goes through Connection.send_shared, which says why it is skipped
    # (its checks are the ones inlined here: keep the two in step).
    # A snapshot of the connections: making room may find a dead socket, and ending
    # that connection takes it out of its topics' sets at once.
    writers: list[Writer] = []
    frames: list[bytes] = []
    queued = 0
    try:
        for connection in tuple(connections):
            try:
                transport = connection._transport
                if transport is not None:
                    protocol = transport.protocol
                    writer = transport.writer
                    if (
                        protocol.state is OPEN
                        and not protocol._client
                        and (writer.buffered < limit or writer.make_room(limit))
                    ):
                        try:
                            frames.append(protocol.send_shared(shared))
                        except InvalidState:  # closing, or sending a fragmented message
                            continue
                        writers.append(writer)
                        continue
                if connection.send_shared(shared, limit=limit, batch=batch):
                    queued += 1
            except Exception as exc:  # one bad connection must not stop the broadcast
                logger.debug("broadcast to %r failed: %s", connection, exc)
    finally:  # what was taken from the protocols is queued, whatever happens
        queued += batch.add_all(writers, frames)
    return queued
