"""HTTP heads, header fields and header-value lists: serialize → parse gives back what
was serialized."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geventws.core.deflate import parse_extensions
from geventws.core.headers import Headers, parse_token_list
from geventws.core.http11 import (
    find_head_end,
    parse_request,
    parse_response,
    serialize_request,
    serialize_response,
)
from geventws.core.request import Request

from .strategies import checks, header_values, tokens

fields = st.lists(st.tuples(tokens, header_values), max_size=20)
targets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
reasons = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30)


@checks
@given(method=tokens, target=targets, items=fields, body=st.binary(max_size=20))
def test_request_head_round_trip(
    method: str, target: str, items: list[tuple[str, str]], body: bytes
) -> None:
    head = serialize_request(method, target, items)
    assert find_head_end(head + body) == len(head)
    parsed = parse_request(head)
    assert (parsed.method, parsed.target) == (method, target)
    assert parsed.headers.items() == items


@checks
@given(status=st.integers(100, 999), reason=reasons, items=fields, body=st.binary(max_size=20))
def test_response_head_round_trip(
    status: int, reason: str, items: list[tuple[str, str]], body: bytes
) -> None:
    data = serialize_response(status, items, body, reason=reason)
    end = find_head_end(data)
    assert data[end:] == body
    parsed = parse_response(data[:end])
    assert (parsed.status, parsed.reason) == (status, reason)
    assert parsed.headers == Headers(items) and parsed.headers.items() == items


@checks
@given(items=fields, name=tokens)
def test_headers_lookups_ignore_case_and_keep_order(
    items: list[tuple[str, str]], name: str
) -> None:
    headers = Headers(items)
    expected = [value for key, value in items if key.lower() == name.lower()]
    assert headers.get_all(name.upper()) == headers.get_all(name.lower()) == expected
    assert (name in headers) is bool(expected)
    assert headers.serialize() == "".join(f"{k}: {v}\r\n" for k, v in items).encode("latin-1")


@checks
@given(items=st.lists(tokens, max_size=10), spaces=st.sampled_from(["", " ", "\t", " , "]))
def test_token_lists_round_trip(items: list[str], spaces: str) -> None:
    value = ("," + spaces).join(items)
    assert parse_token_list([value]) == [item.lower() for item in items]
    headers = Headers([("Sec-WebSocket-Protocol", value)])
    assert Request("GET", "/", headers).subprotocols == items


param_values = st.one_of(
    st.none(),
    tokens,
    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=10),
)
extensions = st.lists(
    st.tuples(tokens, st.lists(st.tuples(tokens, param_values), max_size=4)), min_size=1, max_size=4
)


def _serialize_extensions(items: list[tuple[str, list[tuple[str, object]]]]) -> str:
    out = []
    for name, params in items:
        parts = [name]
        for param, value in params:
            if value is None:
                parts.append(param)
            else:
                text = str(value).replace("\\", "\\\\").replace('"', '\\"')
                parts.append(f'{param}="{text}"')
        out.append("; ".join(parts))
    return ", ".join(out)


@checks
@given(items=extensions)
def test_extension_lists_round_trip(items: list[tuple[str, list[tuple[str, object]]]]) -> None:
    parsed = parse_extensions([_serialize_extensions(items)])
    assert parsed == [
        (name.lower(), [(param.lower(), value) for param, value in params])
        for name, params in items
    ]
