"""The one SQLite base under meterd's stores: the agent's ledger (agent/store.py) and the
collector's SQLite backend (collector/store.py).

What it owns: where a store lives by default, opening it (writable or read-only), the pragmas
(WAL with ``synchronous=FULL``: WAL+NORMAL can lose committed transactions on power loss; a
busy timeout), schema migrations by ``PRAGMA user_version``, ``BEGIN IMMEDIATE`` transactions,
closing the connection when opening fails half-way, and turning SQLite's failures into the
store errors of meterd/errors.py, each naming the file:

- a store of a newer (or, read-only, an older) schema: :class:`StoreVersionError` with both versions;
- another kind of file (a collector database given to the agent, an agent store given to the
  collector, an empty file, not SQLite at all): :class:`StoreKindError` naming what it is;
- "database disk image is malformed": :class:`StoreDamaged`, with what to do about it;
- missing, unwritable, locked, full: :class:`StoreUnavailable`.

Read-only opening (``readonly=True``, for the commands that only read) never creates, migrates
or writes the store, nor creates a file beside it. While a store's write-ahead log exists (its
``-wal`` file: some process has it open, or one died with it open) it is opened with SQLite's
``mode=ro``, which sees every committed transaction; with no write-ahead log nobody is writing,
and it is opened ``immutable=1``, which needs neither the directory nor the ``-wal``/``-shm``
files to be writable (a read-only mount, a store owned by the ``meterd`` user in a 0755
directory) and leaves nothing behind.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from meterd.errors import StoreDamaged, StoreError, StoreKindError, StoreUnavailable, StoreVersionError

BUSY_TIMEOUT_MS = 10_000

#: One schema step: moves the store from version i to i+1 inside the caller's transaction.
Migration = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Kind:
    """A kind of store: its name for messages, its default file name, the tables every version
    of it has (how a file is recognised), and the command that makes one."""

    name: str
    filename: str
    tables: frozenset[str]
    made_by: str

    @property
    def a(self) -> str:
        """The name with its article: "an agent store", "a collector database"."""
        return ("an " if self.name[0] in "aeiou" else "a ") + self.name


AGENT = Kind("agent store", "meterd.db",
             frozenset({"samples", "windows", "window_usage", "rollups", "bench_results"}), "meter agent")
COLLECTOR = Kind("collector database", "collector.db",
                 frozenset({"events", "windows", "usage", "tokens"}), "meter collector serve")
KINDS = (AGENT, COLLECTOR)


def default_path(filename: str) -> Path:
    """``$STATE_DIRECTORY/<filename>`` under systemd, else ``$XDG_DATA_HOME/meterd/<filename>``
    (``~/.local/share/meterd/<filename>``)."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / filename
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "meterd" / filename


class Immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception), for connections opened
    here (``isolation_level=None``): the write lock is taken before the first read, so a
    read-then-write cannot be overtaken."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


