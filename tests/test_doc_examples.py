"""Every Python code block of the README and of the documentation pages runs, so no example rots.

Each fenced block whose language is ``python`` or ``py`` (also MyST's
```` ```{code-block} python ````) in README.md, ARCHITECTURE.md and
``docs/**/*.md`` is saved as a script and run on its own in a fresh interpreter,
as a reader would save and run it (an example that needs ``if __name__ ==
"__main__":`` must have it), with warnings turned into errors and a generous
hang guard.  Files the pages include with ``literalinclude`` (the Cython
example) are tested where they live (tests/test_cython_example.py).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_example_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, f"example failed:\n{code}\n--- stderr ---\n{proc.stderr}"
