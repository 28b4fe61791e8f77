"""The machine's PostgreSQL for the tests (127.0.0.1:5432, trust auth; ``WPSB_TEST_PG`` names another
server): one private database per test session, dropped at the end, and a fresh schema per test
(its URL sets ``search_path``), so that tests never see each other's queues."""

from __future__ import annotations

import os
import uuid
from typing import Iterator
from urllib.parse import quote

import psycopg
import pytest

SERVER = os.environ.get("WPSB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"the tests of the PostgreSQL store need a server at {SERVER} ({exc}); "
                           "start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main "
                           "start) or name another in WPSB_TEST_PG") from None


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of this session's private database."""
    name = f"wpsb_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = SERVER.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A URL whose connections see only a new, empty schema of the session's database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{pg_database}?options={quote(f'-csearch_path={schema}')}"