class Snapshot:
    """``BEGIN`` ... ``COMMIT`` around reads that must see one state of the database (in WAL
    mode every statement inside reads the snapshot the first one took, while a writer goes on
    committing). Inside a transaction the caller already holds, it adds none."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.began = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.began = True
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.began and self.conn.in_transaction:
            self.conn.execute("COMMIT")


def run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Statement by statement: ``executescript`` would COMMIT the migration's transaction.
    (The statements must not contain a ``;`` inside a literal or a comment.)"""
    for stmt in sql.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def write_probe(conn: sqlite3.Connection) -> None:
    """A real write that changes nothing, committed (the schema version rewritten as it is): it
    fails while the disk is full, the file is read-only or damaged, or another process holds the
    write lock. A failed COMMIT's transaction is rolled back, so the connection stays usable."""
    version = user_version(conn)
    try:
        with Immediate(conn):
            conn.execute(f"PRAGMA user_version = {int(version)}")
    except sqlite3.Error:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> None:
    """Run the steps from the store's version on, one transaction each. The version is read
    under the write lock, so two processes opening a store at once never run a step twice."""
    while True:
        with Immediate(conn):
            version = user_version(conn)
            if version >= len(migrations):
                return
            migrations[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def open_db(path: str | os.PathLike, kind: Kind, migrations: Sequence[Migration], *,
            readonly: bool = False, create: bool = True,
            check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to the store at ``path`` of this ``kind``, checked and (writable) migrated.

    Writable: creates the directory and the file where missing (unless ``create`` is false),
    WAL, ``synchronous=FULL``, foreign keys, migrations. Read-only: see the module's doc; the
    store must exist and be at this meterd's schema version. Raises a :class:`StoreError`.
    """
    p = Path(path)
    if (readonly or not create) and not p.exists():
        raise StoreUnavailable(f"no {kind.name} at {p}: run `{kind.made_by}` first, or give --db PATH")
    if p.is_dir():
        raise StoreUnavailable(f"{p} is a directory, not {kind.a}: give the file (--db PATH)")
    conn = _connect_readonly(p, kind, check_same_thread) if readonly else \
        _connect_writable(p, kind, check_same_thread)
    try:
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = user_version(conn)
            _check_kind(p, kind, tables, version, readonly)
            if version > len(migrations):
                raise StoreVersionError(
                    f"{p} has schema version {version}, newer than this meterd knows "
                    f"({len(migrations)}): it was written by a newer meterd; upgrade meterd to use it")
            if readonly:
                if version < len(migrations):
                    raise StoreVersionError(
                        f"{p} has schema version {version}, older than this meterd's "
                        f"({len(migrations)}): a read does not upgrade it; run `{kind.made_by}` "
                        f"(as the store's owner) once to upgrade it")
            else:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
                migrate(conn, migrations)
        except sqlite3.Error as e:
            raise store_error(e, p, kind) from e
    except BaseException:
        conn.close()
        raise
    return conn


def store_error(e: sqlite3.Error, path: str | os.PathLike, kind: Kind = AGENT) -> StoreError:
    """The store error for an SQLite failure on the store at ``path``: one line naming the file
    and what to do."""
    p = Path(path)
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return StoreDamaged(
            f"{p} is damaged (SQLite: {text}): check it with `sqlite3 {p} 'PRAGMA integrity_check'`, "
            f"restore it from a backup, or move it aside to start a new {kind.name}")
    if name.startswith("SQLITE_NOTADB") or "file is not a database" in text:
        return StoreKindError(f"{p} is not an SQLite database, so not {kind.a}: "
                              f"give the {kind.name}'s path (--db PATH)")
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return StoreUnavailable(f"{p} cannot be written by this user (SQLite: {text}): run as the "
                                f"store's owner, or give --db PATH to a writable file")
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreUnavailable(f"{p}: the disk is full (SQLite: {text}): free space, nothing "
                                "already stored is lost")
    if name.startswith("SQLITE_BUSY") or "locked" in text:
        return StoreUnavailable(f"{p} is locked by another process (SQLite: {text}): try again")
    return StoreUnavailable(f"cannot use {p} (SQLite: {text})")


def _check_kind(p: Path, kind: Kind, tables: set[str], version: int, readonly: bool) -> None:
    if not tables and version == 0:
        if readonly:
            raise StoreKindError(f"{p} is an empty database, not {kind.a}: "
                                 f"nothing has written to it yet (`{kind.made_by}` does)")
        return  # a new store: the migrations make it
    if kind.tables <= tables:
        return
    for other in KINDS:
        if other is not kind and other.tables <= tables:
            raise StoreKindError(f"{p} is {other.a}, not {kind.a}: "
                                 f"give the {kind.name}'s path (--db PATH)")
    shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
    raise StoreKindError(f"{p} is an SQLite database of something else (tables: {shown}), "
                         f"not {kind.a}: give the {kind.name}'s path (--db PATH)")


def _connect_writable(p: Path, kind: Kind, check_same_thread: bool) -> sqlite3.Connection:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreUnavailable(f"cannot create the directory {p.parent} for the {kind.name}: "
                               f"{e.strerror or e}") from e
    # SQLite would open an unwritable store and fail at the first write (the agent's first
    # window): say it now. The directory too: WAL needs its -wal and -shm files beside the store.
    for what in ((p, p.parent) if p.exists() else (p.parent,)):
        if not os.access(what, os.W_OK):
            raise StoreUnavailable(
                f"{what} cannot be written by this user: run as the store's owner, or give --db PATH "
                f"to a writable file (windows, report and outbox only read, and need no write access)")
    try:
        return sqlite3.connect(p, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=check_same_thread)
    except sqlite3.Error as e:
        raise StoreUnavailable(f"cannot open {p} (SQLite: {e}): is its directory writable?") from e


def _connect_readonly(p: Path, kind: Kind, check_same_thread: bool) -> sqlite3.Connection:
    wal = p.with_name(p.name + "-wal")
    query = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    uri = f"file:{urllib.parse.quote(str(p.absolute()))}?{query}"
    conn = None
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=check_same_thread)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        if not os.access(p, os.R_OK):
            raise StoreUnavailable(f"cannot read {p}: permission denied (ask for read access, "
                                   f"or run as the store's owner)") from e
        if "unable to open" in str(e) and query == "mode=ro":
            raise StoreUnavailable(
                f"cannot read {p}: its write-ahead log ({wal.name}) is in use and this user cannot "
                f"open {p.name}-shm beside it; run as the store's owner") from e
        raise store_error(e, p, kind) from e
