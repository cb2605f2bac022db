"""The Parquet connector (skipped without pyarrow: pip install ".[arrow]")."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'pyreflux[arrow]')")
pq = pytest.importorskip("pyarrow.parquet")

from reflux import Checkpoint, Extractor, Loader, NodeError, Pipeline, Transformer  # noqa: E402
from reflux.connectors.parquet import ParquetSource, read_parquet, write_parquet  # noqa: E402


def collect(node: Any) -> list[Any]:
    out = Loader.to_list(name="out")
    return Pipeline(node >> out).run().results["out"]


def test_rows_round_trip_in_row_groups(tmp_path: Any) -> None:
    rows = [{"id": i, "name": f"n{i}", "score": i / 4} for i in range(1_000)]
    path = str(tmp_path / "r.parquet")
    result = Pipeline(Extractor(rows, batch_size=64) >> write_parquet(path, row_group_rows=300, name="s")).run()
    assert result.results["s"] == 1_000
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 1_000 and meta.num_row_groups == 4
    assert collect(read_parquet(path)) == rows
    assert collect(read_parquet(path, columns=["id"]))[:2] == [{"id": 0}, {"id": 1}]
    batches = collect(read_parquet(path, rows=False, batch_rows=256))
    assert all(isinstance(b, pa.RecordBatch) for b in batches) and sum(b.num_rows for b in batches) == 1_000
    assert os.listdir(tmp_path) == ["r.parquet"]


def test_tuples_with_columns_round_trip_beside_dicts(tmp_path: Any) -> None:
    cols = ["id", "name", "score"]
    tuples = [(i, f"n{i}", i / 4) for i in range(700)]
    dicts = [{"id": i, "name": f"n{i}", "score": i / 4} for i in range(700, 800)]
    path = str(tmp_path / "t.parquet")
    items: list[Any] = tuples[:300] + dicts + tuples[300:]
    result = Pipeline(Extractor(items, batch_size=64)
                      >> write_parquet(path, columns=cols, row_group_rows=256, name="s")).run()
    assert result.results["s"] == 800
    assert collect(read_parquet(path)) == [dict(zip(cols, t)) if isinstance(t, tuple) else t for t in items]
    schema = pa.schema([("id", pa.int32()), ("name", pa.string()), ("score", pa.float32())])
    typed = str(tmp_path / "typed.parquet")
    Pipeline(Extractor([list(t) for t in tuples], batch_size=64)
             >> write_parquet(typed, columns=cols, schema=schema, roll_items=500, name="s")).run()
    assert pq.read_schema(str(tmp_path / "typed-00000.parquet")).field("id").type == pa.int32()
    assert collect(read_parquet(str(tmp_path / "typed-*.parquet"), columns=["id"])) == \
        [{"id": i} for i in range(700)]
    with pytest.raises(NodeError, match="tuple without columns="):
        Pipeline(Extractor(tuples[:3]) >> write_parquet(str(tmp_path / "no.parquet"), name="s")).run()
    with pytest.raises(NodeError, match="a row has 2 values for 3 columns"):
        Pipeline(Extractor([(1, "a", 0.5), (2, "b")])
                 >> write_parquet(str(tmp_path / "short.parquet"), columns=cols, name="s")).run()
    with pytest.raises(ValueError, match="differ from the schema"):
        write_parquet(path, columns=["id"], schema=schema)
    with pytest.raises(ValueError, match="columns must be a list"):
        write_parquet(path, columns="id")


def test_record_chunks_and_arrow_tables_are_written_column_by_column(tmp_path: Any) -> None:
    chunk = np.zeros(500, dtype=[("id", "<i8"), ("x", "<f4")])
    chunk["id"] = np.arange(500)
    chunk["x"] = np.arange(500) / 2
    table = pa.table({"id": pa.array([1000, 1001], pa.int64()), "x": pa.array([0.5, 1.5], pa.float32())})
    path = str(tmp_path / "c.parquet")
    Pipeline(Extractor([chunk[:250], chunk[250:], table, table.to_batches()[0]])
             >> write_parquet(path, name="s")).run()
    got = pq.read_table(path)
    assert got.schema.field("x").type == pa.float32()
    assert got.column("id").to_pylist() == list(range(500)) + [1000, 1001, 1000, 1001]


def test_rolled_files_and_an_explicit_schema(tmp_path: Any) -> None:
    schema = pa.schema([("id", pa.int32()), ("name", pa.string())])
    Pipeline(Extractor([{"id": i, "name": str(i)} for i in range(250)], batch_size=30)
             >> write_parquet(str(tmp_path / "p.parquet"), schema=schema, roll_items=100, name="s")).run()
    names = sorted(os.listdir(tmp_path))
    assert names == ["p-00000.parquet", "p-00001.parquet", "p-00002.parquet"]
    assert [pq.ParquetFile(tmp_path / n).metadata.num_rows for n in names] == [100, 100, 50]
    assert pq.read_schema(tmp_path / names[0]).field("id").type == pa.int32()
    assert collect(read_parquet(str(tmp_path / "p-*.parquet"), columns=["id"])) == [{"id": i} for i in range(250)]
    with pytest.raises(NodeError, match="cannot write a str"):
        Pipeline(Extractor(["text"]) >> write_parquet(str(tmp_path / "bad.parquet"), name="s")).run()
    with pytest.raises(ValueError, match="drop the .gz"):
        write_parquet(str(tmp_path / "x.parquet.gz"))


def test_the_source_resumes_inside_a_row_group(tmp_path: Any) -> None:
    paths = []
    for f in range(2):
        p = str(tmp_path / f"s{f}.parquet")
        pq.write_table(pa.table({"id": list(range(f * 500, (f + 1) * 500))}), p, row_group_size=128)
        paths.append(p)
    for stop in (0, 1, 127, 128, 300, 500, 777, 1_000):
        src = ParquetSource(paths, batch_rows=100)
        src.open()
        got: list[Any] = []
        while len(got) < stop:
            got += src.read_batch(min(33, stop - len(got)))
        state = src.state()
        src.close()
        again = ParquetSource(paths, batch_rows=100)
        again.open()
        again.restore(state)
        while batch := again.read_batch(50):
            got += batch
        again.close()
        assert [r["id"] for r in got] == list(range(1_000)), (stop, state)


def test_under_checkpoints_each_checkpoint_finishes_a_numbered_file(tmp_path: Any) -> None:
    armed = {"on": True}

    def crash(r: dict[str, int]) -> dict[str, int]:
        if armed["on"] and r["id"] == 1_500:
            armed["on"] = False
            raise RuntimeError("crash")
        return r

    def build() -> Pipeline:
        return Pipeline(Extractor([{"id": i} for i in range(3_000)], batch_size=50)
                        >> Transformer(crash, name="crash") >> write_parquet(str(tmp_path / "o.parquet"), name="s"),
                        checkpoint=Checkpoint(str(tmp_path / "c"), every=400, seconds=None))

    with pytest.raises(NodeError):
        build().run()
    build().run()
    names = sorted(n for n in os.listdir(tmp_path) if n.endswith(".parquet"))
    assert names[0] == "o-00000.parquet" and len(names) >= 7
    ids = [i for n in names for i in pq.read_table(tmp_path / n).column("id").to_pylist()]
    assert ids == list(range(3_000))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".inprogress")]


def test_a_compiled_plugins_record_chunks_go_to_parquet_column_by_column(tmp_path: Any) -> None:
    """Chunks of records from a Cython plug-in (no Python per record) into Parquet, and under
    checkpoints (plug-ins are then joined by object channels)."""
    from reflux_core._testplugins import RECORD, NewtonSqrt
    data = np.zeros(10_000, dtype=RECORD)
    data["id"] = np.arange(10_000)
    data["x"] = np.arange(10_000, dtype=np.float64)
    chunks = [data[i:i + 1_000] for i in range(0, 10_000, 1_000)]
    for ck in (None, Checkpoint(str(tmp_path / "c"), every=3, seconds=None)):
        folder = tmp_path / ("ck" if ck else "plain")
        folder.mkdir()
        Pipeline(Extractor(chunks) >> Transformer(NewtonSqrt(16), name="sqrt")
                 >> Transformer(NewtonSqrt(16), name="again")
                 >> write_parquet(str(folder / "roots.parquet"), name="s"), checkpoint=ck).run()
        names = sorted(os.listdir(folder))
        assert names == (["roots.parquet"] if ck is None else [f"roots-{i:05d}.parquet" for i in range(len(names))])
        table = pa.concat_tables([pq.read_table(folder / n) for n in names])
        assert table.column("id").to_pylist() == list(range(10_000))
        assert table.schema.field("x").type == pa.float64()
