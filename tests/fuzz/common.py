"""What every fuzz target shares: the data provider, seed encoding, the atheris entry.

Targets read their input through a data provider: atheris' ``FuzzedDataProvider``
when atheris is installed, otherwise :class:`FallbackProvider`, which consumes bytes
exactly the same way for the few methods the targets use (a test checks that), so the
seed corpus replays identically with or without atheris. Like libFuzzer's provider,
integers come from the *end* of the input and byte strings from the front: a seed is
its wire bytes followed by its (reversed) control integers, which :class:`Plan` writes.
"""

from __future__ import annotations

import contextlib
import sys
import types
from typing import Any, Callable, ContextManager, Protocol

try:
    import atheris
except ImportError:  # the corpus replay runs without it (see test_fuzz_targets.py)
    atheris = None

__all__ = ["HAVE_ATHERIS", "DataProvider", "FallbackProvider", "Plan", "instrument_modules"]
__all__ += ["instrumented", "main"]

HAVE_ATHERIS = atheris is not None


class DataProvider(Protocol):
    """The part of atheris' ``FuzzedDataProvider`` the targets use."""

    def ConsumeIntInRange(self, min: int, max: int) -> int: ...

    def ConsumeBytes(self, count: int) -> bytes: ...

    def remaining_bytes(self) -> int: ...


def _int_size(span: int) -> int:
    """How many bytes an integer in a range of width ``span`` consumes (at most 8)."""
    size = 0
    while size < 8 and span >> (8 * size) > 0:
        size += 1
    return size


class FallbackProvider:
    """libFuzzer's ``FuzzedDataProvider`` semantics for three methods, in pure Python."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._start = 0
        self._end = len(data)

    def remaining_bytes(self) -> int:
        return self._end - self._start

    def ConsumeBytes(self, count: int) -> bytes:
        count = max(0, min(count, self.remaining_bytes()))
        chunk = self._data[self._start : self._start + count]
        self._start += count
        return chunk

    def ConsumeIntInRange(self, min: int, max: int) -> int:
        if min > max:
            raise ValueError("min must not exceed max")
        span = max - min
        result = 0
        for _ in range(_int_size(span)):
            if self._end == self._start:
                break
            self._end -= 1
            result = (result << 8) | self._data[self._end]
        return min + result % (span + 1)


def provider(data: bytes) -> DataProvider:
    """The data provider for one input: atheris' when installed, else the fallback."""
    if atheris is not None:
        return atheris.FuzzedDataProvider(data)  # type: ignore[no-any-return]
    return FallbackProvider(data)


class Plan:
    """Writes an input that a target will read back as planned: :meth:`int` for each
    ``ConsumeIntInRange`` and :meth:`bytes` for each ``ConsumeBytes``, in the order the
    target calls them."""

    def __init__(self) -> None:
        self._front: list[bytes] = []
        self._ints = bytearray()

    def int(self, value: int, lo: int, hi: int) -> Plan:
        if not lo <= value <= hi:
            raise ValueError(f"{value} not in [{lo}, {hi}]")
        size = _int_size(hi - lo)
        if size:
            self._ints += (value - lo).to_bytes(size, "big")
        return self

    def bytes(self, data: bytes) -> Plan:
        self._front.append(data)
        return self

    def encode(self) -> bytes:
        return b"".join(self._front) + bytes(reversed(self._ints))


def instrumented(active: bool) -> ContextManager[Any]:
    """Instrument geventws' modules imported in this block for coverage when ``active``
    (the target runs as ``__main__`` under atheris); a no-op otherwise."""
    if not active or atheris is None or "--no-instrument" in sys.argv:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["geventws"])  # type: ignore[no-any-return]


def instrument_modules(active: bool, *modules: types.ModuleType) -> None:
    """Instrument the functions and methods defined in ``modules`` (standard library
    modules that geventws delegates parsing to, such as ``urllib.parse``) when
    ``active``, so that coverage guides the fuzzer through them too."""
    if not active or atheris is None or "--no-instrument" in sys.argv:
        return
    for module in modules:
        for value in list(vars(module).values()):
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if isinstance(value, types.FunctionType):
                atheris.instrument_func(value)
            elif isinstance(value, type):
                for attribute in vars(value).values():
                    function = attribute.fget if isinstance(attribute, property) else attribute
                    if isinstance(function, types.FunctionType):
                        atheris.instrument_func(function)


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz ``test_one_input`` with atheris, passing libFuzzer flags from argv."""
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (see tests/fuzz/README)")
    args = [arg for arg in sys.argv if arg != "--no-instrument"]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
