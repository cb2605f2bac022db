"""The SQLite and PostgreSQL connectors, against the real databases (the PostgreSQL tests
start a throwaway server: see pgserver.py; they skip only where no server binary exists)."""
from __future__ import annotations

from contextlib import closing
import sqlite3
import threading
from typing import Any

import numpy as np
import pytest

from reflux import Checkpoint, Extractor, Loader, NodeError, Pipeline, Transformer
from reflux.connectors.sqlite import SqliteSource, read_sqlite, write_sqlite

CREATE = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT, score REAL)"


def rows_of(db: str, sql: str = "SELECT id, name, score FROM t ORDER BY id") -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn, conn:
        return conn.execute(sql).fetchall()


def make_db(path: Any, n: int) -> str:
    db = str(path)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(CREATE)
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i}", i / 2) for i in range(n)])
    return db


# --------------------------------------------------------------------------- SQLite

def test_sqlite_sink_takes_dicts_tuples_and_record_chunks(tmp_path: Any) -> None:
    db = str(tmp_path / "o.db")
    dicts = [{"id": i, "name": f"n{i}", "score": i / 2} for i in range(10)]
    result = Pipeline(Extractor(dicts) >> write_sqlite(db, "t", create=CREATE, name="s")).run()
    assert result.results["s"] == 10
    Pipeline(Extractor([(i, f"n{i}", i / 2) for i in range(10, 20)])
             >> write_sqlite(db, "t", name="s")).run()
    chunk = np.zeros(5, dtype=[("id", "<i8"), ("name", "U4"), ("score", "<f8")])
    chunk["id"] = np.arange(20, 25)
    chunk["name"] = [f"n{i}" for i in range(20, 25)]
    chunk["score"] = chunk["id"] / 2
    Pipeline(Extractor([chunk]) >> write_sqlite(db, "t", name="s")).run()  # fields as columns
    assert rows_of(db) == [(i, f"n{i}", i / 2) for i in range(25)]
    with pytest.raises(NodeError, match="has no column 'score'"):
        Pipeline(Extractor([{"id": 99, "name": "x"}]) >> write_sqlite(db, "t", columns=["id", "name", "score"],
                                                                      name="s")).run()


def test_sqlite_sink_commits_every_n_rows_without_checkpoints(tmp_path: Any) -> None:
    db = str(tmp_path / "o.db")
    seen: list[int] = []
    gate = threading.Event()

    def watch(x: int) -> tuple[int, str, float]:
        if x == 2_500:
            with closing(sqlite3.connect(db)) as conn, conn:  # another connection sees what is committed
                seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
            gate.set()
        return (x, "", 0.0)

    Pipeline(Extractor(range(3_000), batch_size=100) >> Transformer(watch, name="w")
             >> write_sqlite(db, "t", create=CREATE, commit_every=1_000, name="s")).run()
    assert gate.is_set() and 1_000 <= seen[0] < 2_500  # committed after the batches that crossed 1,000s
    assert len(rows_of(db)) == 3_000


def test_sqlite_sink_a_refused_batch_goes_to_the_policy_and_the_rest_stays(tmp_path: Any) -> None:
    db = make_db(tmp_path / "o.db", 0)
    items = [(i, "x", 0.0) for i in range(100)] + [(5, "dup", 0.0)] + [(i, "y", 0.0) for i in range(100, 200)]
    result = Pipeline(Extractor(items, batch_size=10) >> write_sqlite(db, "t", name="s", on_error="skip")).run()
    ids = [r[0] for r in rows_of(db)]
    # the batch holding the duplicate key was rolled back alone (a savepoint), then skipped
    assert 0 < result["s"].errors <= 10 and result["s"].errors + len(ids) == 201
    assert 5 in ids and len(ids) == len(set(ids)) and set(range(150, 200)) <= set(ids)
    assert result.loaded == len(ids)
    result.check_accounting()


