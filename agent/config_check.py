"""The one decision on whether the agent can run with a config: ``meter config check`` and the
agent's start both call :func:`check_agent_config`, so a config that ``check`` calls ok is one
the agent takes (and one it refuses, ``check`` refuses with the same line).

:func:`meterd.agent.config.parse_config` checks each key alone (types, numeric bounds, the
currency code); this adds what needs the whole config or the machine: the interval against the
window, listen addresses (the push endpoint on loopback or a Unix socket only), the ship URL and
its token file (present, a regular file, not readable by group or others; one under
``${CREDENTIALS_DIRECTORY}`` is checked where that is set, i.e. when systemd starts the service),
and its TLS files (a private CA, a client certificate and key; the same rule for credentials).
"""

from __future__ import annotations

import ipaddress
import os

from meterd.agent.config import Config, ConfigError
from meterd.net import is_loopback, parse_listen


def check_listen(key: str, listen: str, loopback_only: bool = False) -> None:
    """HOST:PORT (the one parser, meterd/net.py) or unix:PATH (whose directory may only appear
    when the service starts: systemd's RuntimeDirectory)."""
    if listen.startswith("unix:"):
        return
    try:
        host, _ = parse_listen(listen)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if host != "localhost" and not is_loopback(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{key}: {host!r} is not an IP address (or localhost)") from None
    if loopback_only and not is_loopback(host):
        raise ConfigError(f"{key}: the push endpoint listens on loopback or a Unix socket only, not {host!r}: "
                          "it has no authentication")


def check_agent_config(config: Config, starting: bool = False) -> str | None:
    """Raise :class:`ConfigError` (one line naming the key) if the agent would refuse
    ``config``; returns the ship token when shipping is configured (``starting``: the agent's
    start, where the token file must be there whatever its path)."""
    if config.interval_s > config.window_s:
        raise ConfigError(f"interval_s: must not exceed window_s ({config.window_s} s), got {config.interval_s}")
    if config.push_listen:
        check_listen("push.listen", config.push_listen, loopback_only=True)
    if config.metrics_listen:
        check_listen("metrics.listen", config.metrics_listen)
    if config.store and os.path.isdir(config.store):
        raise ConfigError(f"store: {config.store} is a directory; give the path of the database file")
    if not config.ship_url:
        if config.ship_token_file:
            raise ConfigError("ship.token_file: set without ship.url")
        return None
    from meterd.agent.shipper import ShipError, check_url, read_token_file

    try:
        check_url(config.ship_url, config.ship_allow_insecure)
    except ShipError as e:
        raise ConfigError(f"ship.url: {e}") from None
    if not config.ship_token_file:
        raise ConfigError("ship.token_file: shipping needs a bearer token: --token-file FILE or [ship] token_file")
    _check_tls(config, starting)
    if _later(config.ship_token_file, starting):
        return None  # systemd's LoadCredential= makes it when the service starts: checked then
    try:
        return read_token_file(config.ship_token_file)
    except ShipError as e:
        raise ConfigError(f"ship.token_file: {e}") from None


def _later(path: str | None, starting: bool) -> bool:
    """A file under ``${CREDENTIALS_DIRECTORY}`` outside the service: checked when it starts."""
    return (not starting and path is not None and "CREDENTIALS_DIRECTORY" in path
            and not os.environ.get("CREDENTIALS_DIRECTORY"))


def _check_tls(config: Config, starting: bool) -> None:
    """[ship] ca_file, client_cert and client_key: files that exist, PEM that loads, a key only
    its owner may read (meterd.agent.tls)."""
    from meterd.agent.tls import TlsSetupError, client_context

    files = (config.ship_ca_file, config.ship_client_cert, config.ship_client_key)
    if any(_later(f, starting) for f in files):
        return
    try:
        client_context(*files)
    except TlsSetupError as e:
        raise ConfigError(str(e)) from None
