"""Every example in examples/ runs on small data and does what its docstring says."""
from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from reflux import RoutingError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HANG = 120

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/ is not next to the tests")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"reflux_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_etl_cleans_aggregates_and_writes_csv(tmp_path: Path) -> None:
    etl = _load("etl")
    src = etl.make_sample_csv(tmp_path / "in.csv", 2000)
    out = tmp_path / "out.csv"
    result = etl.build(src, out, batch=64).run(timeout=HANG)
    result.check_accounting()
    # expected, computed directly from the input
    expected: dict[str, list[float]] = {}
    malformed = 0
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            try:
                amount = float(row["amount"])
            except ValueError:
                malformed += 1
                continue
            if amount <= 0:
                continue
            e = expected.setdefault(row["region"].strip().lower(), [0, 0.0, 0])
            e[0] += 1
            e[1] += amount
            e[2] += int(row["quantity"])
    assert malformed == 40
    rejects = result.results["rejects"]
    assert len(rejects) == malformed and all(isinstance(r.exception, ValueError) for r in rejects)
    with open(out, newline="") as f:
        written = {r["region"]: r for r in csv.DictReader(f)}
    assert set(written) == set(etl.REGIONS) == set(expected)
    for region, (n, revenue, units) in expected.items():
        assert int(written[region]["orders"]) == n
        assert float(written[region]["revenue"]) == pytest.approx(revenue, abs=0.01)
        assert int(written[region]["units"]) == units


def test_image_tiles_blur_equals_blurring_the_whole_image() -> None:
    ex = _load("image_tiles")
    image = ex.make_image(100)
    result = ex.build(image, tile=32, replicas=3, blur=ex.numpy_box_blur).run(timeout=HANG)
    blurred = result.results["assemble"]
    whole = ex.numpy_box_blur(np.pad(image, 1, mode="edge"))
    assert blurred.shape == image.shape
    np.testing.assert_allclose(blurred, whole, rtol=1e-6)
    assert blurred.std() < image.std()  # it did blur
    # 4x4 tiles (the last row and column are partial), spread over every replica
    assert result["tiles"].emitted == 16
    assert all(result[f"blur-{i}"].received > 0 for i in (1, 2, 3))
    assert sum(result[f"blur-{i}"].received for i in (1, 2, 3)) == 16


def test_analytics_keyed_routing_and_windowed_counts() -> None:
    ex = _load("analytics")
    n = 5000
    result = ex.build(n, shards=3, window=0.05).run(timeout=HANG)
    windows = result.results["windows"]
    expected = Counter(e["page"] for e in ex.events(n))
    assert ex.totals(windows) == expected
    assert sum(w["events"] for w in windows) == n
    assert all(0 < w["events"] <= 1000 for w in windows)
    # keyed: a user's events all reach one shard
    shard_of: dict[int, str] = {}
    for e in ex.events(n):
        shard_of.setdefault(e["user"], f"shard-{e['user'] % 3}")
    per_shard = Counter(shard_of[e["user"]] for e in ex.events(n))
    for shard, count in per_shard.items():
        assert sum(w["events"] for w in windows if w["shard"] == shard) == count


def test_dirwalk_with_needs_more_work_finds_every_file(tmp_path: Path) -> None:
    ex = _load("dirwalk")
    expected_files = 0
    expected_bytes = 0
    for d in range(4):
        sub = tmp_path / f"d{d}" / "deeper" / "deepest"
        sub.mkdir(parents=True)
        for i in range(d + 2):
            for folder in (sub, sub.parent):
                f = folder / f"f{i}.txt"
                f.write_text("x" * (i * 10 + d))
                expected_files += 1
                expected_bytes += i * 10 + d
        (sub / "skip.bin").write_bytes(b"\0" * 5)
    result = ex.build([tmp_path], ".txt").run(timeout=HANG)
    report = result.results["report"]
    assert report["files"] == expected_files and report["bytes"] == expected_bytes
    assert result["wanted"].filtered == 4  # the .bin files
    assert result["walk"].fed_back > expected_files  # folders and files came back through the node
    assert report["largest"][0][1] == max(i * 10 + d for d in range(4) for i in range(d + 2))


def test_routing_dispatches_by_key_with_a_dead_letter_sink() -> None:
    ex = _load("routing")
    n = 3000
    result = ex.build(n).run(timeout=HANG)
    result.check_accounting()
    reqs = list(ex.requests(n))
    responses = result.results["responses"]
    dead = result.results["dead-letters"]
    assert len(responses) + len(dead) == n  # nothing dropped silently
    unknown = [r for r in reqs if r["type"] == "unsubscribe"]
    too_big = [r for r in reqs if r["type"] == "refund" and r["amount"] > ex.REFUND_LIMIT]
    routing = [rec for rec in dead if isinstance(rec.exception, RoutingError)]
    assert sorted(rec.item["id"] for rec in routing) == sorted(r["id"] for r in unknown)
    assert all(rec.node == "dispatch" for rec in routing)
    refused = [rec for rec in dead if isinstance(rec.exception, ValueError)]
    assert sorted(rec.item["id"] for rec in refused) == sorted(r["id"] for r in too_big)
    assert all(rec.node == "refunds" for rec in refused)
    by_handler = Counter(r["handler"] for r in responses)
    assert by_handler["orders"] == sum(r["type"] == "order" for r in reqs)
    assert by_handler["queries"] == sum(r["type"] == "query" for r in reqs)


@pytest.mark.parametrize("name", ["etl", "image_tiles", "analytics", "dirwalk", "routing"])
def test_each_example_runs_with_reflux_run_and_draws(name: str, tmp_path: Path) -> None:
    """`reflux run examples/NAME.py` and `reflux graph` work on every example (its `pipeline()`)."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    graph = subprocess.run([sys.executable, "-m", "reflux", "graph", str(EXAMPLES / f"{name}.py")],
                           capture_output=True, text=True, timeout=HANG, cwd=tmp_path, env=env)
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.startswith("flowchart LR")
    run = subprocess.run([sys.executable, "-m", "reflux", "run", str(EXAMPLES / f"{name}.py"), "--json"],
                         capture_output=True, text=True, timeout=HANG, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert '"status": "completed"' in run.stdout


def test_image_tiles_uses_the_compiled_blur_when_it_is_built(tmp_path: Path) -> None:
    """With examples/cython_transformer built (hotpath importable), the image example blurs with
    the Cython blur3x3 by default, and the result equals the numpy blur."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("Cython") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("Cython or setuptools is not installed in the test environment")
    work = tmp_path / "hotpath"
    shutil.copytree(EXAMPLES / "cython_transformer", work,
                    ignore=shutil.ignore_patterns("build", "*.so", "*.pyd", "*.c", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("REFLUX_")}
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    check = f"""
import importlib.util, numpy as np
spec = importlib.util.spec_from_file_location("image_tiles", {str(EXAMPLES / "image_tiles.py")!r})
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)
assert ex.box_blur is ex.cython_box_blur, "hotpath was not picked up"
image = ex.make_image(150)
blurred = ex.build(image, tile=40, replicas=2).run(timeout=120).results["assemble"]
np.testing.assert_allclose(blurred, ex.numpy_box_blur(np.pad(image, 1, mode="edge")), rtol=1e-5, atol=1e-6)
print("CYTHON BLUR OK")
"""
    run = subprocess.run([sys.executable, "-W", "error", "-c", check], cwd=work, env=env,
                         capture_output=True, text=True, timeout=HANG)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "CYTHON BLUR OK" in run.stdout
