"""Operations by status at a cost that does not grow with history (metrics).

Queued and running operations are counted live (the status index: as many
rows as there is work in flight). Ended ones are counted in a summary table,
`operation_totals`, which database triggers keep as operations change
status, so every writer (whatever statement ends an operation) keeps it
right and retention (service.retention) may delete old rows without
changing the totals. An existing store is seeded from its rows once, in the
transaction that installs the triggers (which holds off writers until then).
"""

from __future__ import annotations

from service.db import Database, has_object, schema_change

ENDED = ("succeeded", "failed", "cancelled")
_ENDED_SQL = "(" + ", ".join(f"'{s}'" for s in ENDED) + ")"

TABLE = ("CREATE TABLE IF NOT EXISTS operation_totals ("
         " status TEXT PRIMARY KEY, n INTEGER NOT NULL)")
_BUMP = ("INSERT INTO operation_totals(status, n) VALUES (NEW.status, 1)"
         " ON CONFLICT(status) DO UPDATE SET n = operation_totals.n + 1")
_DROP = "UPDATE operation_totals SET n = n - 1 WHERE status = OLD.status"
TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS ops_total_insert AFTER INSERT ON operations"
        f" WHEN NEW.status IN {_ENDED_SQL} BEGIN {_BUMP}; END",
        f"CREATE TRIGGER IF NOT EXISTS ops_total_end AFTER UPDATE OF status ON operations"
        f" WHEN NEW.status IN {_ENDED_SQL} AND NEW.status IS NOT OLD.status"
        f" BEGIN {_BUMP}; END",
        f"CREATE TRIGGER IF NOT EXISTS ops_total_unend AFTER UPDATE OF status ON operations"
        f" WHEN OLD.status IN {_ENDED_SQL} AND NEW.status IS NOT OLD.status"
        f" BEGIN {_DROP}; END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION stackspace_ops_total() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN"
        f" IF TG_OP = 'UPDATE' AND OLD.status IN {_ENDED_SQL} THEN {_DROP}; END IF;"
        f" IF NEW.status IN {_ENDED_SQL} THEN {_BUMP}; END IF;"
        " RETURN NULL; END $$",
        "CREATE TRIGGER ops_total_insert AFTER INSERT ON operations FOR EACH ROW"
        f" WHEN (NEW.status IN {_ENDED_SQL}) EXECUTE FUNCTION stackspace_ops_total()",
        "CREATE TRIGGER ops_total_update AFTER UPDATE OF status ON operations FOR EACH ROW"
        " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION"
        " stackspace_ops_total()",
    ],
}
_LAST_TRIGGER = "ops_total_update"  # made last: its presence means all is installed
SEED = ("INSERT INTO operation_totals(status, n) SELECT status, COUNT(*) FROM operations"  # noqa: S608
        f" WHERE status IN {_ENDED_SQL} GROUP BY status")


def install(db: Database) -> None:
    """Create the totals table and its triggers once (idempotent, replica-safe)."""
    last = _LAST_TRIGGER if db.dialect == "postgresql" else "ops_total_unend"
    if has_object(db, last):
        return
    with schema_change(db) as tx:
        if has_object(db, last):  # another replica was first
            return
        tx.execute(TABLE)
        # Triggers before the seed: on PostgreSQL CREATE TRIGGER locks out the
        # writers of `operations` until commit, so none ends in between.
        for ddl in TRIGGERS[db.dialect]:
            tx.execute(ddl)
        tx.execute("DELETE FROM operation_totals")
        tx.execute(SEED)


def by_status(db: Database) -> dict[str, int]:
    """Operations by status: live for queued/running, totals for ended ones.
    Statuses with none are left out."""
    counts = {status: n for status, n in db.execute(
        "SELECT status, COUNT(*) FROM operations WHERE status IN ('queued', 'running')"
        " GROUP BY status")}
    counts.update({status: n for status, n in db.execute(
        "SELECT status, n FROM operation_totals") if n})
    return {k: v for k, v in counts.items() if v}
