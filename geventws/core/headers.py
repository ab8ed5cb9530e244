"""HTTP header containers and header-value grammar used by the handshake.

:class:`Headers` keeps every field in arrival order with its original spelling and looks
names up case-insensitively (RFC 9110 §5.1).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

__all__ = ["Headers", "HeadersLike", "parse_token_list"]


class Headers:
    """An ordered, case-insensitive, multi-valued collection of HTTP header fields.

    ``headers["Origin"]`` gives the first value (``KeyError`` when absent),
    :meth:`get_all` every value of a name, :meth:`items` every ``(name, value)`` pair
    as received.
    """

    __slots__ = ("_items",)
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, items: Optional[HeadersLike] = None) -> None:
        self._items: list[tuple[str, str]] = []
        if items is not None:
            self.update(items)

    def update(self, items: HeadersLike) -> None:
        """Append fields from a mapping, a :class:`Headers` or ``(name, value)`` pairs."""
        pairs: Iterable[tuple[str, str]]
        if isinstance(items, Headers):
            pairs = items.items()
        elif isinstance(items, dict):
            pairs = items.items()
        else:
            pairs = items
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any existing one with the same name."""
        self._items.append((name, value))

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one holding ``value``."""
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (no error when there is none)."""
        lower = name.lower()
        self._items = [item for item in self._items if item[0].lower() != lower]

    def __getitem__(self, name: str) -> str:
        lower = name.lower()
        size = len(lower)
        for key, value in self._items:
            if len(key) == size and key.lower() == lower:
                return value
        raise KeyError(name)

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of ``name``, or ``default``."""
        try:
            return self[name]
        except KeyError:
            return default

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers holding ``pairs`` (the list itself, not a copy)."""
        headers = cls.__new__(cls)
        headers._items = pairs
        return headers

    def select(self, names: frozenset[str]) -> dict[str, list[str]]:
        """Every value of each of ``names`` (lower-case) present, in one pass: a
        lookup of several fields at once (the handshake's)."""
        found: dict[str, list[str]] = {}
        for key, value in self._items:
            lower = key.lower()
            if lower in names:
                values = found.get(lower)
                if values is None:
                    found[lower] = [value]
                else:
                    values.append(value)
        return found

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order (an empty list when absent)."""
        lower = name.lower()
        size = len(lower)  # comparing lengths first skips most lower() calls
        return [v for k, v in self._items if len(k) == size and k.lower() == lower]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        lower = name.lower()
        size = len(lower)
        return any(len(key) == size and key.lower() == lower for key, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        """Distinct names, lower-cased, in order of first appearance."""
        seen: dict[str, None] = {}
        for key, _ in self._items:
            seen.setdefault(key.lower(), None)
        return iter(seen)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair in order, names spelled as received."""
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k.lower(), v) for k, v in self._items] == [(k.lower(), v) for k, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def serialize(self) -> bytes:
        """The fields as ``Name: value\\r\\n`` lines, in Latin-1 (RFC 9110 §5.5)."""
        return "".join(f"{name}: {value}\r\n" for name, value in self._items).encode("latin-1")


HeadersLike = Union[Headers, "dict[str, str]", Iterable[tuple[str, str]]]


def parse_token_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated header values into lower-cased, non-empty tokens.

    ``["keep-alive, Upgrade"]`` gives ``["keep-alive", "upgrade"]`` (RFC 9110 §5.6.1).
    """
    tokens: list[str] = []
    for value in values:
        for item in value.split(","):
            token = item.strip()
            if token:
                tokens.append(token.lower())
    return tokens
