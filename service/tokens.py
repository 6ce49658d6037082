"""API tokens (SPEC §4, §8): stored hashed, owned by a user (admin through
its user), optionally named and expiring, revocable; the service's admin
token is made once and printed once.

A token's value is shown once, when it is minted; afterwards a token is
known by its id. Revoking deletes the row, so a revoked token and one that
never existed look alike (401). The admin ("bootstrap") tokens are those the
service itself made for the built-in user `admin` (or took from
STACKSPACE_ADMIN_TOKEN); `rotate_admin` replaces them.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.db import Database, has_object, schema_change

if TYPE_CHECKING:
    from service.store import Store

ADMIN_USER = "admin"
PREFIX = "ssp_"
# What a list shows of a token: never its value or its hash. A row an older
# replica wrote during a rolling upgrade has no id yet: it reads as the one
# `migrate` will give it.
COLUMNS = ('COALESCE(t.id, substr(t.hash, 1, 16)) AS id, t."user", t.name, t.created,'
           " t.expires, u.admin")
BY_ID = "(id = ? OR (id IS NULL AND substr(hash, 1, 16) = ?))"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_value() -> str:
    return f"{PREFIX}{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    user: str
    name: str | None
    created: float
    expires_at: float | None
    admin: bool

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.user, "name": self.name, "admin": self.admin,
                "created": self.created, "expires_at": self.expires_at}


def _info(row: Any) -> TokenInfo:
    return TokenInfo(row["id"], row["user"], row["name"], row["created"], row["expires"],
                     bool(row["admin"]))


def migrate(db: Database) -> None:
    """Tokens stored before ids existed get one (a prefix of their hash: stable,
    and no way back to the value); those of the built-in admin user were the
    admin tokens each start minted, so they stay the admin's tokens and an
    upgraded service prints no new one."""
    legacy = db.execute("SELECT 1 FROM tokens WHERE id IS NULL LIMIT 1").fetchone()
    if legacy is None and has_object(db, "tokens_by_id"):
        return
    with schema_change(db) as tx:
        tx.execute("UPDATE tokens SET id = substr(hash, 1, 16), bootstrap = CASE WHEN"
                   ' "user" = ? THEN 1 ELSE 0 END WHERE id IS NULL', (ADMIN_USER,))
        tx.execute("CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_id ON tokens(id)")


def mint(store: Store, user: str, *, admin: bool | None = None, name: str | None = None,
         expires_at: float | None = None, value: str | None = None,
         bootstrap: bool = False) -> tuple[str, TokenInfo]:
    """Create `user` if needed (admin: set its flag; None keeps it) and a new
    token for it; returns (value, info). The value is never stored."""
    value = value or new_value()
    now = time.time()
    token_id = secrets.token_hex(8)
    with store.tx() as db:
        _ensure_user(db, user, admin, now)
        db.execute('INSERT INTO tokens(hash, id, "user", name, created, expires, bootstrap)'
                   " VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                   (hash_token(value), token_id, user, name, now, expires_at, int(bootstrap)))
        row = db.execute(f'SELECT {COLUMNS} FROM tokens t JOIN users u ON u.name = t."user"'  # noqa: S608
                         " WHERE t.hash = ?", (hash_token(value),)).fetchone()
    return value, _info(row)


def _ensure_user(db: Any, user: str, admin: bool | None, now: float) -> None:
    if admin is None:
        db.execute("INSERT INTO users(name, admin, created) VALUES (?,0,?)"
                   " ON CONFLICT(name) DO NOTHING", (user, now))
    else:
        db.execute("INSERT INTO users(name, admin, created) VALUES (?,?,?) "
                   "ON CONFLICT(name) DO UPDATE SET admin=excluded.admin",
                   (user, int(admin), now))


def tokens(store: Store, owner: str | None = None) -> list[TokenInfo]:
    """Tokens of `owner` (None: everyone's), oldest first; expired ones too
    (until retention drops them), so their owner sees why one stopped working."""
    sql = f'SELECT {COLUMNS} FROM tokens t JOIN users u ON u.name = t."user"'  # noqa: S608
    if owner is None:
        rows = store.db.execute(sql + " ORDER BY t.created, t.id")
    else:
        rows = store.db.execute(sql + ' WHERE t."user" = ? ORDER BY t.created, t.id', (owner,))
    return [_info(r) for r in rows]


def revoke(store: Store, token_id: str, owner: str | None = None) -> bool:
    """Delete a token (only `owner`'s, unless None); False if there was none."""
    with store.tx() as db:
        if owner is None:
            cur = db.execute(f"DELETE FROM tokens WHERE {BY_ID}",  # noqa: S608
                             (token_id, token_id))
        else:
            cur = db.execute(f'DELETE FROM tokens WHERE {BY_ID} AND "user" = ?',  # noqa: S608
                             (token_id, token_id, owner))
        return cur.rowcount > 0


def ensure_admin(store: Store, value: str | None) -> str | None:
    """At service start: the admin token. `value` (STACKSPACE_ADMIN_TOKEN) is
    added if new; without it, one is generated only if no admin token exists
    yet. Returns the token to print once, or None (nothing new to show).
    Replicas starting at once agree: the check and the insert hold one lock."""
    if value:
        mint(store, ADMIN_USER, admin=True, value=value, bootstrap=True,
             name="STACKSPACE_ADMIN_TOKEN")
        return None
    with store.tx() as db:
        db.lock("tokens", "admin")
        if db.execute("SELECT 1 FROM tokens WHERE bootstrap = 1 AND expires IS NULL LIMIT 1"
                      ).fetchone():
            return None
        return _new_admin_token(db)


def rotate_admin(store: Store) -> str:
    """Revoke every admin token and make a new one, in one transaction; returns it."""
    with store.tx() as db:
        db.lock("tokens", "admin")
        db.execute("DELETE FROM tokens WHERE bootstrap = 1")
        return _new_admin_token(db)


def _new_admin_token(db: Any) -> str:
    value, now = new_value(), time.time()
    _ensure_user(db, ADMIN_USER, True, now)
    db.execute('INSERT INTO tokens(hash, id, "user", name, created, bootstrap)'
               " VALUES (?,?,?,?,?,1)",
               (hash_token(value), secrets.token_hex(8), ADMIN_USER, "admin", now))
    return value


def prune_expired(store: Store, before: float) -> int:
    """Drop tokens that expired before `before` (retention)."""
    with store.tx() as db:
        return db.execute("DELETE FROM tokens WHERE expires IS NOT NULL AND expires < ?",
                          (before,)).rowcount
