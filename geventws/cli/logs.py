"""Logging for ``geventws serve``: ``--log-level``, ``--log-config``, ``--access-log``.

Without ``--log-config``: :func:`logging.basicConfig` on the root logger at
``--log-level`` (default ``info``). With it: the file, as uvicorn reads it: a
``.json``, ``.yaml`` or ``.yml`` file is a :func:`logging.config.dictConfig` dictionary
(YAML needs PyYAML; ``disable_existing_loggers`` defaults to false, so geventws'
loggers, which exist by then, keep logging), any other file is an
:func:`logging.config.fileConfig` INI file;
``--log-level``, when given too, sets the root logger's level. ``--no-access-log``
then disables the ``geventws.access`` logger (one line per connection; with ``--wsgi``
the server also leaves out gevent.pywsgi's line per HTTP request).
"""

from __future__ import annotations

import _thread
import importlib
import json
import logging
import logging.config
import time
from pathlib import Path
from typing import Any, Optional

from .errors import CommandError

__all__ = ["ACCESS_LOGGER", "LOG_FORMAT", "WORKERS_LOG_FORMAT", "configure"]

#: The logger of the per-connection (and per-request) lines that --no-access-log drops.
ACCESS_LOGGER = "geventws.access"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With ``--workers N`` or ``--reload``: the same, with the process id.
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def _dict_config(path: str) -> dict[str, Any]:
    suffix = Path(path).suffix.lower()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read --log-config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CommandError(f"--log-config {path}: not UTF-8 text: {exc}") from None
    if suffix == ".json":
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"--log-config {path}: invalid JSON: {exc}") from None
    else:
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            raise CommandError(
                f"--log-config {path}: reading YAML needs PyYAML (pip install pyyaml), "
                "or give the configuration as .json"
            ) from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CommandError(f"--log-config {path}: invalid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise CommandError(f"--log-config {path}: expected a dictConfig mapping")
    # geventws' loggers exist before the file is read: keep them unless it says not to.
    config.setdefault("disable_existing_loggers", False)
    return config


class _Formatter(logging.Formatter):
    """The default format, with the date and time formatted once per second (the same
    text as :class:`logging.Formatter`'s: ``2026-12-02 18:10:41,973``)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


def keep_os_lock() -> None:
    """Give the default handler its OS lock back after monkey-patching, which replaces
    every handler's lock with gevent's (a worker patches after its supervisor made
    the handler)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_geventws_default", False):
            handler.lock = _thread.RLock()


def configure(
    level: Optional[str], config: Optional[str], access_log: bool, *, with_pid: bool = False
) -> None:
    """Configure logging as the flags say (see the module). Raises
    :class:`CommandError` for a configuration file that can't be read or applied."""
    if config is None:
        handler = logging.StreamHandler()
        handler.setFormatter(_Formatter(WORKERS_LOG_FORMAT if with_pid else LOG_FORMAT))
        # A lock of the OS thread, not gevent's (Python-level, under monkey-patching):
        # writing a line to stderr never yields to another greenlet, so only threads
        # need keeping apart, and this lock does that at a tenth of the cost.
        handler.lock = _thread.RLock()
        handler._geventws_default = True  # type: ignore[attr-defined]
        logging.basicConfig(level=(level or "info").upper(), handlers=[handler])
        # What our format doesn't show, records need not gather (the logging HOWTO's
        # "Optimization"): above all the thread, which under gevent's monkey-patching
        # means a dummy thread object made for each greenlet, that is each connection.
        logging.logThreads = False
        logging.logProcesses = with_pid
        logging.logMultiprocessing = False
    else:
        suffix = Path(config).suffix.lower()
        try:
            if suffix in (".json", ".yaml", ".yml"):
                logging.config.dictConfig(_dict_config(config))
            else:
                if not Path(config).is_file():
                    raise CommandError(f"cannot read --log-config {config}: no such file")
                logging.config.fileConfig(config, disable_existing_loggers=False)
        except CommandError:
            raise
        except Exception as exc:  # dictConfig and fileConfig raise many kinds
            raise CommandError(f"--log-config {config}: {type(exc).__name__}: {exc}") from None
        if level is not None:
            logging.getLogger().setLevel(level.upper())
    if not access_log:
        logging.getLogger(ACCESS_LOGGER).disabled = True
