"""The store's one small database adapter: SQLite (the embedded default) or
PostgreSQL through psycopg 3 (replicas sharing one database, SPEC §9).

The store writes each statement once, in the SQL both understand, with `?`
placeholders (turned into psycopg's `%s` here). What differs lives here only:

- `db.execute(sql, params)` runs one statement on its own (autocommit);
  `with db.tx() as tx:` runs several in one transaction, and `tx.lock(*key)`
  serialises transactions that take the same key. SQLite's BEGIN IMMEDIATE
  already serialises every writer, so there it does nothing; on PostgreSQL
  (READ COMMITTED) it is a transaction-scoped advisory lock, taken where a
  transaction reads and then writes on what it read (quota, per-workspace seq).
- `db.dialect` ("sqlite" | "postgresql") and `db.greatest` (MAX | GREATEST)
  for the few expressions that differ.
- `db.ensure_schema(script, added_columns)`: idempotent, and safe when several
  replicas start at once (an advisory lock on PostgreSQL). Column types are
  written SQLite's way; REAL becomes DOUBLE PRECISION on PostgreSQL (its REAL
  is 4 bytes: no room for a unix time).

Rows read by position or by column name (`row[0]`, `row["name"]`, `dict(row)`)
on both.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
Params = Sequence[Any]
# Arbitrary but fixed: the advisory lock under which a replica creates the schema.
SCHEMA_LOCK = 0x5354_4B53_5043_0001


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class DatabaseUnavailable(Exception):
    """The configured database cannot be reached or refuses the connection."""


def _masked(message: str, url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(url).get("password")
    except Exception:  # noqa: BLE001 - an unparsable URL: say nothing that may echo it
        return "the URL is not a valid PostgreSQL connection URL"
    return message.replace(str(password), "***") if password else message


def probe(url: str) -> str:
    """Connect once; the server's version, or DatabaseUnavailable naming the
    setting with the server's reason (the password masked)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])
    except psycopg.Error as e:
        raise DatabaseUnavailable(
            f"database_url: cannot connect: {_masked(str(e), url)}") from None


