"""Framing helpers (RFC 6455 §5): headers, masking, close payloads."""

from __future__ import annotations

import os

import pytest

from geventws.core import frames
from geventws.core.frames import (
    CloseCode,
    frame_header,
    is_valid_close_code,
    parse_close,
    serialize_close,
)
from geventws.exceptions import ProtocolError

from .utils import SENDABLE_CLOSE_CODES


# §5.2 base framing: shortest length encoding
@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_header_length_encoding(length: int, expected: bytes) -> None:
    assert frame_header(0x81, length) == expected


def test_frame_header_with_mask_sets_mask_bit_and_appends_key() -> None:
    assert frame_header(0x82, 5, b"abcd") == b"\x82\x85abcd"


# §5.3 masking: the RFC's example and both implementations agreeing
def test_apply_mask_rfc_example() -> None:
    masked = bytes.fromhex("7f9f4d5158")
    assert frames.apply_mask(masked, bytes.fromhex("37fa213d")) == b"Hello"


@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 1000, 65537])
def test_apply_mask_python_and_compiled_agree(size: int) -> None:
    data, mask = os.urandom(size), os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert frames._apply_mask_python(data, mask) == expected
    assert frames.apply_mask(data, mask) == expected
    assert frames.apply_mask(bytearray(data), mask) == expected


def test_apply_mask_rejects_wrong_mask_length() -> None:
    if not frames.SPEEDUPS:
        pytest.skip("the compiled accelerator is not built")
    with pytest.raises(ValueError):
        frames.apply_mask(b"abc", b"ab")


def test_compiled_accelerator_is_built() -> None:
    # The package's own build compiles it on a machine with a C compiler, as here and CI.
    assert frames.SPEEDUPS


# §7.4 close codes
@pytest.mark.parametrize("code", SENDABLE_CLOSE_CODES)
def test_close_code_valid(code: int) -> None:
    assert is_valid_close_code(code)


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_close_code_invalid(code: int) -> None:
    assert not is_valid_close_code(code)


# §5.5.1 close payloads
def test_parse_close_empty_is_no_status() -> None:
    assert parse_close(b"") == (CloseCode.NO_STATUS_RCVD, "")


def test_parse_close_code_and_reason() -> None:
    assert parse_close(b"\x03\xe8bye") == (1000, "bye")


def test_parse_close_one_byte_fails() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002


def test_parse_close_invalid_code_fails() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xed")  # 1005
    assert info.value.code == 1002


def test_parse_close_invalid_utf8_reason_fails_1007() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff")
    assert info.value.code == 1007


def test_serialize_close_roundtrip() -> None:
    assert serialize_close(4000, "é") == b"\x0f\xa0\xc3\xa9"
    assert serialize_close(CloseCode.NO_STATUS_RCVD) == b""


def test_serialize_close_refuses_bad_code_and_long_reason() -> None:
    with pytest.raises(ValueError):
        serialize_close(1006)
    with pytest.raises(ValueError):
        serialize_close(1000, "x" * 124)
    assert len(serialize_close(1000, "x" * 123)) == 125
