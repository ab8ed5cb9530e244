"""The Redis broker against a real redis-server, each "process" a Topics + RedisBroker
in a gevent hub of its own thread: fan-out, ordering, confirmations, outages (killed,
paused, connections killed by Redis), restored subscriptions, logs, TLS, credentials,
and no greenlet or socket left after close().

The process-level scenario (two ``geventws serve`` processes and WebSocket clients) is
in test_pubsub_process.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import gevent
import pytest

from geventws.pubsub import BrokerUnavailable, Topics
from geventws.pubsub.redis import RedisBroker

from .redis_server import HubThread, RedisServer, redis_servers
from .utils import ThrowawayCA, fd_count, wait_for

#: Short intervals, so that outages are noticed and recovered from quickly.
FAST = {"health_interval": 0.3, "backoff_base": 0.05, "backoff_max": 0.3, "timeout": 2.0}

Message = tuple[Union[str, bytes], bool]


class Node:
    """A :class:`Topics` with a :class:`RedisBroker` in a hub thread of its own: a
    stand-in for a process. Subscribers are strings; what they get is recorded."""

    def __init__(self, hub: HubThread, url: str, **options: Any) -> None:
        self.hub = hub
        self.got: dict[str, list[Message]] = {}
        self.topics: Topics = hub.call(
            lambda: Topics(RedisBroker(url, **{**FAST, **options}), deliver=self._deliver)
        )
        hub.call(self.topics.start)

    def _deliver(self, subscribers: Any, message: Union[str, bytes], binary: bool) -> int:
        # Local deliveries get the str, remote ones the bytes: record text as str.
        if not binary and isinstance(message, bytes):
            message = message.decode("utf-8")
        for subscriber in subscribers:
            self.got.setdefault(subscriber, []).append((message, binary))
        return len(subscribers)

    def subscribe(self, subscriber: str, topic: str, timeout: float = 5.0) -> None:
        self.hub.call(lambda: self.topics.subscribe(subscriber, topic, timeout), timeout + 5)

    def unsubscribe(self, subscriber: str, topic: str) -> bool:
        return self.hub.call(lambda: self.topics.unsubscribe(subscriber, topic))

    def publish(
        self, topic: str, message: Union[str, bytes], binary: bool = False, exclude: Any = None
    ) -> int:
        return self.hub.call(lambda: self.topics.publish(topic, message, binary, exclude))

    def received(self, subscriber: str) -> list[Message]:
        return self.hub.call(lambda: list(self.got.get(subscriber, ())))

    def stats(self) -> dict[str, Any]:
        return self.hub.call(self.topics.stats)

    @property
    def healthy(self) -> bool:
        return self.hub.call(lambda: self.topics.broker.healthy)

    def close(self) -> None:
        self.hub.call(lambda: self.topics.close(5), 15)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    yield from redis_servers(tmp_path)


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Start nodes; afterwards close them and check that no greenlet or socket is left."""
    before = fd_count()
    started: list[Node] = []

    def start(url: str, **options: Any) -> Node:
        hub = HubThread().start()
        try:
            node = Node(hub, url, **options)
        except Exception:
            hub.stop()
            raise
        started.append(node)
        return node

    yield start
    for node in started:
        node.close()
        node.hub.stop()
        assert node.hub.leftover_greenlets == [], node.hub.leftover_greenlets
    assert wait_for(lambda: fd_count() <= before), f"descriptors leaked: {before} -> {fd_count()}"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    assert wait_for(predicate, timeout), f"timed out waiting until {what}"


def broker_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "geventws.pubsub" and r.levelno == level]


# -- fan-out ---------------------------------------------------------------------------


