"""The systemd notify protocol (sd_notify(3)), with the standard library: one datagram per
message to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).

``READY=1`` once the first sample is in, ``WATCHDOG=1`` every half of ``WatchdogSec``
(``$WATCHDOG_USEC``), ``STOPPING=1`` on the way out. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._mono = monotonic
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._last_ping = float("-inf")
        self._sock: socket.socket | None = None
        self.ready = False

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError as e:
            log.warning("sd_notify %r failed: %s", message, e)
            return False

    def notify_ready(self, status: str = "") -> None:
        if not self.ready:
            self.ready = True
            self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def maybe_ping(self) -> None:
        """WATCHDOG=1 if half the watchdog period has passed since the last ping."""
        if self.watchdog_s is None:
            return
        now = self._mono()
        if now - self._last_ping >= self.watchdog_s / 2:
            if self.send("WATCHDOG=1"):
                self._last_ping = now

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
