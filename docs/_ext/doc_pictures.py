"""Runs ``docs/pictures.py`` when a build starts, so every picture comes from the software itself.

The pictures land in ``doc_pictures_dir`` (``docs/_generated``, never committed);
the pages show them with ``{image}``/``{figure}`` directives.  The script runs in
a subprocess started in a temporary folder, so the checkout's uncompiled
``reflux_core/`` never shadows the installed package.  ``doc_pictures_quick``
(``REFLUX_DOCS_QUICK=1``) charts fresh ``--quick`` benchmark runs instead of the
committed results.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)
SCRIPT = Path(__file__).resolve().parent.parent / "pictures.py"


def make_pictures(app: Sphinx) -> None:
    out = Path(app.config.doc_pictures_dir)
    cmd = [sys.executable, str(SCRIPT), "--out", str(out)]
    if app.config.doc_pictures_quick:
        cmd.append("--quick")
    logger.info("making the pictures: %s", " ".join(cmd))
    with tempfile.TemporaryDirectory(prefix="reflux-docs-") as cwd:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ExtensionError(f"docs/pictures.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for line in proc.stdout.splitlines():
        logger.info(line)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("doc_pictures_dir", "", "env")
    app.add_config_value("doc_pictures_quick", False, "env")
    app.connect("builder-inited", make_pictures)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
