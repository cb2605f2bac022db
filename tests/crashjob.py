"""A checkpointed file-to-database pipeline that the crash tests kill with SIGKILL and run
again (tests/test_crash_restart.py).  Run as a script::

    python crashjob.py SCENARIO WORKDIR [CONNINFO]

It reads the JSON Lines files of WORKDIR/in, checkpoints every 97 items into
WORKDIR/run.ckpt and writes:

``sqlite``    each kept record to table ``rows`` of WORKDIR/out.db, and (through a
              Broadcast) to rolled JSON Lines files WORKDIR/out/rows-NNNNN.jsonl;
``postgres``  each kept record to table ``rows`` of the PostgreSQL database CONNINFO,
              and to rolled gzip JSON Lines files WORKDIR/out/rows-NNNNN.jsonl.gz;
``process``   as ``sqlite``, with the pacing Transformer in 2 worker processes (the chunks
              in flight at a checkpoint are saved with it and processed again on resume);
``window``    every record, grouped by an Accumulator (7 items or 20 ms), as rows
              ``(id, first id of its group, group size)`` of table ``rows`` of WORKDIR/out.db.

A Transformer sleeps 3 ms every 15 items (6 ms in each of 2 workers) so that a run lasts
long enough to be killed anywhere.  On success it prints the run's checkpoint report as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from reflux import Accumulator, Broadcast, Checkpoint, Filter, Pipeline, Transformer
from reflux.connectors.files import read_jsonl, write_jsonl
from reflux.connectors.sqlite import write_sqlite


class Pace:
    """Passes items on, sleeping ``ms`` milliseconds every 15 of them."""

    def __init__(self, ms: float = 3) -> None:
        self.n = 0
        self.seconds = ms / 1000

    def __call__(self, item: Any) -> Any:
        self.n += 1
        if self.n % 15 == 0:
            time.sleep(self.seconds)
        return item


def expand(group: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    first = group[0]["id"]
    return [(r["id"], first, len(group)) for r in group]


def build(scenario: str, work: str, conninfo: str | None) -> Pipeline:
    source = read_jsonl(os.path.join(work, "in", "*.jsonl"), name="events")
    pace = Transformer(Pace(), name="pace")
    ck = Checkpoint(os.path.join(work, "run.ckpt"), every=97, seconds=None)
    db = os.path.join(work, "out.db")
    if scenario == "window":
        sink = write_sqlite(db, "rows", name="rows",
                            create="CREATE TABLE IF NOT EXISTS rows (id INTEGER, first INTEGER, size INTEGER)")
        return Pipeline(source >> pace >> Accumulator(7, window=0.02, name="groups")
                        >> Transformer(expand, flat=True, name="expand") >> sink, name="window", checkpoint=ck)
    keep = Filter(lambda r: r["id"] % 3 != 0, name="keep")
    if scenario == "process":
        # each of the 2 workers sleeps twice as long: the run lasts about as long as the others
        pace = Transformer(Pace(6), executor="process", workers=2, name="pace")
    if scenario in ("sqlite", "process"):
        table = write_sqlite(db, "rows", columns=["id", "payload"], name="rows",
                             create="CREATE TABLE IF NOT EXISTS rows (id INTEGER, payload TEXT)")
        files = write_jsonl(os.path.join(work, "out", "rows.jsonl"), roll_items=500, name="files")
    elif scenario == "postgres":
        from reflux.connectors.postgres import write_postgres
        table = write_postgres("rows", conninfo=conninfo or "", columns=["id", "payload"], name="rows",
                               create="CREATE TABLE IF NOT EXISTS rows (id BIGINT, payload TEXT)")
        files = write_jsonl(os.path.join(work, "out", "rows.jsonl.gz"), roll_items=700, name="files")
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    return Pipeline(source >> pace >> keep >> Broadcast(name="both") >> [table, files], name=scenario,
                    checkpoint=ck)


def main() -> None:
    scenario, work = sys.argv[1], sys.argv[2]
    conninfo = sys.argv[3] if len(sys.argv) > 3 else None
    result = build(scenario, work, conninfo).run()
    result.check_accounting()
    assert result.checkpoint is not None
    report = result.checkpoint.as_dict()
    report["resumed_items"] = sum(s.resumed for s in result.nodes.values())  # taken back from workers
    print(json.dumps(report))


if __name__ == "__main__":
    main()
