"""The release path (slow): tools/check_wheels.sh builds the sdist and a wheel
from it, repairs the wheel with auditwheel, installs it into a venv with no
compiler and no Cython and runs the suite against it, installs the sdist into
another venv and runs the suite again, and checks both archives' contents and
metadata.  See that script for the steps; CI's wheel-proof leg runs it too."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "check_wheels.sh"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel and manylinux wheels are Linux-only")
def test_check_wheels_builds_repairs_installs_and_tests():
    if not SCRIPT.exists() or not (ROOT / "setup.py").exists():
        pytest.skip("needs the source checkout (tools/check_wheels.sh, setup.py)")
    if shutil.which("bash") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("needs bash and a C compiler")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFLUX_") and k != "PYTHONPATH"}
    proc = subprocess.run(["bash", str(SCRIPT), sys.executable], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "check_wheels: all steps passed" in proc.stdout
    assert "manylinux" in proc.stdout
