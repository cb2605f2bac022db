"""Library logging conventions: everything goes to the ``reflux`` logger, which has a
NullHandler, so nothing reaches standard error unless the application configures logging."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import reflux

FAILING_RUN = textwrap.dedent("""
    import logging, sys
    from reflux import Extractor, Loader, NodeError, Pipeline, Transformer

    if sys.argv[1] == "configured":
        logging.basicConfig(level=logging.INFO)

    def boom(x):
        if x == 3:
            raise ValueError("bad item")
        return x

    # a failure the policy logs, then a node failure the application catches
    r = Pipeline(Extractor(range(10)) >> Transformer(boom, on_error="log") >> Loader.to_list(name="out")).run()
    assert r.results["out"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    try:
        Pipeline(Extractor(range(10)) >> Transformer(boom, name="boom") >> Loader.to_list()).run()
    except NodeError:
        print("caught")
""")


def _run(mode: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", FAILING_RUN, mode], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_the_reflux_logger_has_a_null_handler() -> None:
    log = logging.getLogger("reflux")
    assert any(isinstance(h, logging.NullHandler) for h in log.handlers)
    assert reflux.__name__ == log.name  # the logger is named after the package


def test_caught_failures_print_nothing_without_logging_configured(tmp_path) -> None:
    proc = _run("silent", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["caught"]
    assert proc.stderr == ""


def test_configured_logging_shows_the_failures(tmp_path) -> None:
    proc = _run("configured", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR:reflux:" in proc.stderr and "bad item" in proc.stderr
