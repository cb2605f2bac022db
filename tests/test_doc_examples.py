"""Every Python code block of the README and of the documentation pages runs, so no example rots.

Each fenced block whose language is ``python`` or ``py`` (also MyST's
```` ```{code-block} python ````) in README.md, ARCHITECTURE.md and
``docs/**/*.md`` is saved as a script and run on its own in a fresh interpreter,
as a reader would save and run it (an example that needs ``if __name__ ==
"__main__":`` must have it), with warnings turned into errors and a generous
hang guard.  Files the pages include with ``literalinclude`` (the Cython
example) are tested where they live (tests/test_cython_example.py).

An example that needs an optional dependency (see ``NEEDS``) is marked with it and
skipped, with the reason, where that dependency is missing; where it is present it
runs like the others, against a fresh database of the session's PostgreSQL server
(the ``PG*`` variables name it) when it needs one.  The examples that need Ray run in
tests/test_ray.py (``RAY_BLOCKS``), on that module's test cluster (``RAY_ADDRESS``
names it): a Ray session in the test process keeps threads of its own, which the
process-worker tests that fork must not meet, and tests/test_ray.py runs after them.
.ci/run's Ray and connectors legs, which install those extras, run them
(``pytest -m ray tests/test_ray.py`` / ``-m "arrow or postgres"``).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANG = 120
#: a heading, or any fenced block (its language, its text): blocks of other languages are
#: matched too, so that a "# comment" line inside them is never taken for a heading
FENCE = re.compile(r"^(#{1,4}) ([^\n]+)$|^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
PYTHON = {"python", "py", "{code-block} python"}


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]
    docs = ROOT / "docs"
    if docs.is_dir():
        pages += sorted(p for p in docs.rglob("*.md") if "_build" not in p.parts)
    return [p for p in pages if p.exists()]  # e.g. tests copied next to an installed wheel without them


def blocks(path: Path) -> list[tuple[str, str]]:
    """(id, code) of every Python block of one page, the id naming the page and the heading."""
    text = path.read_text(encoding="utf-8")
    out = []
    heading, pos = "top", 0
    for m in FENCE.finditer(text):
        if m.group(1):
            heading = re.sub(r"\W+", "-", m.group(2).strip().lower()).strip("-")
            pos = 0
        elif m.group(3).strip() in PYTHON:
            pos += 1
            code = m.group(4)
            if code.lstrip().startswith(":"):  # MyST directive options before the code
                code = "\n".join(line for line in code.splitlines() if not line.startswith(":"))
            out.append((f"{path.stem}:{heading}-{pos}", code))
    return out


BLOCKS = [block for page in _pages() for block in blocks(page)]


class Need(NamedTuple):
    """An optional dependency some examples need: how to tell them, and what they need."""
    marker: str        #: the pytest marker of such examples (``pytest -m MARKER`` runs them)
    uses: str          #: a regular expression: an example that matches it needs the dependency
    modules: tuple[str, ...]  #: what must be importable
    install: str       #: how to get it, for the skip reason


NEEDS = [
    Need("ray", r'executor="ray"|^\s*import ray\b|^\s*from ray\b', ("ray",), "pip install 'pyreflux[ray]'"),
    Need("arrow", r"reflux\.connectors\.parquet|^\s*import pyarrow|^\s*from pyarrow", ("pyarrow",),
         "pip install 'pyreflux[arrow]'"),
    Need("postgres", r"reflux\.connectors\.postgres|^\s*import psycopg", ("psycopg",),
         "pip install 'pyreflux[postgres]', and PostgreSQL's server binaries (initdb, pg_ctl)"),
    Need("cython", r"^\s*from Cython\b|^\s*import Cython\b|\bcythonize\(", ("Cython",), "pip install Cython"),
]


def needs(code: str) -> list[Need]:
    """The optional dependencies an example needs."""
    return [need for need in NEEDS if re.search(need.uses, code, re.M)]


def _param(name: str, code: str) -> Any:
    marks = []
    for need in needs(code):
        missing = [m for m in need.modules if importlib.util.find_spec(m) is None]
        marks.append(getattr(pytest.mark, need.marker))
        if missing:
            marks.append(pytest.mark.skipif(True, reason=f"{name} needs {', '.join(missing)}: {need.install}"))
    return pytest.param(code, id=name, marks=marks)


#: the examples that need Ray: tests/test_ray.py runs them on its cluster
RAY_BLOCKS = [(name, code) for name, code in BLOCKS if any(n.marker == "ray" for n in needs(code))]
#: every other example: run here
LOCAL_BLOCKS = [(name, code) for name, code in BLOCKS if (name, code) not in RAY_BLOCKS]


def run_example(code: str, folder: Path, env: dict[str, str] | None = None) -> None:
    """Save ``code`` as a script in ``folder`` and run it there, warnings as errors; fail with its stderr."""
    script = folder / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{proc.stderr}"


def _postgres_env(conninfo: str) -> dict[str, str]:
    """The ``PG*`` variables that point libpq at the database of a ``key=value`` connection string."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE", "password": "PGPASSWORD"}
    return {names[key]: value for key, _, value in (part.partition("=") for part in conninfo.split()) if key in names}


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="README.md is not next to the tests")
def test_the_pages_have_an_example_per_node_and_channel() -> None:
    kinds = ["Extractor", "Transformer", "Filter", "Balancer", "Broadcast", "Funnel", "Messenger",
             "Accumulator", "Loader", "SPSCChannel", "RecordChannel"]
    for kind in kinds:  # one runnable example each
        assert any(f"{kind}(" in code or f"{kind}." in code for _, code in BLOCKS), kind


def test_the_collector_finds_the_blocks_it_should(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n```python\nprint(1)\n```\n\n```bash\nls\n```\n\n## Part two\n\n"
                    "```py\nprint(2)\n```\n\n```{code-block} python\n:caption: c\nprint(3)\n```\n"
                    "```pycon\n>>> 4\n```\n", encoding="utf-8")
    assert blocks(page) == [("page:title-1", "print(1)\n"), ("page:part-two-1", "print(2)\n"),
                            ("page:part-two-2", "print(3)")]


def test_examples_that_need_an_extra_are_told_apart() -> None:
    assert [n.marker for n in needs('Transformer(f, executor="ray")\nimport pyarrow as pa\n')] == ["ray", "arrow"]
    assert [n.marker for n in needs("from reflux.connectors.postgres import write_postgres\n")] == ["postgres"]
    assert needs('Transformer(f, executor="process")\n# a word about ray and pyarrow\n') == []
    assert _postgres_env("host=/tmp/x port=5432 user=postgres dbname=t_1") == {
        "PGHOST": "/tmp/x", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": "t_1"}


@pytest.mark.skipif(not (ROOT / "docs").is_dir(), reason="docs/ is not next to the tests")
def test_every_example_runs_here_or_on_the_ray_test_cluster() -> None:
    assert RAY_BLOCKS, "the pages have no example that needs Ray: docs/ray.md should"
    assert len(RAY_BLOCKS) + len(LOCAL_BLOCKS) == len(BLOCKS)
    assert "for name, code in RAY_BLOCKS" in (Path(__file__).parent / "test_ray.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("code", [_param(name, code) for name, code in LOCAL_BLOCKS])
def test_example_runs(code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if any(need.marker == "postgres" for need in needs(code)):
        # a fresh database of the session's server, named by the PG* variables
        env.update(_postgres_env(request.getfixturevalue("pg")))
    run_example(code, tmp_path, env)
