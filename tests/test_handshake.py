"""Opening handshake rules (RFC 6455 §4)."""

from __future__ import annotations

import pytest

from geventws.core.handshake import (
    accept_key,
    accept_response,
    check_request,
    check_response,
    client_request,
    generate_key,
    reject_response,
    select_subprotocol,
)
from geventws.core.http11 import parse_request, parse_response
from geventws.exceptions import InvalidRequest, InvalidResponse

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(*lines: str, method: str = "GET") -> bytes:
    base = [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
    ]
    names = {line.split(":")[0].lower() for line in lines}
    kept = [line for line in base if line.split(":")[0].lower() not in names]
    fields = [line for line in kept + list(lines) if not line.endswith(": <drop>")]
    return (f"{method} /chat HTTP/1.1\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode()


def status(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    with pytest.raises(InvalidRequest) as info:
        check_request(parse_request(raw))
    return info.value.status, info.value.headers


def test_accept_key_rfc_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_generate_key_is_16_random_bytes() -> None:
    import base64

    assert len(base64.b64decode(generate_key())) == 16
    assert generate_key() != generate_key()


def test_valid_request() -> None:
    assert check_request(parse_request(request())) == KEY


def test_token_lists_are_case_insensitive() -> None:
    raw = request("Upgrade: WebSocket", "Connection: keep-alive, UPGRADE")
    assert check_request(parse_request(raw)) == KEY


def test_not_an_upgrade_is_426_with_version() -> None:
    code, headers = status(request("Upgrade: <drop>", "Connection: <drop>"))
    assert code == 426 and ("Sec-WebSocket-Version", "13") in headers


def test_connection_without_upgrade_token_is_426() -> None:
    assert status(request("Connection: keep-alive"))[0] == 426


def test_other_version_is_426_with_version_13() -> None:
    code, headers = status(request("Sec-WebSocket-Version: 8"))
    assert code == 426 and ("Sec-WebSocket-Version", "13") in headers


def test_missing_version_is_400() -> None:
    assert status(request("Sec-WebSocket-Version: <drop>"))[0] == 400


def test_method_other_than_get_is_405() -> None:
    code, headers = status(request(method="POST"))
    assert code == 405 and ("Allow", "GET") in headers


def test_missing_host_is_400() -> None:
    assert status(request("Host: <drop>"))[0] == 400


@pytest.mark.parametrize("key", ["<drop>", "not base64!", "c2hvcnQ=", "dGhlIHNhbXBsZSBub25jZQ==x"])
def test_bad_key_is_400(key: str) -> None:
    assert status(request(f"Sec-WebSocket-Key: {key}"))[0] == 400


def test_two_keys_are_400() -> None:
    raw = request().replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {KEY}\r\n\r\n".encode())
    assert status(raw)[0] == 400


def test_select_subprotocol_uses_server_preference() -> None:
    assert select_subprotocol(["b", "a"], ["a", "b"]) == "a"
    assert select_subprotocol(["c"], ["a"]) is None


def test_accept_response() -> None:
    head = parse_response(accept_response(KEY, "chat", headers={"X-A": "1"}))
    assert head.status == 101
    assert head.headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert head.headers["Sec-WebSocket-Protocol"] == "chat"
    assert head.headers["X-A"] == "1"


def test_reject_response_has_length_and_close() -> None:
    raw = reject_response(403, "no")
    head_end = raw.index(b"\r\n\r\n") + 4
    head = parse_response(raw[:head_end])
    assert head.status == 403 and head.headers["Content-Length"] == "2"
    assert head.headers["Connection"] == "close" and raw[head_end:] == b"no"


def test_client_request_and_response_roundtrip() -> None:
    key = generate_key()
    raw = client_request("h:1", "/p?q", key, origin="http://o", subprotocols=["a", "b"])
    head = parse_request(raw)
    assert check_request(head) == key
    assert head.headers["Sec-WebSocket-Protocol"] == "a, b"
    response = parse_response(accept_response(key, "b"))
    assert check_response(response, key, ["a", "b"]) == "b"


def test_check_response_refusals() -> None:
    key = generate_key()
    with pytest.raises(InvalidResponse) as info:
        check_response(parse_response(b"HTTP/1.1 403 Forbidden\r\n\r\n"), key)
    assert info.value.status == 403
    with pytest.raises(InvalidResponse):
        check_response(parse_response(accept_response(generate_key())), key)
    with pytest.raises(InvalidResponse):
        check_response(parse_response(accept_response(key, "x")), key, ["a"])
