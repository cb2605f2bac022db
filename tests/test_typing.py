"""The typed API at run time: the typed user script of tests/typing runs, and the
generic node types can be written out (``Loader[int](...)``), as a checker reads them.

What a checker sees is checked by ``mypy --strict`` in tests/typing (.ci/run's types leg).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reflux import Extractor, Filter, Flow, Loader, Pipeline, Transformer
from reflux_core.channel import MPMCChannel, SPSCChannel

TYPING = Path(__file__).resolve().parent / "typing"


@pytest.mark.skipif(not (TYPING / "user_script.py").exists(), reason="tests/typing is not next to the tests")
def test_the_typed_user_script_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", str(TYPING / "user_script.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "typed user script: ok"


def test_generic_nodes_and_channels_can_be_written_out() -> None:
    def to_str(n: int) -> str:
        return str(n)

    out: list[str] = []
    flow: Flow[int, str] = Transformer[int, str](to_str) >> Filter[str](str.isdigit)
    assert isinstance(flow, Flow)
    r = Pipeline(Extractor[int](range(5)) >> flow >> Loader[str](out.append)).run(timeout=60)
    assert out == ["0", "1", "2", "3", "4"] and r.loaded == 5
    ch = SPSCChannel[int](4)
    assert isinstance(ch, SPSCChannel) and ch.capacity == 4
    assert MPMCChannel[str].__origin__ is MPMCChannel  # type: ignore[attr-defined]
