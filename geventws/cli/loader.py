"""Loading ``module:attribute`` from the command line."""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["ImportFromStringError", "load_handler"]


class ImportFromStringError(Exception):
    """``module:attribute`` could not be loaded; the message says what is missing."""


def load_handler(spec: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (the attribute may be dotted) and return it.

    Raises :class:`ImportFromStringError` with a one-line message that tells a missing
    module from a missing attribute, or from a module that failed on import.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportFromStringError(f"expected module:handler, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ImportFromStringError(
                f"cannot import module {module_name!r}: not found"
            ) from None
        raise ImportFromStringError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise ImportFromStringError(
            f"module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportFromStringError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ImportFromStringError(f"{spec!r} is not callable")
    return target  # type: ignore[no-any-return]
