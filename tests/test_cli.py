"""The `reflux` command (the README's first set-up command runs `reflux demo`)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

from reflux.cli import EVENT_KINDS, _generate_events, build_demo


def test_demo_command_writes_window_totals(tmp_path):
    items = 3000
    proc = subprocess.run([sys.executable, "-m", "reflux", "demo", "--items", str(items), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "route_by_kind" in proc.stdout and "windows" in proc.stdout
    lines = (tmp_path / "reflux-demo-totals.jsonl").read_text().splitlines()
    valid = [line for line in _generate_events(items, 7) if line.split(",")[1] in EVENT_KINDS]
    assert len(lines) == math.ceil(len(valid) / 100)
    expected = 0
    for line in valid:
        _, kind, value = line.split(",")
        expected += int(value) * (3 if kind == "buy" else 1)
    assert sum(sum(json.loads(line).values()) for line in lines) == expected


def test_demo_accounts_for_every_event(tmp_path):
    pipeline, sinks = build_demo(1000, tmp_path)
    result = pipeline.run()
    stats = result.nodes
    assert result.results[sinks["to_list"].name] == (tmp_path / "reflux-demo-totals.jsonl").read_text().splitlines()
    assert stats["valid"].received == 1000
    assert stats["valid"].filtered + stats["route_by_kind"].received == 1000
    assert stats["purchases"].received + stats["interactions"].received == stats["route_by_kind"].received


def test_bad_arguments_exit_with_usage_error(tmp_path):
    # cwd away from the checkout: `python -m` puts the cwd on sys.path
    proc = subprocess.run([sys.executable, "-m", "reflux", "demo", "--items", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--items must be >= 1" in proc.stderr