def test_redis_two_nodes_deliver_everything_once_in_order(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("a1", "t")
    a.subscribe("a2", "t")
    b.subscribe("b1", "t")
    b.subscribe("z", "other")
    assert server.numsub("geventws:t") == 2  # one subscription per node, not per subscriber
    for i in range(100):
        assert a.publish("t", f"A{i}") == 2
        assert b.publish("t", f"B{i}".encode(), binary=True) == 1
    from_a = [(f"A{i}", False) for i in range(100)]
    from_b = [(f"B{i}".encode(), True) for i in range(100)]
    targets = [(a, "a1"), (a, "a2"), (b, "b1")]
    wait_until(lambda: all(len(n.received(s)) >= 200 for n, s in targets), "200 messages each")
    # A marker after everything: nothing else (no duplicate) may arrive before it.
    b.publish("t", "end")
    wait_until(lambda: all(len(n.received(s)) >= 201 for n, s in targets), "the markers")
    for node, subscriber in targets:
        got = node.received(subscriber)
        assert len(got) == 201 and got[-1] == ("end", False)
        assert [m for m in got if m[0] in {x for x, _ in from_a}] == from_a
        assert [m for m in got if m[1]] == from_b
    # Not subscribed to "t": nothing of it.
    a.publish("other", "only this")
    wait_until(lambda: b.received("z") != [], "the message on 'other'")
    assert b.received("z") == [("only this", False)]
    stats_a = a.stats()
    assert stats_a["echoes"] >= 100  # its own messages came back from Redis and were skipped
    assert stats_a["published"] == 101 and stats_a["dropped"] == 0
    assert b.stats()["received"] >= 100


def test_redis_subscribe_then_publish_from_another_node_always_arrives(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    for i in range(30):
        topic = f"fresh-{i}"
        b.subscribe("s", topic)  # returns once Redis confirmed
        a.publish(topic, f"m{i}")  # right away, no sleep
    wait_until(lambda: len(b.received("s")) >= 30, "30 messages")
    assert b.received("s") == [(f"m{i}", False) for i in range(30)]


def test_redis_first_subscribers_share_one_confirmation(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a = nodes(server.url)
    with server.client() as client:
        before = client.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0)

    def many() -> None:
        greenlets = [gevent.spawn(a.topics.subscribe, f"s{n}", "shared", 5.0) for n in range(20)]
        gevent.joinall(greenlets, timeout=10, raise_error=True)
        assert all(g.successful() for g in greenlets)

    a.hub.call(many)
    with server.client() as client:
        after = client.info("commandstats")["cmdstat_subscribe"]["calls"]
    assert after - before == 1
    assert server.numsub("geventws:shared") == 1


def test_redis_subscribe_unsubscribe_subscribe_in_quick_succession(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    """SUBSCRIBE, UNSUBSCRIBE, SUBSCRIBE in flight at once: the last subscriber returns
    when the last SUBSCRIBE is answered, the first one is released, the channel stays."""
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)

    def churn() -> bool:
        first = gevent.spawn(a.topics.subscribe, "s1", "t", 5.0)
        gevent.sleep(0)  # first sends SUBSCRIBE and waits
        a.topics.unsubscribe("s1", "t")  # UNSUBSCRIBE; first is released
        a.topics.subscribe("s2", "t", 5.0)  # SUBSCRIBE again, waits for its own reply
        first.join(5)
        return bool(first.successful())

    assert a.hub.call(churn) is True
    b.publish("t", "after the churn")
    wait_until(lambda: a.received("s2") == [("after the churn", False)], "delivery")
    assert server.numsub("geventws:t") == 1
    assert a.received("s1") == []


def test_redis_unsubscribing_the_last_local_subscriber_leaves_the_channel(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("s1", "t")
    a.subscribe("s2", "t")
    a.subscribe("s1", "marker")
    assert a.unsubscribe("s1", "t") is True
    assert server.numsub("geventws:t") == 1  # s2 is still there
    assert a.unsubscribe("s2", "t") is True
    wait_until(lambda: server.numsub("geventws:t") == 0, "Redis forgets the channel")
    b.publish("t", "nobody")
    b.publish("marker", "marker")
    wait_until(lambda: a.received("s1") != [], "the marker")
    assert a.received("s1") == [("marker", False)]
    assert a.received("s2") == []


def test_redis_prefix_separates_applications(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    other_a, other_b = (
        nodes(server.url, prefix="other-app:"),
        nodes(server.url, prefix="other-app:"),
    )
    a.subscribe("s", "t")
    other_a.subscribe("s", "t")
    with server.client() as client:
        assert set(client.pubsub_channels()) == {b"geventws:t", b"other-app:t"}
    b.publish("t", "for geventws")
    other_b.publish("t", "for other-app")
    b.publish("t", "end")
    other_b.publish("t", "end")
    wait_until(lambda: len(a.received("s")) == 2 and len(other_a.received("s")) == 2, "delivery")
    assert a.received("s") == [("for geventws", False), ("end", False)]
    assert other_a.received("s") == [("for other-app", False), ("end", False)]


def test_redis_malformed_messages_are_counted_and_skipped(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("s", "t")
    with server.client() as client:
        client.publish("geventws:t", b"not ours")  # too short, wrong version
        client.publish("geventws:t", b"\x70" + b"x" * 20)  # unknown format version
        client.publish("geventws:t", b"\x10" + b"o" * 8 + b"\xff")  # text, not UTF-8
    b.publish("t", "fine")
    wait_until(lambda: a.received("s") != [], "the good message")
    assert a.received("s") == [("fine", False)]
    stats = a.stats()
    assert stats["malformed"] == 2
    assert stats["delivery_errors"] == 1  # the registry's delivery refused the bad text
    assert stats["healthy"] is True


# -- outages ---------------------------------------------------------------------------


def test_redis_killed_mid_stream_then_restarted(
    redis_server: Callable[..., RedisServer],
    nodes: Callable[..., Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="geventws.pubsub")
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("a1", "t")
    a.subscribe("a2", "t")
    b.subscribe("b1", "t")
    assert a.healthy and b.healthy
    for i in range(20):
        a.publish("t", f"before{i}")
    wait_until(lambda: len(b.received("b1")) == 20, "the first messages")

    server.kill()
    # Publishing keeps returning (hub.call has a deadline) and local delivery goes on.
    for i in range(50):
        assert a.publish("t", f"during{i}", exclude="a2") == 1
    assert [m for m, _ in a.received("a1")][-50:] == [f"during{i}" for i in range(50)]
    wait_until(lambda: not a.healthy and not b.healthy, "both brokers notice the loss")
    a.publish("t", "dropped for sure")
    stats = a.stats()
    assert stats["healthy"] is False and stats["outages"] == 1 and stats["dropped"] >= 1
    assert stats["last_error"]
    # A subscription during the outage: BrokerUnavailable at once, kept locally.
    with pytest.raises(BrokerUnavailable):
        b.subscribe("b2", "t", timeout=5)
    assert b.hub.call(lambda: b.topics.topics_of("b2")) == {"t"}

    server.start()  # same port
    wait_until(lambda: a.healthy and b.healthy, "both brokers recover")
    assert server.numsub("geventws:t") == 2  # both restored their subscription
    a.publish("t", "after from a")
    b.publish("t", "after from b")
    wait_until(lambda: ("after from a", False) in b.received("b2"), "b2 gets a's message")
    wait_until(lambda: ("after from b", False) in a.received("a1"), "a1 gets b's message")
    assert ("after from a", False) in b.received("b1")
    assert ("after from b", False) in a.received("a2")
    stats = a.stats()
    assert (stats["outages"], stats["recoveries"]) == (1, 1)
    # Exactly one line each way per broker, whatever the number of retries.
    assert len(broker_records(caplog, logging.WARNING)) == 2
    assert len(broker_records(caplog, logging.INFO)) == 2
    assert all("lost" in r.getMessage() for r in broker_records(caplog, logging.WARNING))
    assert all("is back" in r.getMessage() for r in broker_records(caplog, logging.INFO))


def test_redis_paused_server_does_not_block_the_hub(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    """A Redis that stops answering (SIGSTOP: connections stay open) blocks nobody: the
    writer waits on a gevent socket, the hub keeps running, publishing returns, and
    the silence is found by the health check."""
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("s", "t")
    b.subscribe("s", "t")
    server.pause()
    try:
        a.publish("t", "into the void")  # the writer now waits for Redis' reply
        # The hub still runs other greenlets.
        assert a.hub.call(lambda: "still running", timeout=5) == "still running"
        with pytest.raises(BrokerUnavailable):
            a.subscribe("s", "new-topic", timeout=0.2)  # no confirmation in time
        assert a.publish("t", "local only", exclude="nobody") == 1
        wait_until(lambda: not a.healthy, "the health check notices the silence")
    finally:
        server.resume()
    wait_until(lambda: a.healthy and b.healthy, "recovery after SIGCONT")
    # The subscription that timed out was kept and restored.
    assert server.numsub("geventws:new-topic") == 1
    b.publish("new-topic", "arrives")
    wait_until(lambda: ("arrives", False) in a.received("s"), "the restored topic delivers")


def test_redis_connection_killed_by_redis_is_restored(
    redis_server: Callable[..., RedisServer],
    nodes: Callable[..., Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What Redis does to a subscriber over ``client-output-buffer-limit pubsub``."""
    caplog.set_level(logging.INFO, logger="geventws.pubsub")
    server = redis_server()
    a, b = nodes(server.url), nodes(server.url)
    a.subscribe("s", "t")
    with server.client() as client:
        # Only a's subscriber connection is in pub/sub mode (b subscribed to nothing).
        assert client.client_kill_filter(_type="pubsub") == 1
    wait_until(lambda: a.stats()["recoveries"] == 1, "a reconnects")
    wait_until(lambda: a.healthy and server.numsub("geventws:t") == 1, "restored")
    b.publish("t", "after the kill")
    wait_until(lambda: a.received("s") == [("after the kill", False)], "delivery again")
    assert len(broker_records(caplog, logging.WARNING)) == 1
    assert len(broker_records(caplog, logging.INFO)) == 1
    assert b.stats()["outages"] == 0


def test_redis_unsubscribed_during_outage_is_not_restored(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a = nodes(server.url)
    a.subscribe("s", "kept")
    a.subscribe("s", "dropped")
    server.kill()
    wait_until(lambda: not a.healthy, "the loss is noticed")
    assert a.unsubscribe("s", "dropped") is True
    with pytest.raises(BrokerUnavailable):
        a.subscribe("s", "added", timeout=5)
    server.start()
    wait_until(lambda: a.healthy, "recovery")
    assert server.numsub("geventws:kept") == 1
    assert server.numsub("geventws:dropped") == 0
    assert server.numsub("geventws:added") == 1


def test_redis_unreachable_at_start(
    redis_server: Callable[..., RedisServer],
    nodes: Callable[..., Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="geventws.pubsub")
    server = redis_server()
    server.kill()
    a = nodes(server.url)
    wait_until(lambda: a.stats()["outages"] == 1, "the failure is noticed")
    with pytest.raises(BrokerUnavailable):
        a.subscribe("s", "t", timeout=5)
    assert a.publish("t", "local", exclude="x") == 1  # local delivery works
    assert a.received("s") == [("local", False)]
    server.start()
    wait_until(lambda: a.healthy, "connected at last")
    assert server.numsub("geventws:t") == 1
    warnings = broker_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert len(broker_records(caplog, logging.INFO)) == 1


def test_redis_publish_queue_is_bounded(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a = nodes(server.url, max_pending=10, max_pending_bytes=1 << 20, health_interval=30)
    a.subscribe("s", "t")
    server.pause()
    try:

        def flood() -> None:
            for i in range(1000):
                a.topics.publish("t", f"m{i}")

        a.hub.call(flood)
        stats = a.stats()
        assert stats["pending"] <= 10
        # The flood never yields to the writer: the queue fills and the rest is dropped.
        assert stats["overflows"] == 1000 - 10
        assert stats["dropped"] >= stats["overflows"]
        # Bytes are bounded too: one message over the byte bound is dropped.
        overflows = stats["overflows"]
        a.publish("t", "x" * (2 << 20))
        assert a.stats()["overflows"] == overflows + 1
        assert len(a.received("s")) == 1001  # local delivery never waited
    finally:
        server.resume()


# -- connecting: credentials, TLS, Unix socket, bad options ----------------------------


def test_redis_password_and_database_from_the_url(
    redis_server: Callable[..., RedisServer],
    nodes: Callable[..., Node],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="geventws.pubsub")
    server = redis_server(
        "--requirepass", "s3cret", "--user", "alice", "on", ">pw", "~*", "&*", "+@all"
    )
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    a, b = nodes(url), nodes(f"redis://alice:pw@127.0.0.1:{server.port}/5")
    a.subscribe("s", "t")
    b.publish("t", "authenticated")  # pub/sub ignores the database number
    wait_until(lambda: a.received("s") == [("authenticated", False)], "delivery")
    bad = nodes(f"redis://:wrong@127.0.0.1:{server.port}/0")
    wait_until(lambda: bad.stats()["outages"] == 1, "the refusal is noticed")
    stats = bad.stats()
    assert stats["healthy"] is False
    assert "auth" in stats["last_error"].lower() or "pass" in stats["last_error"].lower()
    warnings = broker_records(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "s3cret" not in warnings[0].getMessage() and "wrong" not in warnings[0].getMessage()


def test_redis_tls(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node], tmp_path: Path
) -> None:
    ca = ThrowawayCA("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    ca.cert.cert_chain_pems[0].write_to_path(str(certfile))
    ca.cert.private_key_pem.write_to_path(str(keyfile))
    ca.ca.cert_pem.write_to_path(str(cafile))
    server = redis_server(tls=(certfile, keyfile))
    url = f"{server.url}?ssl_ca_certs={cafile}"
    a, b = nodes(url), nodes(url)
    a.subscribe("s", "t")
    b.publish("t", b"\x00over tls", binary=True)
    wait_until(lambda: a.received("s") == [(b"\x00over tls", True)], "delivery over TLS")
    # Without the CA the certificate is refused.
    untrusting = nodes(server.url)
    wait_until(lambda: untrusting.stats()["outages"] == 1, "the refusal is noticed")
    assert "CERTIFICATE" in untrusting.stats()["last_error"].upper()


def test_redis_unix_socket(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a, b = nodes(f"unix://{server.unix_path}"), nodes(server.url)
    a.subscribe("s", "t")
    b.publish("t", "via tcp")
    wait_until(lambda: a.received("s") == [("via tcp", False)], "delivery")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379", "redis://127.0.0.1:6379/0?no_such_option=1", "redis://h:notaport"],
)
def test_redis_bad_url(url: str) -> None:
    with pytest.raises(ValueError):
        RedisBroker(url)


def test_redis_closed_broker(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a = nodes(server.url)
    a.subscribe("s", "t")
    a.close()
    wait_until(lambda: server.numsub("geventws:t") == 0, "the connection is closed")
    with server.client() as client:
        names = [c.get("name") for c in client.client_list()]
    assert "geventws-subscriber" not in names and "geventws-publisher" not in names
    with pytest.raises(BrokerUnavailable):
        a.subscribe("s", "t")
    assert a.publish("t", "after close") == 0
    a.close()  # idempotent


def test_redis_close_releases_a_waiting_subscriber(
    redis_server: Callable[..., RedisServer], nodes: Callable[..., Node]
) -> None:
    server = redis_server()
    a = nodes(server.url)
    server.pause()
    try:
        waiting = a.hub.submit(lambda: a.topics.subscribe("s", "t", 30))
        # Close from another greenlet while the subscriber waits for Redis.
        a.close()
        error: Optional[BaseException] = waiting.exception(10)
        assert isinstance(error, BrokerUnavailable)
    finally:
        server.resume()
