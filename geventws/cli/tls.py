"""TLS contexts from command-line files, with errors that name the file and the problem.

``ssl`` reports a PEM file without a certificate as ``[SSL] PEM lib``, without naming
which file; the files are read here first, so the error says which one lacks what.
"""

from __future__ import annotations

import re
import ssl
import sys
from typing import Optional

from .errors import CommandError

__all__ = ["client_context", "server_context", "INSECURE_WARNING"]

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----")

INSECURE_WARNING = (
    "geventws: warning: --insecure: the server's certificate and host name are NOT "
    "verified; anyone between you and the server can read and change this connection"
)


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise CommandError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def server_context(certfile: str, keyfile: Optional[str]) -> ssl.SSLContext:
    """A server context with the certificate chain of ``certfile`` and the key of
    ``keyfile`` (or of ``certfile``). Raises :class:`CommandError` naming the file
    that is missing, unreadable, lacks a certificate or a key, or doesn't match."""
    certificates = _read("--certfile", certfile)
    key = _read("--keyfile", keyfile) if keyfile else certificates
    if _CERTIFICATE not in certificates:
        raise CommandError(f"--certfile {certfile}: no PEM certificate in it")
    if not _PRIVATE_KEY.search(key):
        if keyfile:
            raise CommandError(f"--keyfile {keyfile}: no PEM private key in it")
        raise CommandError(
            f"--certfile {certfile}: no private key in it (give the key with --keyfile)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CommandError(
                f"the private key in {keyfile or certfile} does not match the certificate "
                f"in --certfile {certfile}"
            ) from None
        files = f"--certfile {certfile}" + (f" and --keyfile {keyfile}" if keyfile else "")
        raise CommandError(f"cannot load {files}: {exc.reason or exc}") from None
    except OSError as exc:  # removed between the checks and the load
        raise CommandError(f"cannot load --certfile {certfile}: {exc}") from None
    return context


def client_context(cafile: Optional[str], insecure: bool) -> Optional[ssl.SSLContext]:
    """The client's context: ``None`` (:func:`~geventws.connect`'s default, which
    verifies against the system's authorities), one that trusts only the authorities
    in ``cafile``, or with ``insecure`` one that verifies nothing (after a warning on
    standard error, every time). Raises :class:`CommandError` for a bad ``cafile``."""
    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile is None:
        return None
    if _CERTIFICATE not in _read("--cafile", cafile):
        raise CommandError(f"--cafile {cafile}: no PEM certificate in it")
    try:
        return ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CommandError(f"cannot load --cafile {cafile}: {reason}") from None