def test_sqlite_sink_upsert_statement_and_pragmas(tmp_path: Any) -> None:
    db = make_db(tmp_path / "o.db", 3)
    Pipeline(Extractor([(1, "one", 9.0), (7, "seven", 7.0)])
             >> write_sqlite(db, "t", name="s", pragmas={"journal_mode": "WAL"},
                             statement="INSERT INTO t VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                                       "name = excluded.name, score = excluded.score")).run()
    assert rows_of(db) == [(0, "n0", 0.0), (1, "one", 9.0), (2, "n2", 1.0), (7, "seven", 7.0)]
    assert rows_of(db, "PRAGMA journal_mode") == [("wal",)]
    with pytest.raises(ValueError, match="not a pragma"):
        write_sqlite(db, "t", pragmas={"x; drop": 1})


def test_sqlite_source_rows_dicts_params_and_resuming(tmp_path: Any) -> None:
    db = make_db(tmp_path / "i.db", 1_000)
    out = Loader.to_list(name="out")
    got = Pipeline(read_sqlite(db, "SELECT id, name FROM t WHERE id < ?", (5,)) >> out).run().results["out"]
    assert got == [(0, "n0"), (1, "n1"), (2, "n2"), (3, "n3"), (4, "n4")]
    out = Loader.to_list(name="out")
    got = Pipeline(read_sqlite(db, "SELECT id FROM t WHERE id >= :lo", {"lo": 998}, as_dict=True)
                   >> out).run().results["out"]
    assert got == [{"id": 998}, {"id": 999}]
    for key in ("id", None):
        src = SqliteSource(db, "SELECT id, name FROM t WHERE id % 2 = 0", key=key)
        src.open()
        first = src.read_batch(123) + src.read_batch(77)
        state = src.state()
        src.close()
        again = SqliteSource(db, "SELECT id, name FROM t WHERE id % 2 = 0", key=key)
        again.open()
        again.restore(state)
        rest: list[Any] = []
        while batch := again.read_batch(50):
            rest += batch
        again.close()
        assert [r[0] for r in first + rest] == list(range(0, 1_000, 2)), key
    with pytest.raises(NodeError, match="key 'nope' is not a column"):
        Pipeline(read_sqlite(db, "SELECT id FROM t", key="nope") >> Loader.to_list()).run()
    with pytest.raises(NodeError, match="no such database file"):
        Pipeline(read_sqlite(str(tmp_path / "none.db"), "SELECT 1") >> Loader.to_list()).run()


def test_sqlite_to_sqlite_resumes_by_key_exactly_once(tmp_path: Any) -> None:
    src_db = make_db(tmp_path / "i.db", 5_000)
    dst = str(tmp_path / "o.db")
    armed = {"on": True}

    def copy(r: tuple[int, str, float]) -> tuple[int, str, float]:
        if armed["on"] and r[0] == 3_210:
            armed["on"] = False
            raise RuntimeError("crash")
        return r

    def build() -> Pipeline:
        return Pipeline(read_sqlite(src_db, "SELECT id, name, score FROM t", key="id", name="src")
                        >> Transformer(copy, name="copy") >> write_sqlite(dst, "t", create=CREATE, name="dst"),
                        checkpoint=Checkpoint(str(tmp_path / "c"), every=500, seconds=None))

    with pytest.raises(NodeError):
        build().run()
    result = build().run()
    assert result.checkpoint.resumed_from is not None
    assert rows_of(dst) == rows_of(src_db)


# --------------------------------------------------------------------------- PostgreSQL

def pg_rows(conninfo: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg
    with psycopg.connect(conninfo) as conn:
        return conn.execute(sql).fetchall()


def pg_exec(conninfo: str, sql: str) -> None:
    import psycopg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


PG_CREATE = "CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION)"


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_postgres_sink_dicts_tuples_and_record_chunks(pg: str, method: str) -> None:
    from reflux.connectors.postgres import write_postgres
    dicts = [{"id": i, "name": f"n{i}", "score": i / 2} for i in range(300)]
    result = Pipeline(Extractor(dicts) >> write_postgres("t", conninfo=pg, create=PG_CREATE, method=method,
                                                         name="s")).run()
    assert result.results["s"] == 300
    Pipeline(Extractor([(i, f"n{i}", i / 2) for i in range(300, 310)])
             >> write_postgres("t", conninfo=pg, method=method, name="s")).run()
    chunk = np.zeros(3, dtype=[("id", "<i8"), ("score", "<f8")])
    chunk["id"] = [310, 311, 312]
    Pipeline(Extractor([chunk]) >> write_postgres("t", conninfo=pg, method=method, name="s")).run()
    got = pg_rows(pg, "SELECT id, name, score FROM t ORDER BY id")
    assert got[:310] == [(i, f"n{i}", i / 2) for i in range(310)]
    assert got[310:] == [(310, None, 0.0), (311, None, 0.0), (312, None, 0.0)]


def test_postgres_connects_with_the_pg_environment(postgres_server: str, monkeypatch: Any) -> None:
    from reflux.connectors.postgres import read_postgres
    parts = dict(p.split("=", 1) for p in postgres_server.split())
    monkeypatch.setenv("PGHOST", parts["host"])
    monkeypatch.setenv("PGPORT", parts["port"])
    monkeypatch.setenv("PGUSER", parts["user"])
    monkeypatch.setenv("PGDATABASE", parts["dbname"])
    out = Loader.to_list(name="out")
    assert Pipeline(read_postgres("SELECT 41 + 1 AS answer", as_dict=True) >> out).run().results["out"] == \
        [{"answer": 42}]


def test_postgres_copy_refused_row_fails_the_run_whatever_the_policy(pg: str) -> None:
    from reflux.connectors.postgres import write_postgres
    items = [(i, "x", 0.0) for i in range(50)] + [(7, "dup", 0.0)]
    with pytest.raises(NodeError, match="TransactionAborted.*refused a row"):
        Pipeline(Extractor(items) >> write_postgres("t", conninfo=pg, create=PG_CREATE, on_error="skip",
                                                    name="s")).run()
    assert pg_rows(pg, "SELECT count(*) FROM t") == [(0,)]  # the transaction is gone


def test_postgres_insert_refused_batch_goes_to_the_policy(pg: str) -> None:
    from reflux.connectors.postgres import write_postgres
    items = [(i, "x", 0.0) for i in range(100)] + [(5, "dup", 0.0)] + [(i, "y", 0.0) for i in range(100, 200)]
    result = Pipeline(Extractor(items, batch_size=10)
                      >> write_postgres("t", conninfo=pg, create=PG_CREATE, method="insert", retries=0,
                                        on_error="skip", name="s")).run()
    ids = [r[0] for r in pg_rows(pg, "SELECT id FROM t")]
    # PostgreSQL aborts the whole transaction: the batches before it were written again
    assert 0 < result["s"].errors <= 10 and result["s"].errors + len(ids) == 201
    assert set(range(50)) <= set(ids) and set(range(150, 200)) <= set(ids) and len(ids) == len(set(ids))
    result.check_accounting()


def test_postgres_sink_and_source_reconnect_after_losing_the_connection(pg: str) -> None:
    from reflux.connectors.postgres import read_postgres, write_postgres
    pg_exec(pg, PG_CREATE.replace(" t ", " src "))
    pg_exec(pg, "INSERT INTO src SELECT g, 'n' || g, g / 2.0 FROM generate_series(0, 9999) AS g")
    killed = []

    def kill_others(r: tuple[int, str, float]) -> tuple[int, str, float]:
        if r[0] in (2_000, 6_000):  # drop every other connection to the database: the source's and the sink's
            killed.append(pg_rows(pg, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][0])
        return r

    result = Pipeline(read_postgres("SELECT id, name, score FROM src", conninfo=pg, key="id", name="src",
                                    backoff=0.05)
                      >> Transformer(kill_others, name="kill", fuse=False)
                      >> write_postgres("t", conninfo=pg, create=PG_CREATE, name="dst", backoff=0.05)).run()
    assert killed and all(n >= 1 for n in killed)
    assert result["src"].retried + result["dst"].retried >= 1
    assert pg_rows(pg, "SELECT id, name, score FROM t ORDER BY id") == \
        pg_rows(pg, "SELECT id, name, score FROM src ORDER BY id")


def at_commit(conninfo: str, *, sleep: float = 0.0, refuse: int = -1, every: int = 1_000) -> None:
    """A deferred trigger on ``t``, run by the server at each COMMIT: sleeps ``sleep`` seconds
    at each ``every``-th id, and refuses the row ``refuse``."""
    pg_exec(conninfo, PG_CREATE)
    pg_exec(conninfo, f"""
        CREATE FUNCTION at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id % {every} = {every} - 1 THEN PERFORM pg_sleep({sleep}); END IF;
            IF NEW.id = {refuse} THEN RAISE EXCEPTION 'row % refused at the commit', NEW.id; END IF;
            RETURN NULL;
        END $$""")
    pg_exec(conninfo, "CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED "
                      "FOR EACH ROW EXECUTE FUNCTION at_commit()")


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_postgres_sink_goes_on_while_the_server_commits(pg: str, monkeypatch: Any, method: str) -> None:
    """A commit is sent, and the sink's next calls collect the answer: with ``COPY`` the rows
    of calls that come before it wait in memory, up to ``commit_every`` rows, then a call
    waits.  Here each commit takes 0.2 s at the server."""
    from reflux.connectors.postgres import PostgresSink, write_postgres
    at_commit(pg, sleep=0.2)
    answers: list[tuple[bool, bool]] = []
    waiting: list[int] = []  # rows kept in memory at each look for the answer
    real = PostgresSink._commit_answered

    def answered(self: Any, block: bool) -> bool:
        waiting.append(sum(map(len, self._later)))
        done = real(self, block)
        answers.append((block, done))
        return done

    monkeypatch.setattr(PostgresSink, "_commit_answered", answered)
    rows = [(i, f"n{i}", i / 2) for i in range(5_000)]
    result = Pipeline(Extractor(rows, batch_size=100)
                      >> write_postgres("t", conninfo=pg, method=method, commit_every=1_000, name="s")).run()
    assert result.results["s"] == 5_000
    assert pg_rows(pg, "SELECT id, name, score FROM t ORDER BY id") == rows
    if method == "copy":
        assert (False, False) in answers  # a call went on before the answer came
        # then one waited, holding commit_every rows (and less than one batch more)
        assert 1_000 <= max(waiting) < 2_000 and (True, True) in answers
    else:
        assert all(block for block, _ in answers)  # a call waits: a refused batch stays its own


@pytest.mark.parametrize("commit", ["inline", "beside"])
def test_postgres_checkpoint_refused_at_its_commit_fails_the_run_and_a_restart_resumes(pg: str, tmp_path: Any,
                                                                                      commit: str) -> None:
    """The server refuses a checkpoint's transaction at the COMMIT, which the pipeline did not
    wait for (inline: sent from the pipeline's thread; beside: from a thread of its own): the
    run still fails naming it, the table holds what earlier checkpoints committed, and a
    restart finishes exactly once."""
    from reflux.connectors.postgres import write_postgres
    at_commit(pg, refuse=2_345)

    def build() -> Pipeline:
        return Pipeline(Extractor(range(5_000), batch_size=100) >> Transformer(as_pg_row, name="row")
                        >> write_postgres("t", conninfo=pg, name="s"), name="refused",
                        checkpoint=Checkpoint(str(tmp_path / "c"), every=500, seconds=None, commit=commit))

    with pytest.raises(NodeError, match="row 2345 refused at the commit") as failed:
        build().run()
    assert failed.value.result is not None and failed.value.result.status == "failed"
    kept = [r[0] for r in pg_rows(pg, "SELECT id FROM t ORDER BY id")]
    assert kept == list(range(len(kept))) and 0 < len(kept) <= 2_345
    assert pg_rows(pg, "SELECT checkpoint FROM reflux_checkpoints") == [(failed.value.result.checkpoint.last,)]
    pg_exec(pg, "DROP TRIGGER at_commit ON t")
    result = build().run()
    assert result.checkpoint.resumed_from == failed.value.result.checkpoint.last
    assert [r[0] for r in pg_rows(pg, "SELECT id FROM t ORDER BY id")] == list(range(5_000))


def as_pg_row(i: int) -> tuple[int, str, float]:
    return (i, f"n{i}", i / 2)


@pytest.mark.parametrize("send", [False, True])
def test_postgres_checkpoint_row_keeps_a_large_snapshot_byte_for_byte(pg: str, send: bool) -> None:
    """A checkpoint's snapshot (every byte value, as large as one holding process workers'
    items in flight) goes into the row with the rows before it, committed (or sent and
    confirmed), and comes back unchanged; the row is stored uncompressed."""
    from reflux.connectors.postgres import PostgresSink
    state = bytes(range(256)) * 1_200
    sink = PostgresSink("t", conninfo=pg, create=PG_CREATE)
    sink.checkpoint_attach("run-ü", "sink-ß")  # names beyond ASCII
    assert sink.checkpoint_recover() is None
    sink.open()
    sink([as_pg_row(i) for i in range(100)])
    if send:
        assert sink.checkpoint_send(1, state)
        sink([as_pg_row(i) for i in range(100, 150)])  # kept in memory or written: after the checkpoint
        sink.checkpoint_confirm(1)
    else:
        sink.checkpoint_commit(1, state)
    sink.checkpoint_detach(rollback=True)  # what came after the checkpoint is rolled back
    assert [r[0] for r in pg_rows(pg, "SELECT id FROM t ORDER BY id")] == list(range(100))
    again = PostgresSink("t", conninfo=pg)
    again.checkpoint_attach("run-ü", "sink-ß")
    assert again.checkpoint_recover() == (1, state)
    again.checkpoint_detach(rollback=True)
    assert pg_rows(pg, "SELECT attstorage FROM pg_attribute WHERE attrelid = 'reflux_checkpoints'::regclass "
                       "AND attname = 'state'") == [("e",)]


def test_postgres_source_params_dicts_and_resuming(pg: str) -> None:
    from reflux.connectors.postgres import PostgresSource, read_postgres
    pg_exec(pg, PG_CREATE)
    pg_exec(pg, "INSERT INTO t SELECT g, 'n' || g, g FROM generate_series(0, 999) AS g")
    out = Loader.to_list(name="out")
    got = Pipeline(read_postgres("SELECT id FROM t WHERE id < %s ORDER BY id", (3,), conninfo=pg)
                   >> out).run().results["out"]
    assert got == [(0,), (1,), (2,)]
    out = Loader.to_list(name="out")
    got = Pipeline(read_postgres("SELECT id, name FROM t WHERE id > %(lo)s ORDER BY id", {"lo": 997}, conninfo=pg,
                                 as_dict=True) >> out).run().results["out"]
    assert got == [{"id": 998, "name": "n998"}, {"id": 999, "name": "n999"}]
    for key, params in (("id", {"m": 3}), (None, {"m": 3})):
        query = "SELECT id FROM t WHERE id %% %(m)s = 0"
        src = PostgresSource(query + ("" if key else " ORDER BY id"), params, conninfo=pg, key=key)
        src.open()
        first = src.read_batch(40) + src.read_batch(40)
        state = src.state()
        src.close()
        again = PostgresSource(query + ("" if key else " ORDER BY id"), params, conninfo=pg, key=key)
        again.open()
        again.restore(state)
        rest: list[Any] = []
        while batch := again.read_batch(64):
            rest += batch
        again.close()
        assert [r[0] for r in first + rest] == list(range(0, 1_000, 3)), key


def test_postgres_encoded_rows_made_in_process_workers_round_trip(pg: str) -> None:
    import datetime
    import decimal
    import math
    import uuid

    from reflux.connectors.postgres import encode_copy_row, write_postgres
    pg_exec(pg, "CREATE TABLE typed (id BIGINT, name TEXT, ok BOOLEAN, score DOUBLE PRECISION, blob BYTEA, "
                "day DATE, at TIMESTAMPTZ, amount NUMERIC, tag UUID)")
    at = datetime.datetime(2026, 12, 5, 10, 30, 15, 123456, tzinfo=datetime.timezone.utc)
    tag = uuid.UUID(int=12345)
    names = ["plain", "tab\there", "new\nline", "back\\slash", "cr\rx", "ünïcødé", "", "\\N", "\\."]
    scores = [0.1, -2.5e300, float("inf"), float("-inf"), 1e-310]
    rows = [(i, names[i % len(names)] if i % 11 else None, i % 2 == 0, scores[i % len(scores)],
             bytes([i % 256, 0, 92, 9]), datetime.date(2026, 1, 1) + datetime.timedelta(days=i % 365),
             at + datetime.timedelta(seconds=i), decimal.Decimal(i) / 8, tag)
            for i in range(2000)]
    rows.append((2000, "nan", None, float("nan"), None, None, None, None, None))
    result = Pipeline(Extractor(rows) >> Transformer(encode_copy_row, executor="process", workers=2)
                      >> write_postgres("typed", conninfo=pg, encoded=True, name="s")).run()
    assert result.results["s"] == len(rows)
    got = pg_rows(pg, "SELECT id, name, ok, score, blob, day, at, amount, tag FROM typed ORDER BY id")
    assert len(got) == len(rows)
    for want, have in zip(rows[:-1], got[:-1]):
        assert have[:4] == want[:4] and bytes(have[4]) == want[4] and have[5:] == want[5:]
    assert got[-1][:3] == (2000, "nan", None) and math.isnan(got[-1][3]) and got[-1][4:] == (None,) * 5


def test_postgres_encoded_rows_are_checked(pg: str) -> None:
    from reflux.connectors.postgres import encode_copy_row, write_postgres
    with pytest.raises(ValueError, match="encoded=True.*method='copy'"):
        write_postgres("t", conninfo=pg, method="insert", encoded=True)
    with pytest.raises(TypeError, match="cannot encode a dict value"):
        encode_copy_row((1, {"a": 1}))
    with pytest.raises(TypeError, match="a row is a tuple or list"):
        encode_copy_row("1\tx")
    for bad, match in (([(1, "x", 0.0)], "made by encode_copy_row.*got a tuple"),
                       ([b"1\tx\t0.5"], "ending in a newline"), ([b"1\tx\t0.5\n2\ty\t1\n"], "one row")):
        with pytest.raises(NodeError, match=match):
            Pipeline(Extractor(bad) >> write_postgres("t", conninfo=pg, create=PG_CREATE, encoded=True,
                                                      retries=0, name="s")).run()
    assert pg_rows(pg, "SELECT count(*) FROM t") == [(0,)]
