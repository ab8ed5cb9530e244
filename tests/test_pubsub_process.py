"""Two real processes (``geventws serve``, monkey-patched as in production) sharing
topics through a real redis-server, with WebSocket clients (websocket-client) as the
subscribers.

:func:`handle` is the application both processes serve: the query's ``topic`` values
are subscribed (then ``"subscribed"`` is sent); a text message ``{"publish": topic,
"data": text}`` or a binary one ``topic + b"\\n" + data`` is published to every other
subscriber, and ``{"subscribe": topic}`` subscribes (then ``"subscribed"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pytest
import websocket  # websocket-client

from geventws import Connection, Request
from geventws.pubsub import Topics

from .redis_server import RedisServer, redis_servers
from .utils import start_serve_command

_TOPICS: Optional[Topics] = None


def handle(connection: Connection, request: Request) -> None:
    global _TOPICS
    if _TOPICS is None:
        _TOPICS = Topics(os.environ["GEVENTWS_TEST_BROKER"])
    topics = _TOPICS
    try:
        for topic in request.args.getlist("topic"):
            topics.subscribe(connection, topic)
        connection.send("subscribed")
        for message in connection:
            if isinstance(message, bytes):
                name, _, data = message.partition(b"\n")
                topics.publish(name.decode(), data, binary=True, exclude=connection)
                continue
            command = json.loads(message)
            if "publish" in command:
                topics.publish(command["publish"], command["data"], exclude=connection)
            elif "subscribe" in command:
                topics.subscribe(connection, command["subscribe"])
                connection.send("subscribed")
    finally:
        topics.unsubscribe_all(connection)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    yield from redis_servers(tmp_path)


@pytest.fixture
def processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], int]]:
    """Start ``geventws serve tests.test_pubsub_process:handle`` processes with a broker
    URL; return their ports. Stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[Any] = []

    def start(broker_url: str) -> int:
        monkeypatch.setenv("GEVENTWS_TEST_BROKER", broker_url)
        log = tmp_path / f"serve{len(started)}.log"
        process, port = start_serve_command(["tests.test_pubsub_process:handle"], log)
        started.append(process)
        return port

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(15)
        except Exception:
            process.kill()
            process.wait(5)


class Client:
    """A websocket-client connection to one process, subscribed to ``topics``."""

    def __init__(self, port: int, *topics: str) -> None:
        query = "&".join(f"topic={t}" for t in topics)
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/?{query}", timeout=10)
        assert self.ws.recv() == "subscribed"

    def publish(self, topic: str, data: Union[str, bytes]) -> None:
        if isinstance(data, bytes):
            self.ws.send_binary(topic.encode() + b"\n" + data)
        else:
            self.ws.send(json.dumps({"publish": topic, "data": data}))

    def subscribe(self, topic: str) -> None:
        self.ws.send(json.dumps({"subscribe": topic}))
        assert self.ws.recv() == "subscribed"

    def receive(self, count: int) -> list[Union[str, bytes]]:
        """The next ``count`` messages (each within the socket's 10 s timeout)."""
        return [self.ws.recv() for _ in range(count)]

    def close(self) -> None:
        self.ws.close()


def test_pubsub_processes_fan_out_once_in_order(
    redis_server: Callable[..., RedisServer], processes: Callable[[str], int]
) -> None:
    server = redis_server()
    port_a, port_b = processes(server.url), processes(server.url)
    clients: list[Client] = []
    try:
        a1, a2 = Client(port_a, "t"), Client(port_a, "t")
        b1, b_other = Client(port_b, "t"), Client(port_b, "other")
        clients += [a1, a2, b1, b_other]
        for i in range(50):
            a1.publish("t", f"a{i}")
            b1.publish("t", f"b{i}".encode())
        # Markers last: anything duplicated would come before them.
        a1.publish("t", "end-a")
        b1.publish("t", "end-b")
        from_a = [f"a{i}" for i in range(50)] + ["end-a"]
        from_b = [f"b{i}".encode() for i in range(50)] + ["end-b"]
        got_a2 = a2.receive(102)  # both publishers: the local one and the remote one
        assert [m for m in got_a2 if m in from_a] == from_a
        assert [m for m in got_a2 if m in from_b] == from_b
        assert a1.receive(51) == from_b  # not its own messages
        assert b1.receive(51) == from_a
        # The subscriber of another topic got none of this.
        a2.publish("other", "for other")
        assert b_other.receive(1) == ["for other"]
        # Nothing was left over for a1 and b1 either.
        b_other.publish("t", "final")
        assert a1.receive(1) == ["final"]
        assert b1.receive(1) == ["final"]
    finally:
        for client in clients:
            client.close()


def test_pubsub_processes_subscribe_then_publish_always_arrives(
    redis_server: Callable[..., RedisServer], processes: Callable[[str], int]
) -> None:
    server = redis_server()
    port_a, port_b = processes(server.url), processes(server.url)
    publisher, subscriber = Client(port_a), Client(port_b)
    try:
        for i in range(20):
            topic = f"fresh{i}"
            subscriber.subscribe(topic)  # answered once Redis confirmed
            publisher.publish(topic, f"m{i}")  # right away
            assert subscriber.receive(1) == [f"m{i}"]
    finally:
        publisher.close()
        subscriber.close()
