"""Shared fixtures.  Tests import the installed package (``--import-mode=importlib``);
this folder goes on sys.path only so the test modules can share ``support.py``."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Every test must leave no pipeline threads (nor watchdog or metrics threads) behind."""
    yield
    deadline = time.monotonic() + 10
    left: list[str] = []
    while time.monotonic() < deadline:
        # "reflux:" pipeline workers; "reflux-" helpers (the watchdog, a metrics server)
        left = [t.name for t in threading.enumerate() if t.name.startswith(("reflux:", "reflux-"))]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"reflux threads left behind: {left}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of the test session (see pgserver.py): its connection string.
    Skips where no server binary (or no psycopg) is installed."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'pyreflux[postgres]')")
    from pgserver import PostgresServer, find_bindir
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    with PostgresServer(bindir) as server:
        yield server.conninfo


@pytest.fixture
def pg(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server: its connection string."""
    import uuid

    import psycopg
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
