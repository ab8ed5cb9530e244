"""The sans-I/O core: every protocol decision, from bytes to events and back.

Nothing in this package does I/O or imports ``gevent``, ``socket``, ``ssl``, ``select``
or ``asyncio`` (``tests/test_sans_io.py`` checks it in a subprocess, and a ruff
banned-api rule in ``geventws/core/ruff.toml`` on every lint). It is tested with byte
literals. The gevent layer around it (:mod:`geventws.connection` and its helpers) only
moves bytes and greenlets.
"""
