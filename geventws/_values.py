"""Parsers of option values given as text: command-line flags and environment variables.

Each takes a string and returns the value the option's keyword argument takes, or raises
:class:`ValueError` with a message that says what is accepted (the command line turns it
into a one-line usage error naming the flag). The table in :mod:`geventws.options` says
which parser each option uses.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional, Union

from .core.proxy import TrustedProxies

__all__ = [
    "parse_positive_seconds",
    "parse_count",
    "parse_optional_count",
    "parse_positive",
    "parse_max_queue",
    "parse_compression",
    "parse_proxy_headers",
    "parse_bounded",
    "parse_header",
    "parse_forwarded_allow_ips",
    "parse_origin",
    "parse_seconds",
    "parse_size",
]


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)
_FACTORS = {
    None: 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
}


def parse_size(text: str) -> Optional[int]:
    """A size in bytes: ``1048576``, ``64KiB``, ``16MiB``, ``1MB``; ``none`` for no
    limit. Raises :class:`ValueError` with a message naming the accepted forms."""
    value = text.strip()
    if value.lower() in ("none", "unlimited"):
        return None
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"expected a size such as 1048576, 64KiB or 16MiB, or none: {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _FACTORS[unit])


def parse_seconds(text: str) -> Optional[float]:
    """Seconds (``2.5``), or ``none``/``off``. Raises :class:`ValueError`."""
    value = text.strip().lower()
    if value in ("none", "off"):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a number of seconds (0 or more) or none: {text!r}")
    return seconds


def parse_positive_seconds(text: str) -> float:
    seconds = parse_seconds(text)
    if seconds is None:
        raise ValueError(f"expected a number of seconds: {text!r}")
    return seconds


def parse_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a whole number, 0 or more: {text!r}")
    return value


def parse_optional_count(text: str) -> Optional[int]:
    if text.strip().lower() in ("none", "unlimited"):
        return None
    value = parse_count(text)
    return value if value else None


def parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number, 1 or more: {text!r}")
    return value


def parse_max_queue(text: str) -> Union[int, tuple[int, int]]:
    high, sep, low = text.partition(",")
    if not sep:
        return parse_positive(high)
    return parse_positive(high), parse_count(low)


def parse_compression(text: str) -> Optional[str]:
    value = text.strip().lower()
    if value in ("none", "off"):
        return None
    if value != "deflate":
        raise ValueError(f"expected deflate or none: {text!r}")
    return value


def parse_proxy_headers(text: str) -> Optional[str]:
    value = text.strip().lower()
    if value in ("none", "off"):
        return None
    if value not in ("x-forwarded", "forwarded"):
        raise ValueError(f"expected x-forwarded, forwarded or none: {text!r}")
    return value


def parse_bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}: {text!r}")
        return value

    return parse


def parse_header(text: str) -> tuple[str, str]:
    """A request header field given as ``'Name: value'``."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"expected 'Name: value': {text!r}")
    return name.strip(), value.strip()


def parse_forwarded_allow_ips(text: str) -> str:
    """Comma-separated addresses and networks, or ``*``: checked, kept as given."""
    TrustedProxies(text)  # raises ValueError naming the bad entry
    return text


def parse_origin(text: str) -> Optional[str]:
    """An allowed ``Origin``: ``scheme://host[:port]`` as browsers send it, or
    ``none`` for clients that send none."""
    value = text.strip()
    if value.lower() == "none":
        return None
    if value == "null":
        return value
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#\s]+", value):
        raise ValueError(
            f"an origin is scheme://host[:port] as browsers send it (such as "
            f"https://example.com), or none: {text!r}"
        )
    return value
