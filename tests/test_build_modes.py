"""Build modes (slow): the core is rebuilt in a fresh virtual environment with
REFLUX_PARK=portable (the condition-variable parking other platforms use),
REFLUX_BARRIER=fence (fences instead of membarrier, as on macOS) and
REFLUX_DEBUG=1, and the channel tests run against each build."""
from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_TESTS = ["tests/test_channel_unit.py", "tests/test_channel_stress.py", "tests/test_channel_record.py",
                 "tests/test_channel_signals.py"]

MODES = {
    "portable-park": ({"REFLUX_PARK": "portable"}, {"park_backend": "condvar"}),
    "fence-barrier": ({"REFLUX_BARRIER": "fence"}, {"barrier_mode": "fence"}),
    "debug": ({"REFLUX_DEBUG": "1"}, {"debug": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_channel_suite_passes_in_build_mode(mode, tmp_path):
    if not (ROOT / "setup.py").exists():
        pytest.skip("needs the source checkout")
    env_vars, expected = MODES[mode]
    src = tmp_path / "src"
    # build from a copy so the checkout's build outputs are never touched
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "*.c", "*.egg-info", ".venv*", "__pycache__", ".hypothesis"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    env = {**os.environ, **env_vars}
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", f"{src}[test]"],
                   check=True, env=env, timeout=900)
    info = subprocess.run([str(py), "-c", "import reflux_core, reflux_core.channel as c, json; "
                           "print(json.dumps([reflux_core.build_info(), c.__file__]))"],
                          check=True, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    import json
    built, channel_file = json.loads(info.stdout)
    for key, value in expected.items():
        assert built[key] == value, built
    if channel_file.endswith(".so"):  # ELF (Linux): the debug build keeps its debug information, the others not
        with open(channel_file, "rb") as f:
            has_debug_info = b".debug_info" in f.read()
        assert has_debug_info == (mode == "debug"), (mode, channel_file)
    tests = [t for t in CHANNEL_TESTS if (src / t).exists()]
    assert tests, "no channel tests found"
    pytest_bin = env_dir / ("Scripts" if os.name == "nt" else "bin") / "pytest"
    proc = subprocess.run([str(pytest_bin), "-q", "-x", "-p", "no:cacheprovider", *tests],
                          cwd=src, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
