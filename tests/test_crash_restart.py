"""Kill a checkpointed pipeline with SIGKILL at random points, run it again, and check the output:
no row missing, no row twice.

Each trial prepares JSON Lines input, then starts ``crashjob.py`` (a real process: the
pipeline, its worker threads, SQLite, PostgreSQL) and kills it after a random delay, one
to three times, then lets a last run finish.  The seed is fixed, so a failing trial can
be replayed.  20 trials per scenario are slow tests (``pytest -m slow``); one trial of
each runs in the default suite.
"""
from __future__ import annotations

from contextlib import closing
import glob
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "crashjob.py")
#: records of input: 3 files of 1,500
FILES, PER_FILE = 3, 1500
IDS = list(range(FILES * PER_FILE))
SEED = 20
TRIALS = 20


def make_input(work: str) -> None:
    os.makedirs(os.path.join(work, "in"))
    os.makedirs(os.path.join(work, "out"))
    for f in range(FILES):
        with open(os.path.join(work, "in", f"part{f}.jsonl"), "w") as out:
            for i in range(f * PER_FILE, (f + 1) * PER_FILE):
                out.write(json.dumps({"id": i, "payload": f"record {i}"}) + "\n")


def start(scenario: str, work: str, conninfo: str | None) -> subprocess.Popen[str]:
    args = [sys.executable, JOB, scenario, work] + ([conninfo] if conninfo else [])
    # cwd: not the checkout, whose uncompiled reflux_core/ would shadow the installed one
    return subprocess.Popen(args, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def crash_and_finish(scenario: str, work: str, rng: random.Random, conninfo: str | None = None) -> dict[str, Any]:
    """Kill the job one to three times at random points, then let it finish; returns the
    last run's checkpoint report and how many kills landed."""
    kills = 0
    for _ in range(rng.randint(1, 3)):
        proc = start(scenario, work, conninfo)
        time.sleep(rng.uniform(0.05, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"the job failed (exit {proc.returncode}):\n{err}")
    proc = start(scenario, work, conninfo)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"the last run failed (exit {proc.returncode}):\n{err}"
    report = json.loads(out.strip().splitlines()[-1])
    report["kills"] = kills
    return report


def assert_exactly_once(ids: list[int], expected: list[int], what: str) -> None:
    counts = Counter(ids)
    missing = sorted(set(expected) - set(counts))
    twice = sorted(i for i, n in counts.items() if n > 1)
    extra = sorted(set(counts) - set(expected))
    assert not missing and not twice and not extra, (
        f"{what}: {len(missing)} missing (first {missing[:10]}), {len(twice)} twice (first {twice[:10]}), "
        f"{len(extra)} unexpected")


def file_ids(work: str) -> list[int]:
    ids = []
    for path in sorted(glob.glob(os.path.join(work, "out", "rows-*.jsonl*"))):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            ids += [json.loads(line)["id"] for line in f]
    left = [n for n in os.listdir(os.path.join(work, "out")) if n.endswith(".inprogress")]
    assert not left, f"temporary files left after the last run: {left}"
    return ids


def check_window_rows(rows: list[tuple[int, int, int]]) -> None:
    """Every id once, and every group whole: its ids are ``first .. first + size - 1``."""
    assert_exactly_once([r[0] for r in rows], IDS, "window rows")
    groups: dict[int, list[int]] = {}
    sizes: dict[int, set[int]] = {}
    for i, first, size in rows:
        groups.setdefault(first, []).append(i)
        sizes.setdefault(first, set()).add(size)
    for first, members in groups.items():
        (size,) = sizes[first]
        assert 1 <= size <= 7 and sorted(members) == list(range(first, first + size)), (first, size, members)


def run_trials(scenario: str, trials: int, conninfo_for: Any = None) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    reports = []
    kept = [i for i in IDS if i % 3 != 0]
    for trial in range(trials):
        with tempfile.TemporaryDirectory(prefix=f"reflux-crash-{scenario}-") as work:
            make_input(work)
            conninfo = conninfo_for(trial) if conninfo_for is not None else None
            report = crash_and_finish(scenario, work, rng, conninfo)
            reports.append(report)
            if scenario == "window":
                with closing(sqlite3.connect(os.path.join(work, "out.db"))) as db, db:
                    check_window_rows(db.execute("SELECT id, first, size FROM rows").fetchall())
                continue
            if scenario in ("sqlite", "process"):
                with closing(sqlite3.connect(os.path.join(work, "out.db"))) as db, db:
                    table = [r[0] for r in db.execute("SELECT id FROM rows")]
            else:
                import psycopg
                with psycopg.connect(conninfo) as db:
                    table = [r[0] for r in db.execute("SELECT id FROM rows")]
            assert_exactly_once(table, kept, f"trial {trial}: table")
            assert_exactly_once(file_ids(work), kept, f"trial {trial}: files")
    # the kills landed while the job ran (most of them), and the runs resumed
    assert sum(r["kills"] for r in reports) >= trials
    assert sum(1 for r in reports if r["resumed_from"] is not None) >= trials // 2
    return reports


def pg_databases(conninfo: str) -> Any:
    import psycopg

    def make(trial: int) -> str:
        name = f"crash_{os.getpid()}_{trial}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return conninfo.replace("dbname=postgres", f"dbname={name}")
    return make


@pytest.mark.parametrize("scenario", ["sqlite", "window", "process"])
def test_one_crash_and_restart(scenario: str) -> None:
    run_trials(scenario, 1)


def test_one_crash_and_restart_postgres(postgres_server: str) -> None:
    run_trials("postgres", 1, pg_databases(postgres_server))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["sqlite", "window", "process"])
def test_twenty_crashes_and_restarts(scenario: str) -> None:
    reports = run_trials(scenario, TRIALS)
    print(f"\n{scenario}: {sum(r['kills'] for r in reports)} kills in {TRIALS} trials, "
          f"{sum(1 for r in reports if r['resumed_from'] is not None)} last runs resumed, "
          f"{sum(1 for r in reports if r['resumed_items'])} of them with items the workers held")
    if scenario == "process":  # checkpoints saved chunks in flight, and runs took them back
        assert sum(1 for r in reports if r["resumed_items"]) >= 2


@pytest.mark.slow
def test_twenty_crashes_and_restarts_postgres(postgres_server: str) -> None:
    reports = run_trials("postgres", TRIALS, pg_databases(postgres_server))
    print(f"\npostgres: {sum(r['kills'] for r in reports)} kills in {TRIALS} trials, "
          f"{sum(1 for r in reports if r['resumed_from'] is not None)} last runs resumed")
