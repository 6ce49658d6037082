"""A number that changes whenever what the workspace views show may have
changed (service.views), on SQLite: an unchanged listing is served from its
rendered copy after one cheap query instead of a query of every row.

Why SQLite only: the Python driver hands the GIL over at every row it steps
through, and with several request threads each handover waits for another
thread (a page of 50 rows cost 51 of them). psycopg reads a whole result in
one round trip, and a counter row written by every transaction would
serialise PostgreSQL's writers (replicas), which SQLite serialises anyway.

Triggers keep it, so every writer (this process, the runner's workers, any
statement) bumps it, in the transaction that makes the change: a reader
that sees the old number has not seen the change either.
"""

from __future__ import annotations

from service.db import Database, has_object, schema_change

TABLE = ("CREATE TABLE IF NOT EXISTS listing_version ("
         " id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)")
# The views read the workspaces and their operations (each one's newest).
TRIGGERS = [f"CREATE TRIGGER IF NOT EXISTS listing_{table}_{event.lower()} AFTER {event}"  # noqa: S608 - fixed names
            f" ON {table} BEGIN UPDATE listing_version SET n = n + 1; END"
            for table in ("workspaces", "operations")
            for event in ("INSERT", "UPDATE", "DELETE")]
_LAST = "listing_operations_delete"  # made last: its presence means all is installed


def install(db: Database) -> None:
    """Create the counter and its triggers once (idempotent; SQLite only)."""
    if db.dialect != "sqlite" or has_object(db, _LAST):
        return
    with schema_change(db) as tx:
        tx.execute(TABLE)
        tx.execute("INSERT OR IGNORE INTO listing_version(id, n) VALUES (1, 0)")
        for ddl in TRIGGERS:
            tx.execute(ddl)


def read(db: Database) -> int | None:
    """The current number; None where there is none (PostgreSQL)."""
    if db.dialect != "sqlite":
        return None
    return db.execute("SELECT n FROM listing_version").fetchone()[0]