class Rows(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    def execute(self, sql: str, params: Params = ()) -> Rows: ...
    def lock(self, *key: str) -> None: ...


class Database(Protocol):
    dialect: str
    greatest: str

    def execute(self, sql: str, params: Params = ()) -> Rows: ...
    def tx(self) -> contextlib.AbstractContextManager[Tx]: ...
    def share_this_thread(self) -> None: ...
    def ensure_schema(self, script: str, added_columns: list[tuple[str, str, str]]) -> None: ...
    def close(self) -> None: ...


def connect(target: Path | str) -> Database:
    """A PostgreSQL database for a postgresql:// URL, else an SQLite file."""
    if is_postgres_url(target):
        return PostgresDatabase(str(target))
    return SqliteDatabase(Path(target))


class _Result:
    """A statement's rows, fetched before its connection goes back to the pool."""

    def __init__(self, rows: list[Any], rowcount: int):
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


# --- SQLite ---------------------------------------------------------------------

class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def lock(self, *key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE holds the database's one write lock."""


class SqliteDatabase:
    """One connection per thread (WAL: readers never wait for the writer);
    threads that asked to share (share_this_thread) borrow one of a few
    shared connections for each statement or transaction instead."""

    dialect = "sqlite"
    greatest = "MAX"
    SHARED = 4  # connections shared by the sharing threads of a process

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._idle: list[sqlite3.Connection] = []  # shared connections not lent
        self._lendable = threading.BoundedSemaphore(self.SHARED)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def share_this_thread(self) -> None:
        """From now on this thread holds no connection of its own (one costs
        about 150 KB): for the threads of long requests, which read rarely and
        of which there may be a thousand (event streams)."""
        conn = self._local.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()
        self._local.sharing = True

    def _borrows(self) -> bool:
        """Whether this thread shares and holds no connection just now."""
        return getattr(self._local, "sharing", False) and \
            self._local.__dict__.get("conn") is None

    @contextmanager
    def _lent(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection: its own, or one lent for the duration."""
        if not self._borrows():
            yield self.conn
            return
        with self._lendable:
            conn = self._idle.pop() if self._idle else self._connect()
            self._local.conn = conn  # a transaction's statements use it too
            try:
                yield conn
            finally:
                self._local.conn = None
                self._idle.append(conn)

    def execute(self, sql: str, params: Params = ()) -> Rows:
        if not self._borrows():
            return self.conn.execute(sql, params)
        with self._lent() as conn:  # the rows are read before it goes back
            cursor = conn.execute(sql, params)
            return _Result(cursor.fetchall(), cursor.rowcount)

    @contextmanager
    def tx(self) -> Iterator[_SqliteTx]:
        with self._lent() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def ensure_schema(self, script: str, added_columns: list[tuple[str, str, str]]) -> None:
        # Replicas (or threads) opening a new file at once: a transaction that
        # reads the schema and then writes it can be refused at once ("database
        # is locked"; SQLite skips the busy timeout where waiting could deadlock).
        # Nothing was written then: try again.
        for attempt in itertools.count():
            try:
                return self._ensure_schema(script, added_columns)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt >= 200:
                    raise
                self.close()
                time.sleep(0.05)

    def _ensure_schema(self, script: str, added_columns: list[tuple[str, str, str]]) -> None:
        self.conn.executescript(script)  # executescript manages its own transaction
        for table, column, decl in added_columns:
            have = {r["name"] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process won
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        """Close this thread's own connection (and the shared ones not lent)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        while self._idle:
            self._idle.pop().close()


# --- PostgreSQL -----------------------------------------------------------------

class Row(tuple):
    """A row read by position or by column name, like sqlite3.Row."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        return super().__getitem__(self._index[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor: Any) -> Any:
    """psycopg row factory making Row objects."""
    index = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # The store's SQL has no literal `?` or `%`: every `?` is a placeholder.
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_types(ddl: str) -> str:
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)


def _run(conn: Any, sql: str, params: Params) -> _Result:
    cur = conn.execute(_pg_sql(sql), tuple(params)) if params else conn.execute(sql)
    return _Result(cur.fetchall() if cur.description else [], cur.rowcount)


class _PostgresTx:
    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Params = ()) -> _Result:
        return _run(self.conn, sql, params)

    def lock(self, *key: str) -> None:
        """Wait for, then hold until commit, the advisory lock of `key`."""
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                          ("\x1f".join(key),))


class PostgresDatabase:
    """A connection pool shared by the threads of one process (API requests,
    the runner's threads); each statement or transaction borrows a connection."""

    dialect = "postgresql"
    greatest = "GREATEST"
    POOL_SIZE = 16  # connections per process at most; the server allows 100 by default

    def __init__(self, url: str):
        from psycopg_pool import ConnectionPool

        probe(url)  # a wrong URL or an unreachable server fails here, clearly
        # check: a connection the server dropped (restart, failover) is replaced
        # before use instead of failing a request. prepare_threshold=None: no
        # server-side prepared statements, whose cached `SELECT *` plans fail
        # once a newer replica adds a column during a rolling upgrade (they
        # would not survive a transaction-pooling PgBouncer either).
        self._pool = ConnectionPool(url, min_size=1, max_size=self.POOL_SIZE, open=True,
                                    kwargs={"autocommit": True, "row_factory": _rows,
                                            "prepare_threshold": None},
                                    check=ConnectionPool.check_connection,
                                    name="stackspace-store")

    def execute(self, sql: str, params: Params = ()) -> _Result:
        with self._pool.connection() as conn:
            return _run(conn, sql, params)

    def share_this_thread(self) -> None:
        """Every thread shares the pool already."""

    @contextmanager
    def tx(self) -> Iterator[_PostgresTx]:
        with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    def ensure_schema(self, script: str, added_columns: list[tuple[str, str, str]]) -> None:
        """Only the DDL that is missing runs: even an `ADD COLUMN IF NOT EXISTS`
        takes an exclusive table lock, which would wait for (and can deadlock
        with) the transactions of replicas already at work."""
        names = re.findall(r"(?:TABLE|INDEX) IF NOT EXISTS (\w+)", script)
        with self.tx() as tx:
            tx.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            have = {r[0] for r in tx.conn.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace ="
                " current_schema()::regnamespace")}
            if not set(names) <= have:
                tx.conn.execute(_pg_types(script))
            columns = {(r[0], r[1]) for r in tx.conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema()")}
            for table, column, decl in added_columns:
                if (table, column) not in columns:
                    tx.conn.execute(_pg_types(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}"))

    def close(self) -> None:
        self._pool.close()


def has_object(db: Database, name: str) -> bool:
    """Whether a table, index or trigger named `name` exists (in the current schema)."""
    if db.dialect == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE name = ?"
    else:
        sql = ("SELECT 1 FROM pg_class WHERE relname = ? AND relnamespace ="
               " current_schema()::regnamespace UNION ALL SELECT 1 FROM pg_trigger"
               " WHERE tgname = ?")
    params = (name,) if db.dialect == "sqlite" else (name, name)
    return db.execute(sql, params).fetchone() is not None


@contextmanager
def schema_change(db: Database) -> Iterator[Tx]:
    """A transaction for DDL that replicas starting at once must run only once:
    on PostgreSQL it holds the schema lock (ensure_schema's); SQLite's
    BEGIN IMMEDIATE already serialises it. Check again inside before changing."""
    with db.tx() as tx:
        if db.dialect == "postgresql":
            tx.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        yield tx
