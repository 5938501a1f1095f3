"""Small network facts shared by the endpoints, the shipper and the collector: loopback
addresses, and where to listen."""

from __future__ import annotations

import ipaddress
import re


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """Where to listen: ``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (the host is then 127.0.0.1)
    -> (host, port); port 0 asks the kernel for a free one. A ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT (or [IPv6]:PORT), not {text!r}")
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host and not re.fullmatch(r"[0-9A-Za-z.:%-]+", host):
        raise ValueError(f"{host!r} is not a host name or address, in {text!r}")
    return host or "127.0.0.1", int(port)
