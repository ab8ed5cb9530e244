"""Case-insensitive, multi-valued headers."""

from __future__ import annotations

import pytest

from geventws.core.headers import Headers, parse_token_list


def test_lookup_is_case_insensitive_and_keeps_order() -> None:
    h = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Host", "x")])
    assert h["SET-COOKIE"] == "a=1"
    assert h.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert "host" in h and "Origin" not in h and 3 not in h
    assert list(h) == ["set-cookie", "host"]
    assert len(h) == 3
    with pytest.raises(KeyError):
        h["missing"]
    assert h.get("missing", "d") == "d"


def test_setitem_replaces_all_values() -> None:
    h = Headers({"A": "1"})
    h.add("a", "2")
    h["A"] = "3"
    assert h.items() == [("A", "3")]
    h.remove("a")
    assert len(h) == 0


def test_equality_ignores_name_case() -> None:
    assert Headers([("A", "1")]) == Headers([("a", "1")])
    assert Headers([("A", "1")]) != Headers([("a", "2")])


def test_serialize() -> None:
    assert Headers([("A", "1"), ("B", "2")]).serialize() == b"A: 1\r\nB: 2\r\n"


def test_parse_token_list() -> None:
    assert parse_token_list(["keep-alive, Upgrade", " ,x"]) == ["keep-alive", "upgrade", "x"]
