"""Every ```python block of README.md runs, so the guide's examples are proven.

Each block is saved as a script and run on its own in a fresh interpreter (as a
reader would save and run it: an example that needs ``if __name__ ==
"__main__":`` must have it), with warnings turned into errors and a generous
hang guard.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
HANG = 120


def _blocks() -> list[tuple[str, str]]:
    if not README.exists():  # e.g. tests copied next to an installed wheel without it
        return []
    text = README.read_text(encoding="utf-8")
    blocks = []
    heading = "intro"
    pos = 0
    for m in re.finditer(r"^(#{1,4}) ([^\n]+)$|^```python\n(.*?)^```$", text, re.M | re.S):
        if m.group(1):
            heading = re.sub(r"\W+", "-", m.group(2).strip().lower()).strip("-")
            pos = 0
        else:
            pos += 1
            blocks.append((f"{heading}-{pos}", m.group(3)))
    return blocks


BLOCKS = _blocks()


@pytest.mark.skipif(not README.exists(), reason="README.md is not next to the tests")
def test_the_readme_has_an_example_per_node_and_channel() -> None:
    kinds = ["Extractor", "Transformer", "Filter", "Balancer", "Broadcast", "Funnel", "Messenger",
             "Accumulator", "Loader", "SPSCChannel", "RecordChannel"]
    for kind in kinds:  # one runnable example each
        assert any(f"{kind}(" in code or f"{kind}." in code for _, code in BLOCKS), kind


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{proc.stderr}"
