"""The public names of ``reflux`` and ``reflux_core``: an accidental removal or rename fails here.

The lists are written out on purpose (not read from ``__all__``), so that
dropping a name from a module and from its ``__all__`` together still fails.
Adding a public name means adding it here too.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REFLUX = [
    # channels (the compiled core's, re-exported)
    "EMPTY", "Channel", "ChannelClosed", "ChannelStats", "Empty", "Full", "MPMCChannel",
    "RecordChannel", "SPSCChannel",
    # nodes and what their functions return
    "Node", "Extractor", "Transformer", "Filter", "Balancer", "Broadcast", "Funnel", "Messenger",
    "Accumulator", "Loader", "NeedsMoreWork", "Error",
    # sinks
    "ListSink", "FileSink", "CallbackSink", "CountSink", "SumSink", "ReduceSink",
    # the pipeline, its results and stats
    "Pipeline", "Flow", "RunResult", "Results", "WallTime", "NodeStats", "WorkerStats", "PipelineStats",
    "NodeSnapshot", "WorkerSnapshot", "Alert", "ErrorPolicy",
    # what a node's function may call while it runs
    "Event", "emit", "stopping",
    # checkpoints
    "Checkpoint", "CheckpointReport",
    # errors
    "RefluxError", "ValidationError", "NotCallableError", "NodeError", "ClogError", "RoutingError",
    "TransformError", "PipelineInterrupted", "AccountingError", "CheckpointError", "SourceRecordError",
    "ErrorRecord",
    # compiled plug-ins, process and Ray workers, progress and metrics (loaded on first use)
    "CPluginHandle", "PluginABIError", "RecordError", "c_plugin", "pump_for",
    "ProcessWorkerError", "RemoteError", "RayWorkerError", "LiveProgress", "render_stats", "MetricsServer",
    "prometheus_text",
    "__version__",
]

REFLUX_CORE = {
    "reflux_core": ["ABI_VERSION", "get_include", "build_info"],
    "reflux_core.channel": ["Channel", "SPSCChannel", "MPMCChannel", "RecordChannel", "ChannelClosed", "Full",
                            "Empty", "EMPTY", "ChannelStats", "park_backend", "MAX_CAPACITY",
                            "set_wait_policy", "barrier_mode"],
    "reflux_core.transform": ["ABI_VERSION", "CAPSULE_NAME", "CPlugin", "CTransform", "CFilter", "CKey",
                              "RecordPump", "RecordError", "plugin_header", "plugin_info", "run_transform",
                              "run_filter", "run_key", "KIND_TRANSFORM", "KIND_FILTER", "KIND_KEY",
                              "ERR_NOT_IMPLEMENTED", "ERR_ROUTE", "ERR_BAD_RETURN", "STRUCT_SIZE"],
}


@pytest.mark.parametrize("name", REFLUX)
def test_reflux_exports(name: str) -> None:
    import reflux
    assert getattr(reflux, name) is not None
    assert name in reflux.__all__ and name in dir(reflux)


def test_reflux_all_lists_exactly_the_public_names() -> None:
    import reflux
    assert sorted(reflux.__all__) == sorted(REFLUX)


@pytest.mark.parametrize("module,name", [(m, n) for m, names in REFLUX_CORE.items() for n in names])
def test_reflux_core_exports(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_channels_are_the_same_objects_in_both_namespaces() -> None:
    import reflux
    import reflux_core.channel as rc
    for name in REFLUX[:9]:
        assert getattr(reflux, name) is getattr(rc, name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import reflux
    with pytest.raises(AttributeError, match="no attribute 'Pipe'"):
        reflux.Pipe  # noqa: B018


def test_import_reflux_loads_neither_numpy_nor_the_optional_layers() -> None:
    """``import reflux`` stays cheap: numpy, rich, the HTTP server and process workers load on first use;
    Ray never does (not even with ``reflux.RayWorkerError``)."""
    code = ("import sys, reflux\n"
            "heavy = {'numpy', 'rich', 'http.server', 'reflux.run.process.launch', 'reflux.observe.metrics',\n"
            "         'reflux.observe.progress', 'reflux.describe.plugins', 'reflux.logic.plugins', 'ray',\n"
            "         'reflux.run.ray.connect', 'sqlite3', 'reflux.connectors', 'reflux.checkpoint.store',\n"
            "         'reflux.run.barrier'}\n"
            "assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))\n"
            "reflux.c_plugin, reflux.MetricsServer, reflux.RayWorkerError\n"
            "assert {'numpy', 'http.server', 'reflux.run.ray.connect'} <= set(sys.modules)\n"
            "assert 'ray' not in sys.modules\n")
    # cwd: not the checkout, whose uncompiled reflux_core/ would shadow the installed one
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr


ARCHITECTURE = Path(__file__).resolve().parent.parent / "ARCHITECTURE.md"


@pytest.mark.skipif(not ARCHITECTURE.exists(), reason="ARCHITECTURE.md is not next to the tests")
def test_the_architecture_page_names_every_module_of_the_installed_package() -> None:
    """ARCHITECTURE.md says where each file's job is: a module it does not name is a module
    nobody can find from it (the page must follow the tree)."""
    import reflux
    text = ARCHITECTURE.read_text(encoding="utf-8")
    root = Path(reflux.__file__).parent
    unnamed = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.name == "__main__.py":
            continue
        name = f"{rel.parent.name}/" if rel.name == "__init__.py" and rel.parent.name else rel.name
        if rel.name == "__init__.py" and not rel.parent.name:
            name = "__init__.py"
        if f"`{name}`" not in text and f"{name} " not in text and f"`{rel.as_posix()}`" not in text:
            unnamed.append(rel.as_posix())
    assert not unnamed, f"ARCHITECTURE.md does not name: {unnamed}"
