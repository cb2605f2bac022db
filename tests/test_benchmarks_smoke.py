"""Smoke tests of the benchmarks (channels, pipeline): they run and print their tables.

Never a timing assertion: the numbers are only reported by the benchmark.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_quick(module, tmp_path):
    """Run ``python -m benchmarks.<module> --quick`` from the repository root;
    return its stdout after checking the exit code, the table header and the JSON file."""
    out_json = tmp_path / f"{module}.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    header = [line for line in proc.stdout.splitlines()
              if line.startswith("benchmark ") and "items/s" in line]
    assert header, proc.stdout
    assert out_json.exists()
    return proc.stdout


def test_channel_benchmark_quick_run(tmp_path):
    stdout = run_quick("channels", tmp_path)
    assert "== targets" in stdout


def test_pipeline_benchmark_quick_run(tmp_path):
    """The pipeline benchmark runs and prints its tables; peers that are not
    installed are skipped by the benchmark itself, so this passes without them."""
    stdout = run_quick("pipeline", tmp_path)
    for title in ("== overhead", "== CPU-heavy", "== many nodes", "== latency", "== start-up", "== targets"):
        assert title in stdout, f"{title!r} missing:\n{stdout}"


def test_cython_transform_benchmark_quick_run(tmp_path):
    """The Cython transformer benchmark runs every row (checking what arrived) and prints its targets."""
    stdout = run_quick("cython_transform", tmp_path)
    for row in ("python per item", "numpy in a Transformer", "cython parallel=1", "cython parallel=2",
                "record pump x2", "== targets"):
        assert row in stdout, f"{row!r} missing:\n{stdout}"


def test_process_transport_benchmark_quick_run(tmp_path):
    """Both transports of process workers, on the wire and in a pipeline, side by side."""
    import json

    out_json = tmp_path / "process_transport.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.process_transport", "--quick", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    for title in ("== wire: 20,000 small ints", "== wire: 50 numpy arrays", "== pipeline: 20,000 ints",
                  "== pipeline: 50 numpy arrays"):
        assert title in proc.stdout, f"{title!r} missing:\n{proc.stdout}"
    report = json.loads(out_json.read_text())
    transports = ["native", "portable"] if os.name == "posix" else ["portable"]
    assert set(report["pipeline"]) == {f"{k}/{t}" for k in ("ints", "arrays") for t in transports}
    assert {"ints/portable", "arrays/portable", "ints/mp.Pipe"} <= set(report["wire"])


def test_connectors_benchmark_quick_run(tmp_path):
    """The connector benchmark checks what every row wrote; Parquet and PostgreSQL rows are
    skipped with a note where pyarrow, psycopg or a server are missing."""
    stdout = run_quick("connectors", tmp_path)
    for row in ("== sqlite", "plain script", "reflux + checkpoints every 10,000", "== targets"):
        assert row in stdout, f"{row!r} missing:\n{stdout}"
