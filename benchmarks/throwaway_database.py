"""A database and data directory that live for one benchmark run, for benchmarks that
run Django in their own process (bookkeeping_benchmark.py, shutdown_benchmark.py)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def throwaway_database(database: str, prefix: str) -> Iterator[Path]:
    """Point JMIRROR_DATA_DIR at a new temporary directory and DATABASE_URL at a new
    database: ``sqlite`` (a file in that directory) or a PostgreSQL server URL without a
    database name (a new database there, dropped at the end, connections closed first).
    Yields the directory; Django is not set up yet."""
    directory = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.environ["JMIRROR_DATA_DIR"] = str(directory)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "jmirror_web.settings")
    if database == "sqlite":
        os.environ["DATABASE_URL"] = f"sqlite:///{directory / 'db.sqlite3'}"
        yield directory
        return
    import psycopg

    server = database.rstrip("/")
    name = f"{prefix.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = f"{server}/{name}"
    try:
        yield directory
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
