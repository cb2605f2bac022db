"""The file connectors: lines, JSON Lines and CSV sources and sinks (gzip, folders, globs,
positions, bad records, atomic and rolled output, resuming)."""
from __future__ import annotations

import csv
import gzip
import json
import os
import threading
from typing import Any

import pytest

from reflux import Checkpoint, Extractor, Loader, NodeError, Pipeline, SourceRecordError, Transformer
from reflux.connectors.files import (
    FileRecord,
    FileSource,
    JsonLinesSink,
    read_csv,
    read_jsonl,
    read_lines,
    write_csv,
    write_jsonl,
    write_lines,
)


def write(path: Any, text: str, gz: bool = False) -> str:
    path = str(path)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def read_text(path: Any) -> str:
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


def collect(*parts: Any, **kw: Any) -> list[Any]:
    out = Loader.to_list(name="out")
    return Pipeline(parts[0] >> out, **kw).run().results["out"]


# --------------------------------------------------------------------------- sources

def test_lines_from_a_folder_a_glob_and_a_list_with_gzip_read_transparently(tmp_path: Any) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write(d / "a.txt", "one\ntwo\n")
    write(d / "b.log", "three\r\nfour", gz=True)  # gzip without a .gz name, CRLF, no final newline
    write(d / ".hidden", "never\n")
    assert collect(read_lines(str(d))) == ["one", "two", "three", "four"]
    assert collect(read_lines(str(d / "*.txt"))) == ["one", "two"]
    assert collect(read_lines([str(d / "b.log"), str(d / "a.txt")])) == ["three", "four", "one", "two"]
    with pytest.raises(NodeError, match="no such file or folder"):
        collect(read_lines(str(tmp_path / "missing.txt")))
    assert collect(read_lines(str(tmp_path / "nothing-*.txt"))) == []  # an empty glob: no files yet


def test_json_lines_with_their_file_and_line_numbers(tmp_path: Any) -> None:
    a = write(tmp_path / "a.jsonl", '{"x": 1}\n\n{"x": 2}\n')
    b = write(tmp_path / "b.jsonl.gz", '{"x": 3}\n', gz=True)
    assert collect(read_jsonl([a, b])) == [{"x": 1}, {"x": 2}, {"x": 3}]
    records = collect(read_jsonl([a, b], with_position=True))
    assert records == [FileRecord(a, 1, {"x": 1}), FileRecord(a, 3, {"x": 2}), FileRecord(b, 1, {"x": 3})]
    assert records[0].path == a and records[0].line == 1 and records[0].value == {"x": 1}


def test_a_bad_json_line_goes_to_the_error_policy_and_reading_goes_on(tmp_path: Any) -> None:
    path = write(tmp_path / "a.jsonl", '{"x": 1}\n{"x": \n{"x": 3}\nnot json\n')
    out = Loader.to_list(name="out")
    result = Pipeline(read_jsonl(path, name="src", on_error="dead_letter") >> out).run()
    assert result.results["out"] == [{"x": 1}, {"x": 3}]
    bad = [(r.item, str(r.exception)) for r in result.dead_letters]
    assert [item for item, _ in bad] == ['{"x": ', "not json"]
    assert f"{path}:2: not valid JSON" in bad[0][1] and f"{path}:4: not valid JSON" in bad[1][1]
    assert all(isinstance(r.exception, SourceRecordError) for r in result.dead_letters)
    assert result["src"].errors == 2
    result.check_accounting()
    with pytest.raises(NodeError, match=r"Extractor 'src' failed on item '\{\"x\": ': SourceRecordError"):
        Pipeline(read_jsonl(path, name="src") >> Loader.to_list()).run()


def test_bad_text_is_a_bad_record(tmp_path: Any) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"ok\n\xff\xfe bad\nfine\n")
    result = Pipeline(read_lines(str(path), name="src", on_error="skip") >> Loader.to_list(name="out")).run()
    assert result.results["out"] == ["ok", "fine"] and result["src"].errors == 1


