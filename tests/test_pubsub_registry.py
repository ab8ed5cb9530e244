"""The topic registry with the in-process broker: subscriptions, publishing, exclusion,
validation; and real WebSocket clients receiving topics through ``broadcast``."""

from __future__ import annotations

import queue
from typing import Any, Union

import gevent
import gevent.event
import pytest
import websocket  # websocket-client

from geventws import Connection, Request
from geventws.pubsub import (
    BrokerUnavailable,
    LocalBroker,
    Topics,
    broker_from_url,
)


class Recorder:
    """A delivery callable that records what each subscriber got."""

    def __init__(self) -> None:
        self.got: dict[Any, list[tuple[Union[str, bytes], bool]]] = {}

    def __call__(self, subscribers: Any, message: Union[str, bytes], binary: bool) -> int:
        for subscriber in subscribers:
            self.got.setdefault(subscriber, []).append((message, binary))
        return len(subscribers)


def test_pubsub_publish_reaches_only_subscribers() -> None:
    recorder = Recorder()
    topics = Topics(deliver=recorder)
    topics.subscribe("a", "news")
    topics.subscribe("b", "news")
    topics.subscribe("c", "sports")
    assert topics.publish("news", "hello") == 2
    assert topics.publish("sports", b"\x00\x01", binary=True) == 1
    assert topics.publish("weather", "nobody") == 0
    assert recorder.got == {
        "a": [("hello", False)],
        "b": [("hello", False)],
        "c": [(b"\x00\x01", True)],
    }
    topics.close()


def test_pubsub_publish_excludes_the_publisher() -> None:
    recorder = Recorder()
    topics = Topics(deliver=recorder)
    topics.subscribe("a", "t")
    topics.subscribe("b", "t")
    assert topics.publish("t", "from a", exclude="a") == 1
    assert topics.publish("t", "from outsider", exclude="x") == 2
    assert recorder.got == {
        "a": [("from outsider", False)],
        "b": [("from a", False), ("from outsider", False)],
    }
    # The registry's own set is untouched by an exclusion.
    assert topics.subscribers("t") == {"a", "b"}


def test_pubsub_publish_to_a_lone_publisher_delivers_nothing() -> None:
    recorder = Recorder()
    topics = Topics(deliver=recorder)
    topics.subscribe("a", "t")
    assert topics.publish("t", "me", exclude="a") == 0
    assert recorder.got == {}


def test_pubsub_unsubscribe_and_introspection() -> None:
    recorder = Recorder()
    topics = Topics(deliver=recorder)
    topics.subscribe("a", "t1")
    topics.subscribe("a", "t2")
    topics.subscribe("a", "t2")  # twice is harmless
    topics.subscribe("b", "t2")
    assert topics.topics_of("a") == {"t1", "t2"}
    assert topics.subscribers("t2") == {"a", "b"}
    assert topics.topics == {"t1", "t2"}
    assert topics.stats()["subscriptions"] == 3
    assert topics.unsubscribe("a", "t2") is True
    assert topics.unsubscribe("a", "t2") is False
    assert topics.unsubscribe("z", "t2") is False
    assert topics.topics_of("a") == {"t1"}
    topics.unsubscribe_all("a")
    assert topics.topics_of("a") == frozenset()
    assert topics.topics == {"t2"}
    topics.unsubscribe_all("b")
    assert topics.topics == frozenset()
    assert topics.publish("t1", "gone") == 0
    assert recorder.got == {}
    stats = topics.stats()
    assert (stats["topics"], stats["subscriptions"], stats["healthy"]) == (0, 0, True)


@pytest.mark.parametrize("topic", ["", None, b"bytes", "\ud800"])
def test_pubsub_rejects_bad_topics(topic: Any) -> None:
    topics = Topics(deliver=Recorder())
    with pytest.raises(ValueError):
        topics.subscribe("a", topic)
    with pytest.raises(ValueError):
        topics.publish(topic, "x")
    assert topics.topics == frozenset()


