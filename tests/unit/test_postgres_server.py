"""The PostgreSQL test server (scripts/test-postgres) and its per-test databases."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import create_database, drop_database


def test_each_test_database_is_fresh_and_separate(new_database):
    first, second = new_database("pg_harness"), new_database("pg_harness")
    assert first != second and first.startswith("postgresql://stackspace@127.0.0.1:25432/")
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE marker (x int)")
    with psycopg.connect(second) as conn:
        assert conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None


def test_a_dropped_database_is_gone_even_with_clients_left(postgres_url: str):
    url = create_database(postgres_url, "pg_harness_drop")
    left_open = psycopg.connect(url)  # a store that was never closed
    drop_database(postgres_url, url)
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname=%s",
                            (name,)).fetchone() is None
    with pytest.raises(psycopg.OperationalError):  # its session was ended by the drop
        left_open.execute("SELECT 1")
    left_open.close()