def test_csv_records_as_dicts_or_lists_with_quoted_line_breaks(tmp_path: Any) -> None:
    path = write(tmp_path / "a.csv", 'id,text\n1,plain\n2,"two\nlines"\n3,"a ""quote"""\n')
    assert collect(read_csv(path)) == [{"id": "1", "text": "plain"}, {"id": "2", "text": "two\nlines"},
                                       {"id": "3", "text": 'a "quote"'}]
    assert collect(read_csv(path, header=False))[0] == ["id", "text"]
    records = collect(read_csv(path, with_position=True))
    assert [r.line for r in records] == [2, 3, 5]
    semi = write(tmp_path / "b.csv", "a;b\n1;2\n")
    assert collect(read_csv(semi, csv_options={"delimiter": ";"})) == [{"a": "1", "b": "2"}]
    with pytest.raises(TypeError):
        read_csv(semi, csv_options={"no_such_option": 1})


@pytest.mark.parametrize("fmt,gz", [("lines", False), ("jsonl", True), ("csv", False), ("csv", True)])
def test_a_source_resumes_at_its_saved_position(tmp_path: Any, fmt: str, gz: bool) -> None:
    """Read some, save the position, and a new source restored from it reads exactly the rest."""
    paths = []
    for f in range(3):
        if fmt == "csv":
            text = "n,half\n" + "".join(f'{f * 100 + i},"{i}\n/2"\n' for i in range(100))
        elif fmt == "jsonl":
            text = "".join(json.dumps({"n": f * 100 + i}) + "\n" for i in range(100))
        else:
            text = "".join(f"{f * 100 + i}\n" for i in range(100))
        paths.append(write(tmp_path / f"p{f}.{fmt}{'.gz' if gz else ''}", text, gz=gz))

    def number(item: Any) -> int:
        return int(item["n"]) if isinstance(item, dict) else int(item)

    full = FileSource(paths, format=fmt)
    full.open()
    everything: list[Any] = []
    while batch := full.read_batch(7):
        everything += batch
    full.close()
    assert [number(x) for x in everything] == list(range(300))
    for stop in (0, 1, 99, 100, 150, 299, 300):
        src = FileSource(paths, format=fmt)
        src.open()
        got: list[Any] = []
        while len(got) < stop:
            got += src.read_batch(min(13, stop - len(got)))
        state = src.state()
        src.close()
        again = FileSource(paths, format=fmt)
        again.open()
        again.restore(json.loads(json.dumps(state)))  # a state survives JSON (and pickle)
        while batch := again.read_batch(11):
            got += batch
        again.close()
        assert [number(x) for x in got] == list(range(300)), (stop, state)


def test_a_file_source_resumes_in_a_checkpointed_pipeline(tmp_path: Any) -> None:
    path = write(tmp_path / "a.jsonl", "".join(json.dumps({"n": i}) + "\n" for i in range(5_000)))
    seen: list[int] = []
    calls = {"n": 0}

    def load(r: dict[str, int]) -> None:
        calls["n"] += 1
        if calls["n"] == 3_000:
            raise RuntimeError("crash")
        seen.append(r["n"])

    p = Pipeline(read_jsonl(path, name="src") >> Loader(load, name="load"), checkpoint=Checkpoint(
        str(tmp_path / "c"), every=500, seconds=None))
    with pytest.raises(NodeError):
        p.run()
    resumed = p.run()
    first_after = resumed.checkpoint.resumed_items
    assert 2_000 <= first_after < 3_000
    # at-least-once: a plain Loader sees the items since the last checkpoint again
    assert sorted(set(seen)) == list(range(5_000)) and len(seen) == 5_000 + (2_999 - first_after)


# --------------------------------------------------------------------------- sinks

def test_one_file_written_atomically(tmp_path: Any) -> None:
    path = tmp_path / "out.txt"
    gate, inside = threading.Event(), threading.Event()

    def hold(x: int) -> int:
        if x == 50:
            inside.set()
            gate.wait(10)
        return x

    p = Pipeline(Extractor(range(100), batch_size=10) >> Transformer(hold, name="hold")
                 >> write_lines(str(path), name="sink"))
    p.start()
    assert inside.wait(10)
    assert not path.exists()  # nothing is visible until the file is finished
    assert os.listdir(tmp_path) == [".out.txt.inprogress"]
    gate.set()
    result = p.join(10)
    assert result.results["sink"] == 100
    assert read_text(path) == "".join(f"{i}\n" for i in range(100))
    assert os.listdir(tmp_path) == ["out.txt"]