def test_pubsub_invalid_text_is_refused_before_anything_is_sent() -> None:
    # With the real broadcast and no subscriber, the registry checks the text itself.
    topics = Topics()
    with pytest.raises(ValueError):
        topics.publish("t", b"\xff\xfe")
    with pytest.raises(ValueError):
        topics.publish("t", "\ud800")
    assert topics.publish("t", b"\xff\xfe", binary=True) == 0


def test_pubsub_closed_registry_refuses_subscriptions() -> None:
    topics = Topics(deliver=Recorder())
    topics.subscribe("a", "t")
    topics.close()
    topics.close()  # idempotent
    with pytest.raises(BrokerUnavailable):
        topics.subscribe("a", "t")
    assert topics.topics == frozenset()
    assert topics.broker.healthy is False
    assert topics.publish("t", "x") == 0


def test_pubsub_broker_from_url() -> None:
    assert isinstance(broker_from_url(None), LocalBroker)
    assert isinstance(broker_from_url("local"), LocalBroker)
    assert isinstance(Topics("local").broker, LocalBroker)
    with pytest.raises(ValueError):
        broker_from_url("http://example.com")
    with pytest.raises(ValueError):
        broker_from_url("local", prefix="x")
    from geventws.pubsub.redis import RedisBroker

    broker = broker_from_url("redis://127.0.0.1:1/0", prefix="app:")
    assert isinstance(broker, RedisBroker)
    assert broker.healthy is False  # not started: nothing connected
    broker.close()


def test_pubsub_topics_over_real_connections(serve: Any) -> None:
    """Connections subscribe through the registry; a message published by one reaches
    the others (through ``geventws.broadcast``) and not itself."""
    topics = Topics()
    errors: queue.Queue[BaseException] = queue.Queue()

    def handler(connection: Connection, request: Request) -> None:
        try:
            for topic in request.args.getlist("topic"):
                topics.subscribe(connection, topic)
            connection.send("subscribed")
            for message in connection:
                if isinstance(message, bytes):
                    name, _, data = message.partition(b"\n")
                    topics.publish(name.decode(), data, binary=True, exclude=connection)
                else:
                    topic, _, text = message.partition("\n")
                    topics.publish(topic, text, exclude=connection)
        except Exception as exc:  # reported to the test
            errors.put(exc)
        finally:
            topics.unsubscribe_all(connection)

    server = serve(handler)
    clients = []
    try:
        for query in ("topic=room&topic=all", "topic=room", "topic=other"):
            client = websocket.create_connection(f"{server.url}/?{query}", timeout=10)
            clients.append(client)
            assert client.recv() == "subscribed"
        first, second, third = clients
        first.send("room\nhéllo")
        assert second.recv() == "héllo"
        second.send_binary(b"room\n\x00\xff")
        assert first.recv() == b"\x00\xff"
        third.send("other\nalone")  # no other subscriber
        # Markers prove nothing else was queued for a client before them.
        third.send("all\nmarker")
        assert first.recv() == "marker"
        second.send("other\nfor third")
        assert third.recv() == "for third"
    finally:
        for client in clients:
            client.close()
    assert errors.empty(), errors.get()


def test_pubsub_concurrent_subscribers_in_one_hub() -> None:
    """Greenlets subscribing, then publishing, at once in one hub: each message reaches
    every other subscriber exactly once."""
    recorder = Recorder()
    topics = Topics(deliver=recorder)
    everyone_in = gevent.event.Event()

    def subscriber(n: int) -> None:
        topics.subscribe(n, "t")
        if len(topics.subscribers("t")) == 50:
            everyone_in.set()
        assert everyone_in.wait(10)
        topics.publish("t", f"{n}", exclude=n)

    gevent.joinall([gevent.spawn(subscriber, n) for n in range(50)], timeout=10, raise_error=True)
    assert topics.subscribers("t") == set(range(50))
    for n in range(50):
        assert sorted(recorder.got[n]) == sorted((str(m), False) for m in range(50) if m != n)
