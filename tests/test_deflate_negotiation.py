"""permessage-deflate (RFC 7692) negotiation in the sans-I/O core: the
``Sec-WebSocket-Extensions`` grammar, the server's choice among offers and the client's
check of the answer (the codec and the protocol with compression are in
test_deflate.py)."""

from __future__ import annotations

from typing import Optional

import pytest

from geventws.core.deflate import (
    DeflateOptions,
    client_offer,
    deflate_options,
    negotiate_client,
    negotiate_server,
    parse_extensions,
)
from geventws.core.headers import Headers
from geventws.exceptions import InvalidRequest, InvalidResponse

OPTIONS = DeflateOptions()


def offer(*values: str) -> Headers:
    return Headers([("Sec-WebSocket-Extensions", value) for value in values])


# -- header grammar --------------------------------------------------------------------


def test_parse_extensions_grammar() -> None:
    assert parse_extensions(
        [
            "permessage-deflate; client_max_window_bits, Permessage-Deflate ; "
            'Server_Max_Window_Bits="10";x',
            " , foo ,",
        ]
    ) == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("permessage-deflate", [("server_max_window_bits", "10"), ("x", None)]),
        ("foo", []),
    ]


@pytest.mark.parametrize("value", ["a;", "a b", "a;b=", 'a;b="x', "a;=1", ";a", "a,,b c"])
def test_parse_extensions_rejects_bad_syntax(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions([value])


# -- server negotiation (RFC 7692 §7.1) ------------------------------------------------

PMD = "permessage-deflate"


@pytest.mark.parametrize(
    ("offered", "agreed"),
    [
        ([PMD], PMD),
        ([f"{PMD}; client_max_window_bits"], f"{PMD}; client_max_window_bits=12"),
        ([f"{PMD}; client_max_window_bits=10"], f"{PMD}; client_max_window_bits=10"),
        ([f"{PMD}; client_max_window_bits=15"], f"{PMD}; client_max_window_bits=12"),
        ([f"{PMD}; client_max_window_bits=8"], f"{PMD}; client_max_window_bits=8"),
        ([f"{PMD}; server_max_window_bits=10"], f"{PMD}; server_max_window_bits=10"),
        ([f"{PMD}; server_max_window_bits=15"], f"{PMD}; server_max_window_bits=12"),
        ([f'{PMD}; server_max_window_bits="9"'], f"{PMD}; server_max_window_bits=9"),
        ([f"{PMD}; server_no_context_takeover"], f"{PMD}; server_no_context_takeover"),
        ([f"{PMD}; client_no_context_takeover"], f"{PMD}; client_no_context_takeover"),
        (
            [
                f"{PMD}; client_no_context_takeover; server_no_context_takeover; "
                "server_max_window_bits=11; client_max_window_bits=9"
            ],
            f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=11; client_max_window_bits=9",
        ),
        # Offers it can't honour are declined: the next one, or none.
        ([f"{PMD}; server_max_window_bits=8"], None),
        ([f"{PMD}; server_max_window_bits=8, {PMD}"], PMD),
        (
            [f"{PMD}; server_max_window_bits=8", f"{PMD}; client_max_window_bits"],
            f"{PMD}; client_max_window_bits=12",
        ),
        (["x-webkit-deflate-frame", PMD], PMD),
        (["foo; bar=1"], None),
    ],
)
def test_server_negotiation(offered: list[str], agreed: Optional[str]) -> None:
    result = negotiate_server(offer(*offered), OPTIONS)
    if agreed is None:
        assert result is None
    else:
        assert result is not None and result[0] == agreed == result[1].agreed


def test_server_negotiation_without_header() -> None:
    assert negotiate_server(Headers(), OPTIONS) is None


@pytest.mark.parametrize(
    "offered",
    [
        f"{PMD}; server_no_context_takeover; server_no_context_takeover",
        f"{PMD}; client_max_window_bits; client_max_window_bits=10",
        f"{PMD}; server_max_window_bits",
        f"{PMD}; server_max_window_bits=7",
        f"{PMD}; server_max_window_bits=16",
        f"{PMD}; server_max_window_bits=010",
        f"{PMD}; server_max_window_bits=ten",
        f"{PMD}; client_max_window_bits=16",
        f"{PMD}; server_no_context_takeover=1",
        f"{PMD}; unknown_parameter",
        f"{PMD};",
        # A bad offer is refused even when a good one follows: the client is broken.
        f"{PMD}; bogus, {PMD}",
    ],
)
def test_server_refuses_invalid_offers_with_400(offered: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        negotiate_server(offer(offered), OPTIONS)
    assert info.value.status == 400


def test_server_options_bound_windows() -> None:
    options = DeflateOptions(window_bits=9)
    result = negotiate_server(offer(f"{PMD}; client_max_window_bits"), options)
    assert result is not None
    agreed, codec = result
    assert agreed == f"{PMD}; client_max_window_bits=9"
    assert (codec.local_window_bits, codec.remote_window_bits) == (9, 9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_bits": 8},
        {"window_bits": 16},
        {"mem_level": 0},
        {"mem_level": 10},
        {"threshold": -1},
        {"level": 10},
    ],
)
def test_options_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DeflateOptions(**kwargs)


def test_deflate_options_helper() -> None:
    assert deflate_options(None) is None
    options = deflate_options("deflate", 10, 4, 0, 1)
    assert options is not None
    assert (options.window_bits, options.mem_level, options.threshold) == (10, 4, 0)
    assert options.level == 1
    with pytest.raises(ValueError):
        deflate_options("gzip")


# -- client negotiation ----------------------------------------------------------------


def test_client_offer() -> None:
    assert client_offer(OPTIONS) == f"{PMD}; client_max_window_bits"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (PMD, (12, 15, False, False, True)),
        (f"{PMD}; server_max_window_bits=10", (12, 10, False, False, True)),
        (f"{PMD}; client_max_window_bits=10", (10, 15, False, False, True)),
        (f"{PMD}; client_max_window_bits=15", (12, 15, False, False, True)),
        (f"{PMD}; client_max_window_bits=8", (8, 15, False, False, False)),
        (f"{PMD}; server_max_window_bits=8", (12, 9, False, False, True)),
        (f"{PMD}; client_no_context_takeover", (12, 15, True, False, True)),
        (f"{PMD}; server_no_context_takeover", (12, 15, False, True, True)),
    ],
)
def test_client_negotiation(answer: str, expected: tuple[int, int, bool, bool, bool]) -> None:
    local, remote, local_reset, remote_reset, can_compress = expected
    codec = negotiate_client(offer(answer), OPTIONS)
    assert codec is not None
    assert codec.agreed == answer
    assert (codec.local_window_bits, codec.remote_window_bits) == (local, remote)
    assert codec.local_no_context_takeover is local_reset
    assert codec.remote_no_context_takeover is remote_reset
    assert codec.can_compress is can_compress


def test_client_negotiation_declined() -> None:
    assert negotiate_client(Headers(), OPTIONS) is None


@pytest.mark.parametrize(
    "answer",
    [
        [f"{PMD}, {PMD}"],
        [PMD, PMD],
        ["x-webkit-deflate-frame"],
        [f"{PMD}; client_max_window_bits"],  # a response must give a value
        [f"{PMD}; server_max_window_bits"],
        [f"{PMD}; server_max_window_bits=10; server_max_window_bits=10"],
        [f"{PMD}; foo"],
        [f"{PMD}; client_max_window_bits=16"],
        [f"{PMD} garbage"],
    ],
)
def test_client_fails_on_invalid_answers(answer: list[str]) -> None:
    with pytest.raises(InvalidResponse):
        negotiate_client(offer(*answer), OPTIONS)
