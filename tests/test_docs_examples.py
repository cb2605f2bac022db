"""Every ```python block of docs/pipeline.md runs, so the guide's examples are proven.

Each block runs on its own in a fresh interpreter (as a reader would paste it),
with warnings turned into errors and a generous hang guard.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "pipeline.md"
HANG = 120


def _blocks() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    heading = "intro"
    pos = 0
    for m in re.finditer(r"^(#{2,4}) ([^\n]+)$|^```python\n(.*?)^```$", text, re.M | re.S):
        if m.group(1):
            heading = re.sub(r"\W+", "-", m.group(2).strip().lower()).strip("-")
            pos = 0
        else:
            pos += 1
            blocks.append((f"{heading}-{pos}", m.group(3)))
    return blocks


BLOCKS = _blocks()


def test_the_guide_has_examples() -> None:
    kinds = ["Extractor", "Transformer", "Filter", "Balancer", "Broadcast", "Funnel", "Messenger",
             "Accumulator", "Loader"]
    assert len(BLOCKS) >= len(kinds)
    for kind in kinds:  # one runnable example per node type
        assert any(f"{kind}(" in code or f"{kind}." in code for _, code in BLOCKS), kind


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_example_runs(code: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{proc.stderr}"
