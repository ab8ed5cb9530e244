"""The protocol core never imports gevent, socket or ssl."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "exceptions",
    "core",
    "core.frames",
    "core.protocol",
    "core.handshake",
    "core.http11",
    "core.headers",
    "core.request",
    "core.deflate",
    "core.uri",
]


def test_core_imports_no_io_modules() -> None:
    code = (
        "import sys, importlib.util, types\n"
        # Load the core modules without running geventws/__init__ (it wires the I/O layer).
        "pkg = types.ModuleType('geventws'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['geventws'] = pkg\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module('geventws.' + name)\n"
        "io = ('gevent', 'socket', 'ssl', 'select', 'asyncio')\n"
        "bad = sorted(m for m in io if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    import geventws

    path = geventws.__path__[0]
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
