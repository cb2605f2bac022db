#!/usr/bin/env python3
"""Run the test suite against the *installed* pyreflux, from a temporary folder.

    python tools/run_wheel_tests.py [PROJECT_DIR] [-- extra pytest arguments]

PROJECT_DIR (default: the folder above tools/) is a checkout or an unpacked
sdist.  Its tests/, README.md, ARCHITECTURE.md and docs/ (their examples are tests), benchmarks/
(the benchmark smoke test runs ``python -m benchmarks.channels``), examples/
(tests run each example; the user-extension test builds one, when Cython and a
compiler are there) and
pyproject.toml (for the ``[tool.pytest.ini_options]`` the suite relies on:
importlib import mode, ``filterwarnings = error``, the ``slow`` marker) are
copied to a fresh temporary folder, and pytest runs there with
``-p no:cacheprovider -m "not slow"``.  Nothing of the source tree is
importable from there, so the tests exercise the installed wheel.

Before pytest runs, the installed packages are checked: ``reflux`` and
``reflux_core`` must come from site-packages (not from PROJECT_DIR or the
temporary folder) and ``reflux_core.channel`` must be a compiled extension.

cibuildwheel's test-command calls this with ``{project}``; tools/check_wheels.sh
calls it for the wheel and the sdist installs.  Exit status: pytest's, except
that "no tests collected" (5) is a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

COPY = ["tests", "README.md", "ARCHITECTURE.md", "docs", "benchmarks", "examples", "pyproject.toml"]
REQUIRED = ["tests", "README.md", "pyproject.toml"]

PROBE = r"""
import json, os, sys
import reflux, reflux_core, reflux_core.channel as ch
print(json.dumps({
    "reflux": os.path.realpath(reflux.__file__),
    "reflux_core": os.path.realpath(reflux_core.__file__),
    "channel": os.path.realpath(ch.__file__),
    "version": reflux.__version__,
    "build_info": reflux_core.build_info(),
    "python": sys.version.split()[0],
}))
"""


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    if len(argv) > 1:
        print(__doc__, file=sys.stderr)
        return 2
    project = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    missing = [name for name in REQUIRED if not (project / name).exists()]
    if missing:
        print(f"run_wheel_tests: {project} has no {', '.join(missing)}", file=sys.stderr)
        return 2

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # nothing may put the source tree on sys.path
    workdir = Path(tempfile.mkdtemp(prefix="reflux-wheel-tests-")).resolve()
    try:
        for name in COPY:
            src = project / name
            if src.is_dir():
                shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.py[cod]", ".hypothesis", ".pytest_cache", "_build", "_generated"))
            elif src.is_file():
                shutil.copy2(src, workdir / name)

        probe = subprocess.run([sys.executable, "-c", PROBE], cwd=workdir, env=env,
                               capture_output=True, text=True)
        if probe.returncode != 0:
            print("run_wheel_tests: cannot import the installed package:\n" + probe.stderr,
                  file=sys.stderr)
            return 1
        import json

        info = json.loads(probe.stdout)
        print(f"run_wheel_tests: python {info['python']}, pyreflux {info['version']}, "
              f"build {info['build_info']}")
        print(f"run_wheel_tests: reflux      from {info['reflux']}")
        print(f"run_wheel_tests: reflux_core from {info['channel']}")
        for key in ("reflux", "reflux_core", "channel"):
            path = Path(info[key])
            for forbidden in (project, workdir):
                if forbidden == path or forbidden in path.parents:
                    print(f"run_wheel_tests: {key} is imported from {path}, inside {forbidden}: "
                          "the tests would not exercise the installed package", file=sys.stderr)
                    return 1
        if os.path.splitext(info["channel"])[1] not in (".so", ".pyd"):
            print(f"run_wheel_tests: {info['channel']} is not a compiled extension", file=sys.stderr)
            return 1

        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", *extra]
        print(f"run_wheel_tests: in {workdir}: {' '.join(cmd)}", flush=True)
        status = subprocess.call(cmd, cwd=workdir, env=env)
        if status == 5:
            print("run_wheel_tests: pytest collected no tests", file=sys.stderr)
            return 1
        return status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
