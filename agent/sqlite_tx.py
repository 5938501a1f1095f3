"""SQLite helpers shared by the agent's and the collector's stores: ``BEGIN IMMEDIATE`` …
``COMMIT`` as a context manager (for connections opened with ``isolation_level=None``), and a
script runner that stays inside the caller's transaction."""

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


def run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Statement by statement: ``executescript`` would COMMIT the migration's transaction.
    (The statements must not contain a ``;`` inside a literal or a comment.)"""
    for stmt in sql.split(";"):
        if stmt.strip():
            conn.execute(stmt)
