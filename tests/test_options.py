"""The one table of options: every API takes exactly its options, typed as the table
says, with the table's defaults; unknown names are refused."""

from __future__ import annotations

import typing
from typing import Any

import pytest

import geventws
from geventws import options
from geventws.options import (
    API_SCOPES,
    OPTIONS,
    ClientOptions,
    ConnectionSettings,
    ServerOptions,
    UpgradeOptions,
    keyword,
    options_for,
    parse_seconds,
    parse_size,
    resolve,
)

TYPED = {"server": ServerOptions, "middleware": UpgradeOptions, "client": ClientOptions}


@pytest.mark.parametrize("api", sorted(API_SCOPES))
def test_typed_keywords_match_the_table(api: str) -> None:
    annotations: dict[str, str] = {}
    for klass in reversed(TYPED[api].__mro__):
        annotations.update(
            {
                name: getattr(value, "__forward_arg__", value)
                for name, value in getattr(klass, "__annotations__", {}).items()
            }
        )
    table = {keyword(option): option.type for option in options_for(api)}
    assert annotations == table


def test_names_are_unique_per_api_and_flags_follow_names() -> None:
    for api in API_SCOPES:
        names = [keyword(option) for option in options_for(api)]
        assert len(names) == len(set(names)), api
    for option in OPTIONS:
        if option.cli is not None and option.cli.flag is None:
            assert option.flag == "--" + option.name.replace("_", "-")


def test_resolve_fills_defaults_and_refuses_unknown_names() -> None:
    values = resolve("server", {"max_size": 10}, "WebSocketServer")
    assert values["max_size"] == 10
    assert values["ping_interval"] == 20.0
    assert set(values) == {keyword(option) for option in options_for("server")}
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_sise'"):
        resolve("server", {"max_sise": 10}, "WebSocketServer")
    with pytest.raises(TypeError, match="unexpected keyword argument 'handshake_timeout'"):
        resolve("client", {"handshake_timeout": 1}, "connect")


def test_public_apis_refuse_unknown_options() -> None:
    with pytest.raises(TypeError, match="WebSocketServer"):
        geventws.WebSocketServer(("127.0.0.1", 0), lambda c, r: None, max_sise=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="connect"):
        geventws.connect("ws://127.0.0.1:1/", handshake_timeout=1)  # type: ignore[call-arg]
    from geventws.wsgi import WebSocketMiddleware

    with pytest.raises(TypeError, match="WebSocketMiddleware"):
        WebSocketMiddleware(None, {}, max_connections=3)  # type: ignore[call-arg]


def test_documented_defaults_are_the_ones_used() -> None:
    settings = ConnectionSettings(resolve("client", {}, "test"))
    table = {option.name: option.default for option in OPTIONS}
    assert settings.max_size == table["max_size"] == 2**20
    assert settings.max_fragments == table["max_fragments"]
    assert settings.max_queue == 16 and settings.max_queue_low == 4
    assert settings.close_timeout == table["close_timeout"]
    assert settings.deflate is not None and settings.deflate.window_bits == 12


def test_settings_validate_values() -> None:
    with pytest.raises(ValueError):
        ConnectionSettings(resolve("client", {"compression_window_bits": 8}, "test"))
    with pytest.raises(ValueError):
        ConnectionSettings(resolve("client", {"max_fragments": 0}, "test"))
    with pytest.raises(ValueError):
        ConnectionSettings(resolve("client", {"compression": "brotli"}, "test"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 2**20),
        ("64KiB", 65536),
        ("16MiB", 16 * 2**20),
        ("1MB", 10**6),
        ("2k", 2048),
        ("none", None),
    ],
)
def test_parse_size(text: str, value: Any) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["12XB", "-1", "", "MiB", "1.5.2"])
def test_parse_size_refuses_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="16MiB"):
        parse_size(text)


def test_parse_seconds() -> None:
    assert parse_seconds("2.5") == 2.5
    assert parse_seconds("off") is None
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(ValueError):
            parse_seconds(bad)


def test_every_typed_dict_is_exported_and_documented() -> None:
    for name in ("ConnectionOptions", "UpgradeOptions", "ServerOptions", "ClientOptions"):
        klass = getattr(options, name)
        assert klass.__doc__ and typing.is_typeddict(klass)
