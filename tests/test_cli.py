"""The `reflux` command (the README's first set-up command runs `reflux demo`)."""
from __future__ import annotations

from contextlib import closing
import json
import subprocess
import sys

from support import needs_posix_signals

from reflux.cli.demo import EVENT_KINDS, WINDOW, build_demo, plain_loop
from reflux.cli.demo import generate_events as _generate_events


def test_demo_command_writes_window_totals(tmp_path):
    items = 3000
    proc = subprocess.run([sys.executable, "-m", "reflux", "demo", "--items", str(items), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "route_by_kind" in proc.stdout and "windows" in proc.stdout
    lines = (tmp_path / "reflux-demo-totals.jsonl").read_text().splitlines()
    # the same windows as the same work done by a plain loop (they complete in any order)
    reference = plain_loop(items, tmp_path / "plain.jsonl")
    assert sorted(lines) == sorted(reference) and len(reference) == items // WINDOW
    valid = [line for line in _generate_events(items, 7) if line.split(",")[1] in EVENT_KINDS]
    expected = 0
    for line in valid:
        _, kind, value = line.split(",")
        expected += int(value) * (3 if kind == "buy" else 1)
    totals = [json.loads(line) for line in lines]
    assert sum(v for t in totals for k, v in t.items() if k in EVENT_KINDS) == expected
    assert sorted(t["window"] for t in totals) == list(range(items // WINDOW))


def test_demo_accounts_for_every_event(tmp_path):
    pipeline, sinks = build_demo(1234, tmp_path)
    result = pipeline.run()
    result.check_accounting()
    stats = result.nodes
    assert result.results[sinks["to_list"].name] == (tmp_path / "reflux-demo-totals.jsonl").read_text().splitlines()
    assert stats["events"].received == 1234
    assert stats["pack"].emitted == stats["parse"].received == 3  # chunks of 500 lines: 500, 500, 234
    # records from the parser on: every chunk went through the hot path and the router
    assert stats["score-1"].received + stats["score-2"].received == stats["spread"].received
    assert stats["purchases"].received + stats["interactions"].received == stats["route_by_kind"].emitted
    assert sorted(result.results[sinks["to_list"].name]) == sorted(plain_loop(1234, tmp_path / "plain.jsonl"))


def test_bad_arguments_exit_with_usage_error(tmp_path):
    # cwd away from the checkout: `python -m` puts the cwd on sys.path
    proc = subprocess.run([sys.executable, "-m", "reflux", "demo", "--items", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--items must be >= 1" in proc.stderr


# --------------------------------------------------------------------------- reflux run / graph

import re  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from reflux.cli.main import EXIT_FAILED, EXIT_INVALID, EXIT_NO_FILE, EXIT_NO_NAME, EXIT_OK, EXIT_USER_CODE, main  # noqa: E402
from reflux.result import gil_enabled, thread_mode  # noqa: E402

HANG = 120

PIPELINE_FILE = '''
from reflux import Extractor, Filter, Loader, Pipeline, Transformer

def build():
    return Pipeline(Extractor(range(100), name="numbers") >> Transformer(lambda x: x * 2, name="double")
                    >> Filter(lambda x: x % 3 == 0, name="thirds") >> Loader.to_list(name="keep"), name="from-file")

made = build()
not_a_pipeline = 42

def needs_args(n):
    return build()

def returns_junk():
    return "junk"

def raises():
    raise RuntimeError("cannot build")

def invalid():
    return Pipeline(Extractor([1]) >> Transformer(lambda x: x, name="dangling"))

def failing():
    def boom(x):
        if x == 7:
            raise ValueError("seven")
        return x
    return Pipeline(Extractor(range(20)) >> Transformer(boom, name="boom") >> Loader.to_list())

if __name__ == "__main__":
    raise SystemExit("must not run when loaded by reflux")
'''


@pytest.fixture()
def pfile(tmp_path: Path) -> Path:
    path = tmp_path / "mypipes.py"
    path.write_text(PIPELINE_FILE)
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # the GIL as this interpreter has it (-X gil=1 is not inherited, PYTHON_GIL is)
    gil = ["-X", f"gil={sys._xoptions['gil']}"] if "gil" in sys._xoptions else []
    return subprocess.run([sys.executable, *gil, "-m", "reflux", *args], capture_output=True, text=True,
                          timeout=HANG, cwd=cwd)


def test_run_a_pipeline_object_from_a_file_prints_the_report(pfile: Path) -> None:
    proc = _cli("run", f"{pfile}:made", cwd=pfile.parent)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert re.search(r"^keep\s+Loader\s+34\s+34\s", proc.stdout, re.M), proc.stdout
    assert "loaded 34" in proc.stdout
    # the summary says how Python threads ran (the child is this interpreter, same environment)
    assert proc.stdout.rstrip().endswith(f"; {thread_mode()}"), proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr  # no terminal drawing when not a terminal


def test_run_a_function_with_json_stats(pfile: Path) -> None:
    proc = _cli("run", f"{pfile}:build", "--json", cwd=pfile.parent)
    assert proc.returncode == EXIT_OK, proc.stderr
    data = json.loads(proc.stdout)
    assert data["pipeline"] == "from-file" and data["status"] == "completed"
    assert data["nodes"]["thirds"]["in"] == 100 and data["nodes"]["thirds"]["filtered"] == 66
    assert data["nodes"]["keep"]["out"] == 34 and data["loaded"] == 34
    assert data["gil_enabled"] is gil_enabled() and data["mode"] == thread_mode()
    assert set(data["nodes"]["double"]) >= {"rate_in", "busy", "fill", "state", "queued", "capacity"}


def test_run_without_a_name_finds_the_only_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "single.py"
    path.write_text("from reflux import Extractor, Loader, Pipeline\n"
                    "p = Pipeline(Extractor(range(5)) >> Loader.to_list(name='sink'))\n")
    assert main(["run", str(path), "--no-progress"]) == EXIT_OK


def test_run_without_a_name_and_several_pipelines_asks_for_one(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "two.py"
    path.write_text("from reflux import Extractor, Loader, Pipeline\n"
                    "a = Pipeline(Extractor(range(5)) >> Loader.to_list())\n"
                    "b = Pipeline(Extractor(range(5)) >> Loader.to_list())\n")
    assert main(["run", str(path)]) == EXIT_NO_NAME
    assert "several Pipelines (a, b)" in capsys.readouterr().err
    path.write_text("x = 1\n")
    assert main(["graph", str(path)]) == EXIT_NO_NAME
    assert "no Pipeline object" in capsys.readouterr().err


def test_run_in_process_with_workers_is_accepted(pfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", f"{pfile}:build", "--workers", "3", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["loaded"] == 34
    assert data["workers"] == 3  # reached the pipeline's worker pool


@pytest.mark.parametrize(("target", "code", "message"), [
    ("missing.py", EXIT_NO_FILE, "no such file: missing.py"),
    ("{f}:nothing", EXIT_NO_NAME, "has no name 'nothing'"),
    ("{f}:not_a_pipeline", EXIT_INVALID, "is a int, not a reflux Pipeline"),
    ("{f}:returns_junk", EXIT_INVALID, "returned str, not a reflux Pipeline"),
    ("{f}:needs_args", EXIT_INVALID, "needs arguments"),
    ("{f}:invalid", EXIT_INVALID, "invalid pipeline: Transformer 'dangling' has no receivers"),
    ("{f}:raises", EXIT_USER_CODE, "raised: RuntimeError: cannot build"),
])
def test_run_errors_have_distinct_exit_codes(pfile: Path, capsys: pytest.CaptureFixture[str], target: str,
                                             code: int, message: str) -> None:
    target = target.format(f=pfile)
    assert main(["run", target]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_file_that_raises_while_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nraise ImportError('no such thing')\n")
    assert main(["graph", str(bad)]) == EXIT_USER_CODE
    assert "raised while loading: ImportError: no such thing" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    assert main(["graph", str(broken)]) == EXIT_NO_FILE


def test_a_failing_run_exits_1_with_the_node_named(pfile: Path) -> None:
    proc = _cli("run", f"{pfile}:failing", "--json", cwd=pfile.parent)
    assert proc.returncode == EXIT_FAILED
    assert "Transformer 'boom' failed on item 7: ValueError: seven" in proc.stderr
    data = json.loads(proc.stdout)
    assert data["status"] == "failed" and data["failed"] == ["boom"]
    assert data["errors"][0]["node"] == "boom"


def test_graph_command_prints_mermaid_and_dot(pfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", f"{pfile}:build"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("flowchart LR\n") and out.count("-->") == 3
    assert main(["graph", f"{pfile}:made", "--format", "dot"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith('digraph "from-file" {') and out.count("->") == 3
    assert main(["graph", f"{pfile}:made", "--format", "svg"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("<svg ") and out.count('class="node"') == 4 and out.count('class="edge"') == 3
    assert main(["graph", f"{pfile}:invalid"]) == EXIT_INVALID


def test_graph_bad_format_is_a_usage_error(pfile: Path) -> None:
    proc = _cli("graph", str(pfile), "--format", "png", cwd=pfile.parent)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_run_serves_prometheus_metrics_while_running(tmp_path: Path) -> None:
    release = tmp_path / "release"
    path = tmp_path / "served.py"
    path.write_text(textwrap.dedent(f'''
        import os, time
        from reflux import Extractor, Loader, Pipeline, Transformer

        def numbers():
            for i in range(50):
                yield i
            while not os.path.exists({str(release)!r}):
                time.sleep(0.02)

        pipeline = Pipeline(Extractor(numbers(), name="numbers") >> Transformer(lambda x: x + 1, name="inc")
                            >> Loader.to_list(name="sink"), name="served")
    '''))
    proc = subprocess.Popen([sys.executable, "-m", "reflux", "run", str(path), "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        url = None
        deadline = time.monotonic() + HANG
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"serving metrics at (http://\S+/metrics)", line)
            if m:
                url = m.group(1)
        assert url, "the command did not say where it serves metrics"
        body = ""
        while time.monotonic() < deadline:  # until the first items have gone through
            with urllib.request.urlopen(url, timeout=HANG) as resp:
                body = resp.read().decode()
            if 'reflux_node_items_in_total{pipeline="served",node="sink",kind="Loader"} 50' in body:
                break
            time.sleep(0.05)
        assert 'reflux_node_items_in_total{pipeline="served",node="sink",kind="Loader"} 50' in body
        assert 'reflux_pipeline_status{pipeline="served",status="running"} 1' in body
    finally:
        release.write_text("go")
        out, err = proc.communicate(timeout=HANG)
    assert proc.returncode == EXIT_OK, err
    assert "loaded 50" in out


def test_demo_shows_every_node_type(tmp_path: Path) -> None:
    pipeline, _ = build_demo(3000, tmp_path)
    kinds = {n.kind for n in pipeline.nodes}
    assert kinds == {"Extractor", "Transformer", "Filter", "Balancer", "Broadcast", "Funnel", "Messenger",
                     "Accumulator", "Loader"}
    result = pipeline.run(timeout=HANG)
    # the Balancer spread the hot path over its replicas, and every event was scored
    assert result["score-1"].received > 0 and result["score-2"].received > 0
    assert result["score-1"].received + result["score-2"].received == result["spread"].received
    result.check_accounting()


@needs_posix_signals
def test_ctrl_c_during_reflux_run_exits_130(tmp_path: Path) -> None:
    import signal

    started = tmp_path / "started"
    path = tmp_path / "forever.py"
    path.write_text(textwrap.dedent(f'''
        import itertools, pathlib, signal
        from reflux import Extractor, Loader, Pipeline, Transformer

        # a background process starts with SIGINT ignored: take Ctrl-C as Python does
        signal.signal(signal.SIGINT, signal.default_int_handler)

        def numbers():
            pathlib.Path({str(started)!r}).write_text("yes")
            yield from itertools.count()

        pipeline = Pipeline(Extractor(numbers()) >> Transformer(lambda x: x) >> Loader(lambda x: None))
    '''))
    proc = subprocess.Popen([sys.executable, "-m", "reflux", "run", str(path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + HANG
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert json.loads(out)["status"] == "interrupted"


def test_demo_plugins_match_the_python_reference() -> None:
    """The demo's compiled steps compute exactly what its Python functions do."""
    import numpy as np

    from reflux import Extractor, Filter, Loader, Messenger, Pipeline, Transformer
    from reflux.cli.demo import parse_event, score_event
    from reflux_core._demo import KindKey, KnownKinds, ScoreEvents, TripleValue, parse_lines

    lines = list(_generate_events(2000, 5))
    records = parse_lines(lines)
    events = [parse_event(line) for line in lines]
    assert records["seq"].tolist() == [e["seq"] for e in events]
    assert records["value"].tolist() == [e["value"] for e in events]
    assert [EVENT_KINDS[k] if k >= 0 else "bogus" for k in records["kind"].tolist()] == [e["kind"] for e in events]
    assert records["window"].tolist() == [e["seq"] // WINDOW for e in events]
    for w in range(20):
        known = sum(1 for e in events[w * WINDOW:(w + 1) * WINDOW] if e["kind"] in EVENT_KINDS)
        assert set(records["wsize"][w * WINDOW:(w + 1) * WINDOW].tolist()) == {known}

    known = Pipeline(Extractor([records]) >> Filter(KnownKinds()) >> Transformer(ScoreEvents())
                     >> Transformer(TripleValue()) >> Loader.to_list(name="out")).run(timeout=60)
    scored = np.concatenate(known.results["out"])  # record edges move records in batches of their own
    expected = [score_event(e) for e in events if e["kind"] in EVENT_KINDS]
    assert scored["score"].tolist() == [e["score"] for e in expected]
    assert scored["value"].tolist() == [e["value"] * 3 for e in expected]

    buys = Messenger(KindKey(), routes={0: "buy", 1: "other"}, name="route")
    buy, other = Loader.to_list(name="buy"), Loader.to_list(name="other")
    routed = Pipeline(Extractor([records[records["kind"] >= 0]]) >> buys >> [buy, other]).run(timeout=60)
    assert np.concatenate(routed.results["buy"])["kind"].tolist() == [2] * sum(e["kind"] == "buy" for e in events)
    assert 2 not in np.concatenate(routed.results["other"])["kind"].tolist()


def test_the_parser_refuses_what_is_not_a_chunk_of_events() -> None:
    from reflux_core._demo import parse_lines

    with pytest.raises(ValueError, match="line 1 is not 'seq,kind,value'"):
        parse_lines(["0,buy,3", "1,buy"])
    with pytest.raises(ValueError, match="start at a window boundary"):
        parse_lines(["5,buy,3"])
    with pytest.raises(ValueError, match="consecutive events"):
        parse_lines(["0,buy,3", "2,buy,3"])
    assert len(parse_lines([])) == 0


# --------------------------------------------------------------------------- --version, --help


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from importlib import metadata
    proc = subprocess.run([sys.executable, "-m", "reflux", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[:2] == ["reflux", metadata.version("pyreflux")], proc.stdout
    assert f"Python {sys.version.split()[0]}" in proc.stdout


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["graph", "--help"], ["demo", "--help"]])
def test_help_is_plain_text(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: reflux")
    assert "``" not in out and ":class:" not in out and ":func:" not in out, out
    if args == ["--help"]:
        assert "reflux run FILE.py[:NAME]" in out and "NAME is a Pipeline object" in out.replace("\n    ", " ")
        assert "--version" in out


def test_plain_text_drops_rest_markup() -> None:
    from reflux.cli.main import plain_text
    assert plain_text("``x`` and :class:`~reflux.Pipeline` or :func:`reflux.c_plugin`") == \
        "x and Pipeline or reflux.c_plugin"


CHECKPOINTED = textwrap.dedent('''
    import os, sys
    from reflux import Extractor, Pipeline, Transformer
    from reflux.connectors.sqlite import write_sqlite

    def work(x):
        if x == 2_345 and os.environ.get("CRASH"):
            raise RuntimeError("the machine went down")
        return (x,)

    pipeline = Pipeline(Extractor(range(5_000), name="numbers") >> Transformer(work, name="work")
                        >> write_sqlite(os.path.join(os.path.dirname(__file__), "out.db"), "t",
                                        create="CREATE TABLE IF NOT EXISTS t (x INTEGER)", name="db"),
                        name="cli-checkpoints")
''')


def test_run_with_a_checkpoint_reports_what_it_resumed(tmp_path: Path) -> None:
    import os
    import sqlite3
    script = tmp_path / "ck.py"
    script.write_text(CHECKPOINTED)
    ckpt = str(tmp_path / "run.ckpt")
    env = dict(os.environ, CRASH="1")
    first = subprocess.run([sys.executable, "-m", "reflux", "run", str(script), "--checkpoint", ckpt,
                            "--checkpoint-every", "1000"], capture_output=True, text=True, timeout=HANG,
                           cwd=tmp_path, env=env)
    assert first.returncode == EXIT_FAILED, first.stderr
    assert "no checkpoint in" in first.stderr and "starting from the beginning" in first.stderr
    second = _cli("run", str(script), "--checkpoint", ckpt, "--checkpoint-every", "1000", cwd=tmp_path)
    assert second.returncode == EXIT_OK, second.stderr
    assert re.search(r"resuming after checkpoint #\d+ of .*run\.ckpt \(\d+ items pulled before it\)", second.stderr)
    assert re.search(r"checkpoint .*run\.ckpt: resumed after checkpoint #\d+ \(\d+ items pulled before it\); "
                     r"\d+ checkpoints? recorded, last #\d+", second.stdout), second.stdout
    third = _cli("run", str(script), "--checkpoint", ckpt, "--json", cwd=tmp_path)
    data = json.loads(third.stdout)
    assert data["checkpoint"]["resumed_final"] is True and data["extracted"] == 0
    with closing(sqlite3.connect(tmp_path / "out.db")) as conn, conn:
        assert conn.execute("SELECT count(*), count(DISTINCT x) FROM t").fetchone() == (5_000, 5_000)
    usage = _cli("run", str(script), "--checkpoint-every", "5", cwd=tmp_path)
    assert usage.returncode == 2 and "--checkpoint-every needs --checkpoint PATH" in usage.stderr
