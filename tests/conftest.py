"""Shared fixtures.  Tests import the installed package (``--import-mode=importlib``);
this folder goes on sys.path only so the test modules can share ``support.py``."""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

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


#: resources of the two simulated machines of the test cluster (see ray_cluster)
RAY_HEAD = {"head": 1, "slot": 1, "spot": 1}
RAY_NODE2 = {"node2": 1, "slot": 1}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real Ray cluster of two simulated machines on this one (``ray.cluster_utils.Cluster``),
    started once per test session and shut down after, with this process connected to it.

    Each machine has one CPU and a small object store.  Custom resources place actors:
    ``slot`` (one on each machine: ``workers=2`` with ``resources={"slot": 1}`` puts one
    actor on each), ``head`` / ``node2`` (one machine), ``spot`` (the head only; tests
    that remove a machine add one with another ``spot``).
    """
    ray = pytest.importorskip("ray", reason="needs Ray: pip install 'pyreflux[ray]'")
    from ray.cluster_utils import Cluster

    store = 150 * 1024 * 1024
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "resources": RAY_HEAD, "object_store_memory": store})
    try:
        cluster.add_node(num_cpus=1, resources=RAY_NODE2, object_store_memory=store)
        cluster.wait_for_nodes()
        # Ray puts the driver's working directory on its workers' sys.path; here that is
        # the checkout, whose uncompiled reflux_core/ would shadow the installed one
        here = os.getcwd()
        os.chdir(tempfile.gettempdir())
        try:
            ray.init(address=cluster.address)
        finally:
            os.chdir(here)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()

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
