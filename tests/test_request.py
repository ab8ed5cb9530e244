"""The request object the handshake hook reads."""

from __future__ import annotations

from geventws.core.headers import Headers
from geventws.core.request import Request


def make(target: str = "/", **headers: str) -> Request:
    return Request(
        "GET",
        target,
        Headers([(k.replace("_", "-"), v) for k, v in headers.items()]),
        ("1.2.3.4", 5),
    )


def test_path_and_multi_valued_args() -> None:
    r = make("/room%201?a=1&a=2&b=&c=%C3%A9")
    assert r.path == "/room 1"
    assert r.query_string == "a=1&a=2&b=&c=%C3%A9"
    assert r.args["a"] == "1" and r.args.getlist("a") == ["1", "2"]
    assert r.args["b"] == "" and r.args["c"] == "é"
    assert r.args.getlist("missing") == [] and "a" in r.args and len(r.args) == 3


def test_origin_host_cookies_subprotocols() -> None:
    r = make(
        Origin="https://example.com",
        Host="h",
        Cookie="session=abc; theme=dark",
        Sec_WebSocket_Protocol="chat.v2, Chat",
    )
    assert r.origin == "https://example.com" and r.host == "h"
    assert r.cookies == {"session": "abc", "theme": "dark"}
    assert r.subprotocols == ["chat.v2", "Chat"]
    assert r.remote_address == ("1.2.3.4", 5)


def test_missing_origin_is_none_and_bad_cookies_skipped() -> None:
    r = make(Cookie='good=1; bad"=x')
    assert r.origin is None
    assert r.cookies.get("good") == "1"
