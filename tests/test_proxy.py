"""Trusted proxy headers: the parser with byte-literal requests and hypothesis, then the
server, ``geventws serve`` (plain and ``--wsgi``) and the gunicorn worker on real
sockets, with headers sent by independent clients."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from geventws.core.headers import Headers
from geventws.core.http11 import parse_request
from geventws.core.proxy import (
    ProxyHeadersMiddleware,
    TrustedProxies,
    apply_to_environ,
    check_proxy_headers,
    resolve,
)
from geventws.exceptions import InvalidRequest

from .utils import start_serve_command, wait_for

LOCAL = ("127.0.0.1", 50000)
DEFAULT = TrustedProxies()


def head(*fields: bytes) -> Headers:
    """The headers of a request head written as bytes, parsed as the server does."""
    raw = b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"".join(f + b"\r\n" for f in fields)
    return parse_request(raw + b"\r\n").headers


# -- the trusted set ----------------------------------------------------------------


def test_proxy_trusted_set_addresses_networks_ipv6_and_star() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8,2001:db8::/32 ,::1")
    assert "127.0.0.1" in trusted and "10.200.3.4" in trusted and "::1" in trusted
    assert "2001:db8:ffff::7" in trusted
    assert "127.0.0.2" not in trusted and "11.0.0.1" not in trusted and "::2" not in trusted
    assert "::ffff:10.1.1.1" in trusted  # IPv4-mapped matches its IPv4 form
    assert "not-an-ip" not in trusted and "" not in trusted
    assert TrustedProxies(["192.0.2.1", "192.0.2.2"]).networks[1].num_addresses == 1
    star = TrustedProxies("*")
    assert star.everyone and "203.0.113.9" in star and star.trusts_peer(("8.8.8.8", 1))
    assert "127.0.0.1" in DEFAULT and "::1" not in DEFAULT  # the default: 127.0.0.1 only
    assert repr(TrustedProxies("10.0.0.0/8")) == "TrustedProxies('10.0.0.0/8')"


@pytest.mark.parametrize("spec", ["localhost", "10.0.0.0/33", "1.2.3", "10.0.0.1/8/8", "::g"])
def test_proxy_trusted_set_rejects_what_is_not_an_address(spec: str) -> None:
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        TrustedProxies(f"127.0.0.1,{spec}")


def test_proxy_peer_without_ip_address_is_trusted_like_gunicorn() -> None:
    assert DEFAULT.trusts_peer(None) and DEFAULT.trusts_peer(("",))
    assert DEFAULT.trusts_peer(("/run/app.sock",))
    assert DEFAULT.trusts_peer(("::ffff:127.0.0.1", 5, 0, 0))
    assert not DEFAULT.trusts_peer(("192.0.2.1", 5))
    address, _ = resolve("", head(b"X-Forwarded-For: 192.0.2.7"), DEFAULT)  # type: ignore[arg-type]
    assert address == ("192.0.2.7", 0)


def test_proxy_headers_setting() -> None:
    assert check_proxy_headers("X-Forwarded") == "x-forwarded"
    assert check_proxy_headers("forwarded") == "forwarded"
    assert check_proxy_headers("none") is None and check_proxy_headers(None) is None
    with pytest.raises(ValueError, match="proxy_headers"):
        check_proxy_headers("x-real-ip")


# -- X-Forwarded-For / X-Forwarded-Proto ----------------------------------------------


def test_proxy_x_forwarded_single_proxy() -> None:
    headers = head(b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert resolve(LOCAL, headers, DEFAULT) == (("203.0.113.7", 0), "wss")


def test_proxy_untrusted_peer_is_ignored() -> None:
    headers = head(b"X-Forwarded-For: 203.0.113.7", b"X-Forwarded-Proto: https")
    assert resolve(("192.0.2.1", 4), headers, DEFAULT) == (("192.0.2.1", 4), "ws")
    assert resolve(LOCAL, headers, DEFAULT, proxy_headers=None) == (LOCAL, "ws")


def test_proxy_chain_rightmost_untrusted_is_the_client() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    # The client sent a forged entry; the edge proxy appended the client's real address.
    headers = head(b"X-Forwarded-For: 6.6.6.6, 198.51.100.4, 10.0.0.9, 10.1.1.1")
    assert resolve(LOCAL, headers, trusted)[0] == ("198.51.100.4", 0)
    # Garbage to the left of the client is never even parsed.
    headers = head(b"X-Forwarded-For: ]]not[[ an address, 198.51.100.4, 10.0.0.9")
    assert resolve(LOCAL, headers, trusted)[0] == ("198.51.100.4", 0)


def test_proxy_chain_all_trusted_gives_the_leftmost() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    headers = head(b"X-Forwarded-For: 10.0.0.1, 10.0.0.2")
    assert resolve(LOCAL, headers, trusted)[0] == ("10.0.0.1", 0)


def test_proxy_repeated_fields_form_one_list() -> None:
    headers = head(b"X-Forwarded-For: 198.51.100.4", b"X-Forwarded-For: 127.0.0.1")
    assert resolve(LOCAL, headers, DEFAULT)[0] == ("198.51.100.4", 0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"192.0.2.1:4711", ("192.0.2.1", 4711)),
        (b"2001:db8::1", ("2001:db8::1", 0)),
        (b"[2001:db8::1]", ("2001:db8::1", 0)),
        (b"[2001:DB8:0::1]:443", ("2001:db8::1", 443)),
        (b"::ffff:192.0.2.9", ("192.0.2.9", 0)),
        (b" 192.0.2.1 , ", ("192.0.2.1", 0)),
    ],
)
def test_proxy_x_forwarded_for_address_forms(value: bytes, expected: tuple[str, int]) -> None:
    assert resolve(LOCAL, head(b"X-Forwarded-For: " + value), DEFAULT)[0] == expected


@pytest.mark.parametrize(
    "value",
    [
        b"unknown",
        b"_hidden",
        b"192.0.2.1:99999",
        b"192.0.2.1:80x",
        b"192.0.2.1:" + b"9" * 5000,
        b"[192.0.2.1]:80",
        b"[2001:db8::1",
        b"[2001:db8::1]x",
        b"fe80::1%eth0",
        b"256.1.1.1",
        b'"192.0.2.1"',
        b"192.0.2.1, \xff\xfe",
    ],
)
def test_proxy_malformed_x_forwarded_for_is_ignored(value: bytes) -> None:
    assert resolve(LOCAL, head(b"X-Forwarded-For: " + value), DEFAULT) == (LOCAL, "ws")


@pytest.mark.parametrize(
    ("fields", "scheme"),
    [
        ((b"X-Forwarded-Proto: https",), "wss"),
        ((b"X-Forwarded-Proto: HTTP",), "ws"),
        ((b"X-Forwarded-Proto: wss",), "wss"),
        ((b"X-Forwarded-Proto: gopher",), "ws"),
        # As many values as hops: the client's position (index 0 here).
        ((b"X-Forwarded-For: 198.51.100.4, 127.0.0.1", b"X-Forwarded-Proto: https, http"), "wss"),
        # Neither one value nor one per hop: ignored.
        ((b"X-Forwarded-For: 198.51.100.4", b"X-Forwarded-Proto: https, http"), "ws"),
    ],
)
def test_proxy_x_forwarded_proto(fields: tuple[bytes, ...], scheme: str) -> None:
    assert resolve(LOCAL, head(*fields), DEFAULT)[1] == scheme


def test_proxy_tls_server_scheme_kept_without_header() -> None:
    assert resolve(LOCAL, head(), DEFAULT, scheme="wss") == (LOCAL, "wss")
    assert resolve(LOCAL, head(b"X-Forwarded-Proto: http"), DEFAULT, scheme="wss")[1] == "ws"


# -- Forwarded (RFC 7239) -------------------------------------------------------------


def forwarded(value: bytes, trusted: TrustedProxies = DEFAULT) -> tuple[Any, str]:
    return resolve(LOCAL, head(b"Forwarded: " + value), trusted, proxy_headers="forwarded")


def test_proxy_forwarded_rfc7239_examples() -> None:
    assert forwarded(b'for="_gazonk"') == (LOCAL, "ws")  # obfuscated: not an address
    assert forwarded(b'For="[2001:db8:cafe::17]:4711"') == (("2001:db8:cafe::17", 4711), "ws")
    assert forwarded(b"for=192.0.2.60;proto=http;by=203.0.113.43") == (("192.0.2.60", 0), "ws")
    assert forwarded(b"for=192.0.2.43, for=198.51.100.17")[0] == ("198.51.100.17", 0)
    assert forwarded(b"proto=https;for=192.0.2.43") == (("192.0.2.43", 0), "wss")


def test_proxy_forwarded_chain_uses_the_client_element_proto() -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    value = b'for=6.6.6.6;proto=http, for=198.51.100.4;proto=https, for="10.0.0.2:3000";proto=http'
    assert forwarded(value, trusted) == (("198.51.100.4", 0), "wss")
    assert forwarded(b"for=10.0.0.1;proto=https, for=10.0.0.2", trusted) == (
        ("10.0.0.1", 0),
        "wss",
    )


def test_proxy_forwarded_quoted_separators_and_escapes() -> None:
    value = b'for=198.51.100.4;ext="a, b; \\"c\\"";proto="https"'
    assert forwarded(value) == (("198.51.100.4", 0), "wss")
    assert forwarded(b", for=198.51.100.4 ,") == (("198.51.100.4", 0), "ws")


@pytest.mark.parametrize(
    "value",
    [
        b"for=unknown",
        b"for=198.51.100.4;for=203.0.113.1",  # a parameter twice
        b"for=198.51.100.4;proto",  # not name=value
        b"for 198.51.100.4",
        b'for="198.51.100.4',  # unterminated quote
        b"by=127.0.0.1",  # no for=
        b"for=198.51.100.4;;",
        b"for=198.51.100.4, garbage",  # malformed at the right end
    ],
)
def test_proxy_malformed_forwarded_is_ignored(value: bytes) -> None:
    assert forwarded(value) == (LOCAL, "ws")


def test_proxy_only_the_configured_family_is_read() -> None:
    """A client behind a proxy that appends to X-Forwarded-For can send any Forwarded
    header it likes, and the reverse: only the family the proxies set counts."""
    headers = head(b"Forwarded: for=6.6.6.6;proto=https", b"X-Forwarded-For: 198.51.100.4")
    assert resolve(LOCAL, headers, DEFAULT) == (("198.51.100.4", 0), "ws")
    headers = head(b"Forwarded: for=198.51.100.4", b"X-Forwarded-For: 6.6.6.6")
    assert resolve(LOCAL, headers, DEFAULT, proxy_headers="forwarded")[0] == ("198.51.100.4", 0)


# -- properties -----------------------------------------------------------------------

header_value = st.binary(max_size=120).map(
    lambda raw: bytes(b for b in raw if b == 9 or 0x20 <= b <= 0x7E or b >= 0x80).strip(b" \t")
)
ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    xff=header_value,
    xfp=header_value,
    fwd=header_value,
    mode=st.sampled_from(["x-forwarded", "forwarded", None]),
    spec=st.sampled_from(["127.0.0.1", "*", "0.0.0.0/0, ::/0", "10.0.0.0/8"]),
)
def test_proxy_never_raises_and_returns_an_address_or_the_peer(
    xff: bytes, xfp: bytes, fwd: bytes, mode: Optional[str], spec: str
) -> None:
    try:
        headers = head(
            b"X-Forwarded-For: " + xff, b"X-Forwarded-Proto: " + xfp, b"Forwarded: " + fwd
        )
    except InvalidRequest:  # not a valid field value: the server would answer 400
        return
    address, scheme = resolve(LOCAL, headers, TrustedProxies(spec), proxy_headers=mode)
    assert scheme in ("ws", "wss")
    if address != LOCAL:
        assert address is not None and len(address) == 2
        ipaddress.ip_address(address[0])
        assert 0 <= address[1] <= 65535


@settings(max_examples=200, deadline=None)
@given(
    junk=st.lists(header_value, max_size=3),
    client=ips,
    proxies=st.lists(st.ip_addresses(v=4, network="10.0.0.0/8").map(str), max_size=4),
)
def test_proxy_rightmost_untrusted_whatever_the_client_prepends(
    junk: list[bytes], client: str, proxies: list[str]
) -> None:
    trusted = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    expected = ipaddress.ip_address(client)
    if isinstance(expected, ipaddress.IPv6Address) and expected.ipv4_mapped is not None:
        expected = expected.ipv4_mapped
    if str(expected) in trusted:
        return  # the client is a trusted proxy: covered by the all-trusted test
    chain = [j.replace(b",", b"") for j in junk] + [client.encode(), *map(str.encode, proxies)]
    try:
        headers = head(b"X-Forwarded-For: " + b", ".join(chain))
    except InvalidRequest:
        return
    assert resolve(LOCAL, headers, trusted)[0] == (str(expected), 0)
    # The same chain through RFC 7239 (IPv6 quoted and bracketed).
    nodes = [f'"[{a}]"' if ":" in a else a for a in [client, *proxies]]
    value = ", ".join(f"for={node}" for node in nodes).encode()
    assert forwarded(b"for=_junk, " + value, trusted)[0] == (str(expected), 0)


# -- WSGI environ -----------------------------------------------------------------------


def environ(**extra: str) -> dict[str, Any]:
    return {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "http", **extra}


def test_proxy_environ_rewritten_from_trusted_peer_only() -> None:
    env = environ(HTTP_X_FORWARDED_FOR="198.51.100.4:7", HTTP_X_FORWARDED_PROTO="https")
    apply_to_environ(env, DEFAULT)
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["wsgi.url_scheme"]) == (
        "198.51.100.4",
        "7",
        "https",
    )
    env = environ(REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="198.51.100.4")
    apply_to_environ(env, DEFAULT)
    assert env["REMOTE_ADDR"] == "192.0.2.1" and env["REMOTE_PORT"] == "40000"
    env = environ(HTTP_FORWARDED="for=198.51.100.4;proto=https", HTTP_X_FORWARDED_FOR="6.6.6.6")
    apply_to_environ(env, DEFAULT, "forwarded")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("198.51.100.4", "https")


def test_proxy_wsgi_middleware_before_the_application() -> None:
    seen: list[tuple[str, str]] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append((env["REMOTE_ADDR"], env["wsgi.url_scheme"]))
        return []

    wrapped = ProxyHeadersMiddleware(app, "127.0.0.0/8")
    wrapped(environ(HTTP_X_FORWARDED_FOR="198.51.100.4", HTTP_X_FORWARDED_PROTO="https"), None)
    assert seen == [("198.51.100.4", "https")]
    with pytest.raises(ValueError, match="proxy_headers"):
        ProxyHeadersMiddleware(app, proxy_headers="x-real-ip")


# -- real sockets -----------------------------------------------------------------------


def report(connection: Any, request: Any) -> None:
    """A handler that tells the client what it sees."""
    connection.send(json.dumps([list(request.remote_address)[:2], request.scheme]))


HANDLER_MODULE = textwrap.dedent(
    """
    import json

    def report(connection, request):
        connection.send(json.dumps([list(request.remote_address)[:2], request.scheme]))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['REMOTE_ADDR']} {environ['wsgi.url_scheme']}".encode()]

    from geventws.wsgi import WebSocketMiddleware
    combined = WebSocketMiddleware(app, {"/ws": report})
    """
)


def ask(url: str, **headers: str) -> list[Any]:
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        return json.loads(ws.recv(timeout=10))  # type: ignore[no-any-return]


def test_proxy_server_sees_the_client_behind_a_trusted_proxy(serve: Any) -> None:
    server = serve(report)
    headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.4", "X-Forwarded-Proto": "https"}
    assert ask(server.url, **headers) == [["198.51.100.4", 0], "wss"]
    peer, scheme = ask(server.url)
    assert peer[0] == "127.0.0.1" and peer[1] > 0 and scheme == "ws"


def test_proxy_server_ignores_headers_from_untrusted_peers(serve: Any) -> None:
    server = serve(report, forwarded_allow_ips="10.0.0.0/8")
    peer, scheme = ask(server.url, **{"X-Forwarded-For": "198.51.100.4"})
    assert peer[0] == "127.0.0.1" and scheme == "ws"


def test_proxy_server_rfc7239_mode(serve: Any) -> None:
    server = serve(report, proxy_headers="forwarded", forwarded_allow_ips="*")
    headers = {"Forwarded": 'for="[2001:db8::5]:4711";proto=https', "X-Forwarded-For": "6.6.6.6"}
    assert ask(server.url, **headers) == [["2001:db8::5", 4711], "wss"]


def test_proxy_server_rejects_invalid_settings() -> None:
    from geventws import WebSocketServer

    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        WebSocketServer(("127.0.0.1", 0), report, forwarded_allow_ips="proxy.local")
    with pytest.raises(ValueError, match="proxy_headers"):
        WebSocketServer(("127.0.0.1", 0), report, proxy_headers="x-real-ip")


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "proxyapp.py").write_text(HANDLER_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_proxy_cli_flags(app_dir: Path, processes: list[Any]) -> None:
    process, port = start_serve_command(
        [
            "proxyapp:report",
            "--forwarded-allow-ips",
            "127.0.0.0/8, ::1",
            "--proxy-headers",
            "forwarded",
        ],
        app_dir / "serve.log",
    )
    processes.append(process)
    headers = {"Forwarded": "for=198.51.100.4;proto=https", "X-Forwarded-For": "6.6.6.6"}
    assert ask(f"ws://127.0.0.1:{port}/", **headers) == [["198.51.100.4", 0], "wss"]


def test_proxy_cli_environment_variable(
    app_dir: Path, processes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.9.9.9")
    process, port = start_serve_command(["proxyapp:report"], app_dir / "serve.log")
    processes.append(process)
    peer, _ = ask(f"ws://127.0.0.1:{port}/", **{"X-Forwarded-For": "198.51.100.4"})
    assert peer[0] == "127.0.0.1"  # 127.0.0.1 is no longer trusted


def test_proxy_cli_invalid_setting_is_a_one_line_error(app_dir: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "geventws", "serve", "proxyapp:report", "--port", "0"),
            *("--forwarded-allow-ips", "proxy.local"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "geventws serve: error: argument --forwarded-allow-ips: 'proxy.local' is not an IP "
        "address, a network or '*'\n"
    )


def test_proxy_cli_wsgi_app_and_handler_see_the_client(app_dir: Path, processes: list[Any]) -> None:
    process, port = start_serve_command(
        ["proxyapp:report", "--wsgi", "proxyapp:app"], app_dir / "serve.log"
    )
    processes.append(process)
    headers = {"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Proto": "https"}
    assert ask(f"ws://127.0.0.1:{port}/ws", **headers) == [["198.51.100.4", 0], "wss"]
    page = requests.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=10)
    assert page.text == "198.51.100.4 https"


def test_proxy_gunicorn_worker_uses_gunicorn_forwarded_allow_ips(
    app_dir: Path, processes: list[Any]
) -> None:
    log = app_dir / "gunicorn.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "-k", "geventws.worker.GeventWebSocketWorker"),
                *("-b", "127.0.0.1:0", "-w", "1", "--forwarded-allow-ips", "127.0.0.1"),
                *("--access-logfile", "-", "proxyapp:combined"),
            ],
            cwd=app_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    processes.append(process)
    port = 0

    def ready() -> bool:
        nonlocal port
        text = log.read_text()
        match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
        port = int(match.group(1)) if match else 0
        return (bool(port) and "Booting worker" in text) or process.poll() is not None

    assert wait_for(ready, timeout=60) and port, log.read_text()
    headers = {"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Proto": "https"}
    assert ask(f"ws://127.0.0.1:{port}/ws", **headers) == [["198.51.100.4", 0], "wss"]
    page = requests.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=10)
    assert page.text == "198.51.100.4 https"
    assert wait_for(lambda: "198.51.100.4" in log.read_text(), timeout=10)  # access log
    # Without the header, the peer.
    page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert page.text == "127.0.0.1 http"
