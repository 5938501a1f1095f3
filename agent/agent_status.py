"""What the running agent tells ``meter status`` about itself: whether its store takes writes,
how many closed windows it holds in memory, since when, and why.

A small file beside the store (``<store>.status``), written in place at a fixed size: the agent
allocates it at start, so that later updates overwrite bytes the filesystem already holds and
still land on a full disk, which is exactly when they matter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATUS_BYTES = 4096


def status_path(store_path: str | os.PathLike) -> Path:
    return Path(str(store_path) + ".status")


class StatusFile:
    def __init__(self, store_path: str | os.PathLike) -> None:
        self.path = status_path(store_path)
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._fd, b" " * STATUS_BYTES, 0)
        except OSError:
            self.close()  # no status file: `meter status` then says nothing about the agent

    def write(self, doc: dict[str, Any]) -> bool:
        if self._fd is None:
            return False
        data = json.dumps(doc, default=str).encode()[: STATUS_BYTES - 1]
        try:
            os.pwrite(self._fd, data.ljust(STATUS_BYTES, b" "), 0)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_status(store_path: str | os.PathLike) -> dict[str, Any] | None:
    """The agent's last word about the store, or None (no agent ran here, or it is gone)."""
    try:
        doc = json.loads(status_path(store_path).read_bytes().strip() or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if doc.get("state") != "stopped" and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            doc["state"] = "not running"
        except PermissionError:
            pass
    return doc


def describe(doc: dict[str, Any] | None) -> str | None:
    """One line for ``meter status``."""
    if not doc or doc.get("state") in ("stopped", "not running"):
        return None
    if doc.get("store") == "ok":
        return f"agent (pid {doc.get('pid')}): store takes writes"
    return (f"agent (pid {doc.get('pid')}): the store refuses writes since {doc.get('since')}: "
            f"{doc.get('reason')}; {doc.get('pending_windows')} window(s) held in memory, "
            f"{doc.get('write_errors_total')} failed write(s)")