def test_rolled_files_by_count_and_by_size(tmp_path: Any) -> None:
    Pipeline(Extractor(range(1_000), batch_size=64) >> write_jsonl(str(tmp_path / "a.jsonl"), roll_items=300,
                                                                   name="s")).run()
    names = sorted(os.listdir(tmp_path))
    assert names == ["a-00000.jsonl", "a-00001.jsonl", "a-00002.jsonl", "a-00003.jsonl"]
    counts = [read_text(tmp_path / n).count("\n") for n in names]
    assert counts == [300, 300, 300, 100]
    d = tmp_path / "bysize"
    d.mkdir()
    Pipeline(Extractor(["x" * 99] * 100, batch_size=10) >> write_lines(str(d / "b.txt.gz"), roll_bytes=2_000,
                                                                       name="s")).run()
    names = sorted(os.listdir(d))
    assert len(names) == 5 and all(n.endswith(".txt.gz") for n in names)
    assert sum(read_text(d / n).count("\n") for n in names) == 100


def test_csv_sink_writes_a_header_per_file(tmp_path: Any) -> None:
    rows = [{"id": i, "name": f"n{i}"} for i in range(5)]
    Pipeline(Extractor(rows) >> write_csv(str(tmp_path / "r.csv"), roll_items=3, name="s")).run()
    with open(tmp_path / "r-00000.csv", newline="") as f:
        first = list(csv.reader(f))
    with open(tmp_path / "r-00001.csv", newline="") as f:
        second = list(csv.reader(f))
    assert first == [["id", "name"], ["0", "n0"], ["1", "n1"], ["2", "n2"]]
    assert second == [["id", "name"], ["3", "n3"], ["4", "n4"]]
    Pipeline(Extractor([(1, 2), (3, 4)]) >> write_csv(str(tmp_path / "t.csv"), columns=["a", "b"], name="s")).run()
    assert read_text(tmp_path / "t.csv").splitlines() == ["a,b", "1,2", "3,4"]
    with pytest.raises(NodeError, match="header=True needs columns"):
        Pipeline(Extractor([(1, 2)]) >> write_csv(str(tmp_path / "u.csv"), name="s")).run()


def test_json_sink_default_and_the_written_count(tmp_path: Any) -> None:
    import datetime
    day = datetime.date(2024, 1, 2)
    result = Pipeline(Extractor([{"d": day}]) >> write_jsonl(str(tmp_path / "d.jsonl"), default=str,
                                                             name="s")).run()
    assert read_text(tmp_path / "d.jsonl") == '{"d":"2024-01-02"}\n' and result.results["s"] == 1
    with pytest.raises(ValueError, match="roll_items"):
        JsonLinesSink(str(tmp_path / "x.jsonl"), roll_items=0)


def test_a_failed_run_without_checkpoints_keeps_what_was_written(tmp_path: Any) -> None:
    def boom(x: int) -> int:
        if x == 70:
            raise ValueError("no")
        return x

    with pytest.raises(NodeError):
        Pipeline(Extractor(range(100), batch_size=10) >> Transformer(boom, name="boom")
                 >> write_lines(str(tmp_path / "o.txt"), name="s")).run()
    written = read_text(tmp_path / "o.txt").splitlines()
    assert written == [str(i) for i in range(len(written))] and 0 < len(written) < 70  # the batches before 70
    assert os.listdir(tmp_path) == ["o.txt"]


def test_checkpointed_file_output_is_exactly_once_after_a_failure(tmp_path: Any) -> None:
    fail = {"armed": True}

    def boom(x: int) -> int:
        if fail["armed"] and x == 2_345:
            fail["armed"] = False
            raise ValueError("crash")
        return x

    def build() -> Pipeline:
        return Pipeline(Extractor(range(5_000), batch_size=50) >> Transformer(boom, name="boom")
                        >> write_jsonl(str(tmp_path / "o.jsonl.gz"), roll_items=700, name="s"),
                        checkpoint=Checkpoint(str(tmp_path / "c.ckpt"), every=400, seconds=None))

    with pytest.raises(NodeError):
        build().run()
    assert any(n.endswith(".inprogress") for n in os.listdir(tmp_path))  # cut back by the next run
    build().run()
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("o-"))
    values = [json.loads(line) for n in names for line in read_text(tmp_path / n).splitlines()]
    assert values == list(range(5_000))
    assert [read_text(tmp_path / n).count("\n") for n in names] == [700] * 7 + [100]
    assert not any(n.endswith(".inprogress") for n in os.listdir(tmp_path))
