"""Smoke tests of the benchmarks (channels, pipeline): they run and print their tables.

Never a timing assertion: the numbers are only reported by the benchmark.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_channel_benchmark_quick_run(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.channels", "--quick", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    header = [line for line in proc.stdout.splitlines()
              if line.startswith("benchmark ") and "items/s" in line]
    assert header, proc.stdout
    assert "== targets" in proc.stdout
    assert out_json.exists()


def test_pipeline_benchmark_quick_run(tmp_path):
    """The pipeline benchmark runs and prints its tables; peers that are not
    installed are skipped by the benchmark itself, so this passes without them."""
    out_json = tmp_path / "pipeline.json"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--quick", "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    header = [line for line in proc.stdout.splitlines()
              if line.startswith("benchmark ") and "items/s" in line]
    assert header, proc.stdout
    for title in ("== overhead", "== CPU-heavy", "== many nodes", "== latency", "== start-up", "== targets"):
        assert title in proc.stdout, f"{title!r} missing:\n{proc.stdout}"
    assert out_json.exists()
