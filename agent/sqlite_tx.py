"""``BEGIN IMMEDIATE`` … ``COMMIT`` as a context manager, for read-then-write transactions on
connections opened with ``isolation_level=None`` (shared by the agent's and the collector's
stores)."""

from __future__ import annotations

import sqlite3


class Immediate:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
