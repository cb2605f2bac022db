"""The user path: build examples/cython_transformer against the INSTALLED
reflux_core in a temporary folder, import it in a fresh interpreter, run it in
pipelines and compare with pure-numpy references.  The documentation's Cython
page (docs/cython.md) includes these very files (checked here).

Needs a C compiler and Cython in the test environment (skipped otherwise,
e.g. in the wheel venv that deliberately has neither).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "cython_transformer"
CYTHON_PAGE = ROOT / "docs" / "cython.md"

CHECK = r'''
import os, sys, sysconfig
import numpy as np
import reflux_core, hotpath
from reflux import Balancer, Extractor, Funnel, Loader, Pipeline, Transformer
from reflux_core.transform import RecordError

# a free-threaded build: the example declares free-threading support, so
# importing it (and reflux) leaves the GIL off (run without PYTHON_GIL)
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    assert not sys._is_gil_enabled(), "importing the example turned the GIL on"

here = os.path.realpath(os.getcwd())
# the extension is the one just built here; reflux_core is the installed one
assert os.path.realpath(hotpath.__file__).startswith(here), hotpath.__file__
assert not os.path.realpath(reflux_core.__file__).startswith(here), reflux_core.__file__

# the example scripts themselves run (record_edges.py checks its own results)
import runpy
runpy.run_path("run_example.py", run_name="__main__")
runpy.run_path("record_edges.py", run_name="__main__")

rng = np.random.default_rng(1)
readings = np.zeros(20_000, dtype=hotpath.READING)
readings["sensor"] = rng.integers(0, 50, len(readings))
readings["raw"] = rng.uniform(-100, 1000, len(readings))
chunks = [readings[i:i + 777] for i in range(0, len(readings), 777)]
res = Pipeline(Extractor(chunks) >> Transformer(hotpath.Calibrate(0.1, -40.0), name="cal")
               >> Loader.to_list(name="out")).run()
got = np.concatenate(res.results["out"])
keep = readings["raw"] >= 0
ref = np.zeros(int(keep.sum()), dtype=hotpath.CELSIUS)
ref["sensor"] = readings["sensor"][keep]
ref["celsius"] = 0.1 * readings["raw"][keep] + -40.0
assert got.dtype == np.dtype(hotpath.CELSIUS)
np.testing.assert_array_equal(got["sensor"], ref["sensor"])
np.testing.assert_allclose(got["celsius"], ref["celsius"], rtol=1e-12, atol=1e-12)
assert res.nodes["cal"].received == res.nodes["cal"].emitted == len(chunks)

# a NaN reading fails its chunk with the plug-in's error code, under the node's policy
bad = readings[:100].copy()
bad["raw"][42] = np.nan
res = Pipeline(Extractor([bad]) >> Transformer(hotpath.Calibrate(1, 0), name="cal", on_error="log")
               >> Loader.to_list(name="out")).run()
(err,) = res.errors
assert isinstance(err.exception, RecordError), err
assert (err.exception.code, err.exception.index) == (hotpath.ERR_BAD_READING, 42)

# object lane: tiles through two replicas, compared with numpy
def blur_ref(t):
    p = np.pad(t, 1, mode="edge").astype(np.float64)
    h, w = t.shape
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9

tiles = [rng.random((48, 80), dtype=np.float32) for _ in range(12)]
for i, t in enumerate(tiles):
    t[0, 0] = i  # tags each tile so outputs can be matched after merging
# two replicas on the worker pool, in input order
res = Pipeline(Extractor(tiles) >> Transformer(hotpath.blur3x3, name="blur", parallel=2, ordered=True,
                                               batch_size=1) >> Loader.to_list(name="out")).run()
out = res.results["out"]
assert len(out) == len(tiles) and res.nodes["blur"].emitted == len(tiles)
for o, t in zip(out, tiles):
    np.testing.assert_allclose(o, blur_ref(t), rtol=1e-5, atol=1e-5)
# and behind a Balancer, merged by a Funnel (completion order)
replicas = [Transformer(hotpath.blur3x3, name=f"blur{i}") for i in range(2)]
res = Pipeline(Extractor(tiles) >> Balancer() >> replicas >> Funnel() >> Loader.to_list(name="out")).run()
out = res.results["out"]
assert len(out) == len(tiles)
assert res.nodes["blur0"].received == res.nodes["blur1"].received == 6
for o in out:
    matches = [t for t in tiles if np.allclose(o, blur_ref(t), rtol=1e-5, atol=1e-5)]
    assert len(matches) == 1
print("EXAMPLE OK")
'''


def _toolchain_missing() -> str | None:
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler"
    if importlib.util.find_spec("Cython") is None:
        return "Cython is not installed in the test environment (pip install 'Cython>=3.1')"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed in the test environment"
    return None


@pytest.mark.skipif(not EXAMPLE.is_dir(), reason="examples/ is not next to the tests")
def test_the_cython_page_shows_the_example_files_themselves():
    if not CYTHON_PAGE.exists():
        pytest.skip("docs/cython.md is not next to the tests")
    text = CYTHON_PAGE.read_text(encoding="utf-8")
    included = re.findall(r"^```\{literalinclude\} \.\./examples/cython_transformer/(\S+)$", text, re.M)
    assert sorted(included) == sorted(["hotpath.pyx", "setup.py", "pyproject.toml", "run_example.py",
                                       "record_edges.py"])
    for name in included:
        assert (EXAMPLE / name).is_file(), name


@pytest.mark.skipif(not EXAMPLE.is_dir(), reason="examples/ is not next to the tests")
def test_user_extension_builds_against_the_installed_package_and_runs(tmp_path):
    missing = _toolchain_missing()
    if missing:
        pytest.skip(missing)
    work = tmp_path / "hotpath-example"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("build", "*.so", "*.pyd", "*.c", "__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHON_GIL") and not k.startswith("REFLUX_")}
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    built = [p.name for p in work.iterdir() if p.name.startswith("hotpath.") and p.suffix in (".so", ".pyd")]
    assert built, list(work.iterdir())
    run = subprocess.run([sys.executable, "-W", "error", "-c", CHECK], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "EXAMPLE OK" in run.stdout
