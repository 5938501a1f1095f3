"""TLS for meterd's HTTP clients (the shipper, ``meter report --collector``): a private CA to
trust instead of the system's, and a client certificate for collectors that want mutual TLS.

Every file is checked when the client is built, so a wrong path or a key that others may read
is one line at start, not a retry loop of handshake errors later.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from meterd.errors import MeterError


class TlsSetupError(MeterError):
    """A CA file, client certificate or key that cannot be used (the message names it)."""


def regular_file(what: str, path: str, error: type[MeterError] | None = None) -> tuple[Path, os.stat_result]:
    """``path`` (``${CREDENTIALS_DIRECTORY}`` and ``~`` expanded) and its stat, which must be a
    regular file; otherwise ``error`` (default :class:`TlsSetupError`) naming ``what``."""
    error = error or TlsSetupError
    p = Path(os.path.expanduser(os.path.expandvars(path)))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{what} {p}: not found") from None
    except OSError as e:
        raise error(f"{what} {p}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p}: not a regular file")
    return p, st


def _path(what: str, path: str) -> Path:
    return regular_file(what, path)[0]


SHIP_NAMES = {"ca_file": "ship.ca_file", "client_cert": "ship.client_cert", "client_key": "ship.client_key"}
FLAG_NAMES = {"ca_file": "--ca-file", "client_cert": "--client-cert", "client_key": "--client-key"}


def client_context(ca_file: str | None = None, client_cert: str | None = None,
                   client_key: str | None = None, *, names: dict[str, str] = SHIP_NAMES) -> ssl.SSLContext | bool:
    """``True`` (the system's CAs, httpx's default) when nothing is given, else an SSLContext
    that trusts ``ca_file`` only (when given) and presents ``client_cert`` (with ``client_key``,
    which must not be readable by group or others; a key inside the certificate file is
    allowed: then the certificate file is held to that rule)."""
    if ca_file is None and client_cert is None and client_key is None:
        return True
    if client_key is not None and client_cert is None:
        raise TlsSetupError(f"{names['client_key']} needs {names['client_cert']} (the certificate it belongs to)")
    if ca_file is not None:
        ca = _path(names["ca_file"], ca_file)
        try:
            ctx = ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, ValueError) as e:
            raise TlsSetupError(f"{names['ca_file']} {ca}: not a PEM CA certificate ({e})") from None
    else:
        ctx = ssl.create_default_context()
    if client_cert is not None:
        cert = _path(names["client_cert"], client_cert)
        key = _path(names["client_key"], client_key) if client_key is not None else cert
        mode = stat.S_IMODE(key.stat().st_mode)
        if mode & 0o077:
            raise TlsSetupError(f"the client key {key} is accessible to group or others (mode {mode:04o}): "
                                f"run chmod 600 {key}")
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, ValueError) as e:
            raise TlsSetupError(f"{names['client_cert']} {cert} with the key {key}: not a PEM certificate and "
                                f"its private key ({e})") from None
        except OSError as e:
            raise TlsSetupError(f"{names['client_cert']} {cert}: {e.strerror or e}") from None
    return ctx
