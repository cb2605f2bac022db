"""Connector benchmark: JSON Lines files through parse -> filter -> sink, against plain scripts.

Run from the repository root::

    python -m benchmarks.connectors [--quick] [--items N] [--repeat R] [--only parquet,sqlite,postgres]
                                    [--pg CONNINFO] [--json PATH]

1,000,000 JSON Lines records of about 100 bytes, in 4 files, go through
``json.loads`` -> a filter keeping two records in three -> a sink, three ways
per sink:

* **plain**: a plain-Python script doing the same with the same libraries:
  ``for line in file: json.loads``, the filter, then ``pyarrow.parquet.ParquetWriter``
  row groups of 65,536 rows (Parquet); ``executemany`` and a commit every 10,000
  rows (SQLite, WAL, ``synchronous=NORMAL``); one ``COPY ... FROM STDIN`` and a
  commit every 10,000 rows (PostgreSQL);
* **reflux**: ``read_jsonl >> Filter >> write_parquet / write_sqlite / write_postgres``
  (one fused task), with the same settings;
* **reflux + checkpoints**: the same with ``checkpoint=Checkpoint(every=10_000)``;
* **reflux, commits as often**: no checkpoints, but the sink commits (a database) or ends a
  row group (Parquet) as often as a checkpoint every 10,000 items makes it do (every 6,667
  rows written): what checkpoints cost beyond those commits is the difference to the row above;
* **reflux, parse in 2 processes**: ``read_lines >> Transformer(parse and filter,
  executor="process", workers=2) >> sink`` (the workers send back what the sink takes
  with least work: row tuples for SQLite and Parquet (``write_parquet(columns=...)``),
  PostgreSQL's rows already in ``COPY``'s format (``encode_copy_row``, the sink with
  ``encoded=True``)), also with
  checkpoints (the workers keep working through each barrier: the chunks they hold are saved
  with the checkpoint, not waited for).  A *limit*
  line gives the most such a run can gain on this machine: its CPU seconds spread
  perfectly over the cores, against the plain script.

Each row is the median of ``--repeat`` runs (default 3), taken in rounds that run
every row once; the table gives wall-clock seconds and the CPU seconds of the benchmark
process and its worker processes (another program's load disturbs those less; the
PostgreSQL server's CPU is not counted, alike for every row).  Every run checks what arrived (row count and the sum of ids, read
back from the Parquet files or the table) and raises if it is wrong.  Before each
PostgreSQL run the table is dropped and the server flushes its dirty pages
(``CHECKPOINT``): a flush of the last run's rows never lands inside a timed run.  PostgreSQL:
``--pg`` (or the ``PG*`` environment variables with ``--pg ""``); without either a
throwaway server is started with the binaries found (as the tests do), else those
rows are skipped.  The machine's load average is printed before and after:
the numbers of a loaded machine say little.  Nothing here is a test.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import operator
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import import_core

import_core("channel")  # the compiled core first (see benchmarks.import_core)
from reflux import Checkpoint, Filter, Pipeline, Transformer  # noqa: E402
from reflux.connectors.files import read_jsonl, read_lines  # noqa: E402

try:  # the PostgreSQL rows need psycopg; without it they are skipped
    from reflux.connectors.postgres import encode_copy_row  # noqa: E402
except ImportError:
    encode_copy_row = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "benchmark"
COLUMNS = ["id", "user", "kind", "value", "ts", "ok"]
KINDS = ("click", "view", "buy")
COMMIT_EVERY = 10_000
ROW_GROUP = 65_536
SQLITE_PRAGMAS = {"journal_mode": "WAL", "synchronous": "NORMAL"}
SQL_TABLE = ('CREATE TABLE IF NOT EXISTS events (id BIGINT, "user" TEXT, kind TEXT, value DOUBLE PRECISION, '
             'ts BIGINT, ok BOOLEAN)')


def keep(r: dict[str, Any]) -> bool:
    return r["kind"] != "view"


_ROW = operator.itemgetter(*COLUMNS)


def parse_row(line: str) -> list[tuple[Any, ...]]:
    """Parse a line and keep it as a row tuple: what the process workers run for SQLite and
    Parquet (a tuple travels back from a worker for less than a dict)."""
    r = json.loads(line)
    return [_ROW(r)] if r["kind"] != "view" else []


def parse_copy(line: str) -> list[bytes]:
    """Parse a line and keep it as a row in ``COPY``'s format: what the process workers run
    for PostgreSQL (its sink then writes the bytes as they come, ``encoded=True``)."""
    r = json.loads(line)
    return [encode_copy_row(_ROW(r))] if r["kind"] != "view" else []


# --------------------------------------------------------------------------- data

def make_data(folder: str, items: int, files: int = 4) -> tuple[list[str], int, int]:
    """Write ``items`` records in ``files`` JSON Lines files; returns (paths, kept, sum of kept ids)."""
    paths, kept, total = [], 0, 0
    per = -(-items // files)
    for f in range(files):
        path = os.path.join(folder, f"events-{f}.jsonl")
        with open(path, "w") as out:
            lines = []
            for i in range(f * per, min(items, (f + 1) * per)):
                kind = KINDS[i % 3]
                lines.append(json.dumps({"id": i, "user": f"u{i % 100_000:07d}", "kind": kind,
                                         "value": (i * 7919) % 100_000 / 100, "ts": 1_700_000_000 + i,
                                         "ok": i % 5 != 0}))
                if kind != "view":
                    kept += 1
                    total += i
            out.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths, kept, total


def lines_of(paths: list[str]) -> Any:
    """The lines of the files, as a plain script reads them (text mode)."""
    for p in paths:
        with open(p, encoding="utf-8") as f:
            yield from f


# --------------------------------------------------------------------------- plain scripts

def plain_parquet(paths: list[str], out: str, **_: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    writer = None
    rows: list[Any] = []
    path = os.path.join(out, "plain.parquet")
    for line in lines_of(paths):
        r = json.loads(line)
        if r["kind"] != "view":
            rows.append(r)
            if len(rows) >= ROW_GROUP:
                t = pa.Table.from_pylist(rows)
                writer = writer or pq.ParquetWriter(path, t.schema)
                writer.write_table(t)
                rows = []
    if rows:
        t = pa.Table.from_pylist(rows)
        writer = writer or pq.ParquetWriter(path, t.schema)
        writer.write_table(t)
    if writer is not None:
        writer.close()


def plain_sqlite(paths: list[str], out: str, **_: Any) -> None:
    db = sqlite3.connect(os.path.join(out, "out.db"), isolation_level=None)
    for k, v in SQLITE_PRAGMAS.items():
        db.execute(f"PRAGMA {k}={v}")
    db.execute(SQL_TABLE)
    row = operator.itemgetter(*COLUMNS)
    rows: list[Any] = []
    sql = 'INSERT INTO events (id, "user", kind, value, ts, ok) VALUES (?, ?, ?, ?, ?, ?)'
    for line in lines_of(paths):
        r = json.loads(line)
        if r["kind"] != "view":
            rows.append(row(r))
            if len(rows) >= COMMIT_EVERY:
                db.execute("BEGIN")
                db.executemany(sql, rows)
                db.execute("COMMIT")
                rows = []
    if rows:
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    db.close()


def plain_postgres(paths: list[str], out: str, conninfo: str = "", table: str = "", **_: Any) -> None:
    import psycopg
    row = operator.itemgetter(*COLUMNS)
    with psycopg.connect(conninfo) as conn:
        conn.execute(SQL_TABLE.replace("events", table))
        conn.commit()
        n = 0
        cur = conn.cursor()
        copy_cm = None
        copy = None
        for line in lines_of(paths):
            r = json.loads(line)
            if r["kind"] != "view":
                if copy is None:
                    copy_cm = cur.copy(f'COPY {table} (id, "user", kind, value, ts, ok) FROM STDIN')
                    copy = copy_cm.__enter__()
                copy.write_row(row(r))
                n += 1
                if n % COMMIT_EVERY == 0:
                    copy_cm.__exit__(None, None, None)
                    copy = None
                    conn.commit()
        if copy is not None:
            copy_cm.__exit__(None, None, None)
        conn.commit()


# --------------------------------------------------------------------------- reflux

def reflux_sink(kind: str, out: str, conninfo: str, table: str, encoded: bool = False,
                commit_rows: int | None = None) -> Any:
    """The sink; ``encoded``: it takes what the parse workers send (row tuples for Parquet,
    rows in COPY's format for PostgreSQL); ``commit_rows``: commit (or end a row group) this
    often instead of the plain script's setting."""
    if kind == "parquet":
        from reflux.connectors.parquet import write_parquet
        return write_parquet(os.path.join(out, "reflux.parquet"), row_group_rows=commit_rows or ROW_GROUP,
                             columns=COLUMNS if encoded else None, name="sink")
    if kind == "sqlite":
        from reflux.connectors.sqlite import write_sqlite
        return write_sqlite(os.path.join(out, "out.db"), "events", columns=COLUMNS, create=SQL_TABLE,
                            commit_every=commit_rows or COMMIT_EVERY, pragmas=SQLITE_PRAGMAS, name="sink")
    from reflux.connectors.postgres import write_postgres
    return write_postgres(table, conninfo=conninfo, columns=COLUMNS, create=SQL_TABLE.replace("events", table),
                          commit_every=commit_rows or COMMIT_EVERY, encoded=encoded, name="sink")


def run_reflux(kind: str, paths: list[str], out: str, *, conninfo: str = "", table: str = "",
               checkpoint: bool = False, processes: bool = False, commit_rows: int | None = None) -> None:
    sink = reflux_sink(kind, out, conninfo, table, encoded=processes, commit_rows=commit_rows)
    if processes:
        parse = {"parquet": parse_row, "sqlite": parse_row, "postgres": parse_copy}[kind]
        flow = (read_lines(paths, name="lines")
                >> Transformer(parse, flat=True, executor="process", workers=2, name="parse") >> sink)
    else:
        flow = read_jsonl(paths, name="events") >> Filter(keep, name="keep") >> sink
    ck = Checkpoint(os.path.join(out, "run.ckpt"), every=10_000, seconds=None) if checkpoint else None
    result = Pipeline(flow, name=f"bench-{kind}", checkpoint=ck).run()
    result.check_accounting()


# --------------------------------------------------------------------------- checking and timing

def read_back(kind: str, out: str, conninfo: str, table: str) -> tuple[int, int]:
    """(rows, sum of ids) written by the run."""
    if kind == "parquet":
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        files = sorted(f for f in os.listdir(out) if f.endswith(".parquet"))
        n = s = 0
        for f in files:
            t = pq.read_table(os.path.join(out, f), columns=["id"])
            n += t.num_rows
            s += pc.sum(t["id"]).as_py() or 0
        return n, s
    if kind == "sqlite":
        with sqlite3.connect(os.path.join(out, "out.db")) as db:
            n, s = db.execute("SELECT count(*), coalesce(sum(id), 0) FROM events").fetchone()
        return int(n), int(s)
    import psycopg
    with psycopg.connect(conninfo) as conn:
        n, s = conn.execute(f"SELECT count(*), coalesce(sum(id), 0) FROM {table}").fetchone()
    return int(n), int(s)


def drop_table(conninfo: str, table: str) -> None:
    """Before a run: drop what the last one wrote and flush the server's dirty pages
    (``CHECKPOINT``), so no run pays for its predecessor's writes."""
    import psycopg
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DROP TABLE IF EXISTS reflux_checkpoints")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:  # a server given with --pg, as a plain user
            pass


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (process workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(kind: str, fn: Callable[..., None], paths: list[str], expect: tuple[int, int], conninfo: str,
          **kwargs: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its workers) of one run, checked."""
    out = tempfile.mkdtemp(prefix="reflux-bench-")
    table = "events_bench"
    try:
        if kind == "postgres":
            drop_table(conninfo, table)
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn(paths, out, conninfo=conninfo, table=table, **kwargs)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        got = read_back(kind, out, conninfo, table)
        if got != expect:
            raise AssertionError(f"{kind}: {fn.__name__} wrote {got} (rows, sum of ids), expected {expect}")
        return elapsed, cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)


def start_postgres() -> tuple[Any, str] | None:
    """A throwaway server (tests/pgserver.py), or None when PostgreSQL is not installed."""
    path = os.path.join(ROOT, "tests", "pgserver.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("reflux_bench_pgserver", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    bindir = mod.find_bindir()
    if bindir is None:
        return None
    server = mod.PostgresServer(bindir).start()
    return server, server.conninfo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 items, one run (a smoke run)")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="parquet,sqlite,postgres")
    ap.add_argument("--no-processes", action="store_true", help="skip the process-worker rows")
    ap.add_argument("--pg", default=None, help="PostgreSQL connection string (default: start a server)")
    ap.add_argument("--json", default=None, help="also save the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.repeat = 20_000, 1
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    notes: list[str] = []
    server = None
    conninfo = ""
    if "parquet" in kinds and importlib.util.find_spec("pyarrow") is None:
        kinds.remove("parquet")
        notes.append("parquet skipped: pyarrow is not installed (pip install \".[arrow]\")")
    if "postgres" in kinds:
        if importlib.util.find_spec("psycopg") is None:
            kinds.remove("postgres")
            notes.append("postgres skipped: psycopg is not installed (pip install \".[postgres]\")")
        elif args.pg is not None:
            conninfo = args.pg
        else:
            started = start_postgres()
            if started is None:
                kinds.remove("postgres")
                notes.append("postgres skipped: no server binaries found and no --pg given")
            else:
                server, conninfo = started
    for kind, module in (("parquet", "pyarrow.parquet"), ("postgres", "psycopg")):
        if kind in kinds:
            importlib.import_module(module)  # imported before the clock runs, for every row alike
    data = tempfile.mkdtemp(prefix="reflux-bench-data-")
    load_before = os.getloadavg()
    try:
        paths, kept, total = make_data(data, args.items)
        expect = (kept, total)
        size = sum(os.path.getsize(p) for p in paths)
        print(f"{args.items:,} records in {len(paths)} files, {size / args.items:.0f} bytes each on average; "
              f"{kept:,} kept by the filter")
        variants: list[tuple[str, Callable[..., None], dict[str, Any]]] = [
            ("plain script", None, {}),  # type: ignore[list-item]
            ("reflux", run_reflux, {}),
            ("reflux + checkpoints every 10,000", run_reflux, {"checkpoint": True}),
            # as many commits (or row groups) as those checkpoints make: rows written per 10,000 items
            ("reflux, commits as often", run_reflux, {"commit_rows": max(1, round(10_000 * kept / args.items))}),
        ]
        if not args.no_processes:
            variants.append(("reflux, parse in 2 processes", run_reflux, {"processes": True}))
            variants.append(("reflux, 2 processes + checkpoints", run_reflux, {"processes": True, "checkpoint": True}))
        plains = {"parquet": plain_parquet, "sqlite": plain_sqlite, "postgres": plain_postgres}
        times: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        loads: list[float] = []
        for _ in range(args.repeat):
            for kind in kinds:
                for label, fn, kw in variants:
                    loads.append(os.getloadavg()[0])
                    if fn is None:
                        t, c = timed(kind, plains[kind], paths, expect, conninfo)
                    else:
                        t, c = timed(kind, lambda p, o, _kind=kind, _fn=fn, **k: _fn(_kind, p, o, **k), paths,
                                     expect, conninfo, **kw)
                    times.setdefault((kind, label), []).append(t)
                    cpus.setdefault((kind, label), []).append(c)
        load_after = os.getloadavg()
        print(f"\nload average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
              f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; at the start of the runs: "
              f"median {statistics.median(loads):.2f}, {min(loads):.2f}..{max(loads):.2f} ({os.cpu_count()} CPUs)")
        print("wall: seconds of the whole run; cpu: CPU seconds of this process and its worker processes "
              "(the PostgreSQL server's not counted), which another process's load disturbs less")
        print(f"\n{HEADER:<42} {'items/s':>10} {'wall s':>7} {'vs plain':>8} {'min s':>6} {'cpu s':>6} "
              f"{'vs plain':>8}   wall runs")
        results: dict[str, Any] = {}
        targets: list[tuple[str, float, str, bool]] = []
        limits: list[str] = []
        for kind in kinds:
            print(f"== {kind}")
            base = statistics.median(times[(kind, "plain script")])
            base_cpu = statistics.median(cpus[(kind, "plain script")])
            for label, _, _ in variants:
                ts, cs = times[(kind, label)], cpus[(kind, label)]
                med, cpu = statistics.median(ts), statistics.median(cs)
                print(f"{label:<42} {args.items / med:>10,.0f} {med:>7.2f} {base / med:>7.2f}x {min(ts):>6.2f} "
                      f"{cpu:>6.2f} {base_cpu / cpu:>7.2f}x   " + " ".join(f"{t:.2f}" for t in ts))
                results[f"{kind}: {label}"] = {"median_s": med, "runs": ts, "vs_plain": base / med,
                                               "cpu_median_s": cpu, "cpu_runs": cs, "cpu_vs_plain": base_cpu / cpu}
            med_reflux = statistics.median(times[(kind, "reflux")])
            cpu_reflux = statistics.median(cpus[(kind, "reflux")])
            ck = "reflux + checkpoints every 10,000"
            targets.append((f"{kind}: reflux vs the plain script (wall)", base / med_reflux, ">= 0.9x",
                            base / med_reflux >= 0.9))
            targets.append((f"{kind}: reflux vs the plain script (cpu)", base_cpu / cpu_reflux, ">= 0.9x",
                            base_cpu / cpu_reflux >= 0.9))
            if not args.no_processes:
                par_t = statistics.median(times[(kind, "reflux, parse in 2 processes")])
                targets.append((f"{kind}: reflux with 2 parse processes vs the plain script (wall)", base / par_t,
                                "> 1.0x", base / par_t > 1.0))
                # the most 2 processes' runs can gain here: their CPU seconds (this process and its
                # workers) spread perfectly over the cores
                par_cpu = statistics.median(cpus[(kind, "reflux, parse in 2 processes")])
                cores = os.cpu_count() or 1
                best = par_cpu / cores
                limits.append(f"{kind}: the 2-process run used {par_cpu:.2f} CPU s against the plain script's "
                              f"{base_cpu:.2f}; spread over {cores} cores at best {best:.2f} s, "
                              f"{base / best:.2f}x the plain script")
                par_cost = statistics.median(times[(kind, "reflux, 2 processes + checkpoints")]) / par_t - 1
                targets.append((f"{kind}: cost of checkpoints with 2 parse processes (wall)", par_cost * 100, "< 5%",
                                par_cost < 0.05))
            cost = statistics.median(times[(kind, ck)]) / med_reflux - 1
            cost_cpu = statistics.median(cpus[(kind, ck)]) / cpu_reflux - 1
            targets.append((f"{kind}: cost of checkpoints every 10,000 items (wall)", cost * 100, "< 5%", cost < 0.05))
            targets.append((f"{kind}: cost of checkpoints every 10,000 items (cpu)", cost_cpu * 100, "< 5%",
                            cost_cpu < 0.05))
            # what the commits alone cost: the same run committing as often, without checkpoints
            often = statistics.median(times[(kind, "reflux, commits as often")])
            often_cpu = statistics.median(cpus[(kind, "reflux, commits as often")])
            limits.append(f"{kind}: committing as often as the checkpoints do, without them, cost "
                          f"{(often / med_reflux - 1) * 100:+.1f}% wall, {(often_cpu / cpu_reflux - 1) * 100:+.1f}% cpu; "
                          f"the checkpoints beyond that {(statistics.median(times[(kind, ck)]) / often - 1) * 100:+.1f}% "
                          f"wall, {(statistics.median(cpus[(kind, ck)]) / often_cpu - 1) * 100:+.1f}% cpu")
        print("\n== targets (measured in this run)")
        for name, value, goal, ok in targets:
            shown = f"{value:.1f}%" if goal.endswith("%") else f"{value:.2f}x"
            print(f"{name:<72} {shown:>8}  goal {goal:<8} {'PASS' if ok else 'MISS'}")
        for line in limits:
            print(f"limit: {line}")
        for note in notes:
            print(f"note: {note}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"items": args.items, "repeat": args.repeat, "load_before": load_before,
                           "load_after": load_after, "loads": loads, "results": results,
                           "targets": [{"name": n, "value": v, "goal": g, "pass": ok} for n, v, g, ok in targets],
                           "limits": limits,
                           "notes": notes}, f, indent=2)
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
