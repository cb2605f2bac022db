"""Make the documentation's pictures from the real software, so they can always be made again.

    python docs/pictures.py [--out DIR] [--only graph,layers,progress,charts]
                            [--bench-json DIR] [--quick]

Run it from anywhere but the checkout's root (there, the uncompiled
``reflux_core/`` folder would shadow the installed package); the Sphinx build
runs it in a temporary folder when it starts (``docs/_ext/doc_pictures.py``).

graph     the demo pipeline's graph, drawn by ``reflux graph FILE --format svg``
          from the pipeline ``reflux demo`` runs (``demo-graph.svg``)
layers    the layers of the Python package and the compiled core, drawn by the
          same SVG layout (``layers.svg``)
progress  the live progress view of ``reflux demo`` in the middle of a run, as
          a terminal screenshot (``rich``'s SVG export of the same table the
          terminal shows: ``progress.svg``)
charts    one matplotlib chart per benchmark, from the JSON that
          ``python -m benchmarks.NAME --json`` writes: the files in
          ``--bench-json`` (default ``benchmarks/results/``, the runs the
          benchmark page quotes).  ``--quick`` runs each benchmark with
          ``--quick`` into a temporary folder first and charts that instead.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_JSON = ROOT / "benchmarks" / "results"
PARTS = ("graph", "layers", "progress", "charts")

#: benchmark -> the file its --json run is saved in
BENCHMARKS = ("channels", "pipeline", "cython_transform", "process_transport", "streaming", "demo")


# --------------------------------------------------------------------------- graph

DEMO_FILE = """\
import tempfile
from pathlib import Path

from reflux.cli.demo import build_demo

pipeline, _ = build_demo(1000, Path(tempfile.gettempdir()))
"""


def make_graph(out: Path, work: Path) -> Path:
    """``reflux graph demo.py --format svg``: the demo's real pipeline, drawn by the CLI."""
    script = work / "demo_pipeline.py"
    script.write_text(DEMO_FILE, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "reflux", "graph", str(script), "--format", "svg"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"reflux graph failed ({proc.returncode}):\n{proc.stderr}")
    path = out / "demo-graph.svg"
    path.write_text(proc.stdout, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- layers

def make_layers(out: Path) -> Path:
    """The layer picture of ARCHITECTURE.md (an arrow: may import)."""
    from reflux.observe.svg import BoxSpec, EdgeSpec, layered_svg

    boxes = [
        BoxSpec("cli", "cli/", "the reflux command, the demo"),
        BoxSpec("facade", "pipeline.py, __init__.py", "the Pipeline facade, the public names"),
        BoxSpec("run", "run/", "worker pool, units, fusion, processes"),
        BoxSpec("observe", "observe/", "stats, watchdog, metrics, progress, graphs"),
        BoxSpec("logic", "logic/", "what one node does with one batch"),
        BoxSpec("describe", "describe/", "nodes, >>, graph checks, the plan"),
        BoxSpec("bottom", "errors, result, policies, signals", "used by every layer"),
        BoxSpec("core", "reflux_core (Cython, C)", "channels, scheduler core, plug-in ABI", "Loader"),
    ]
    edges = [EdgeSpec("cli", "facade"), EdgeSpec("facade", "run"), EdgeSpec("facade", "observe"),
             EdgeSpec("run", "logic"), EdgeSpec("observe", "describe"), EdgeSpec("logic", "describe"),
             EdgeSpec("describe", "bottom"), EdgeSpec("run", "core", dashed=True),
             EdgeSpec("logic", "core", dashed=True), EdgeSpec("describe", "core", dashed=True)]
    path = out / "layers.svg"
    path.write_text(layered_svg(boxes, edges, "TD"), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- progress

def make_progress(out: Path, work: Path, items: int = 400_000) -> Path:
    """The live view of ``reflux demo`` when about half of its events are in."""
    from rich.console import Console

    from reflux.cli.demo import build_demo
    from reflux.observe.progress import render_stats

    pipeline, _ = build_demo(items, work)
    pipeline.start()
    try:
        deadline = time.monotonic() + 120
        stats = pipeline.stats()
        while time.monotonic() < deadline and pipeline.running:
            stats = pipeline.stats()
            if stats.nodes["events"].emitted >= items // 2:
                break
            time.sleep(0.02)
    finally:
        pipeline.stop(drain=False)
        pipeline.join(60)
    console = Console(record=True, width=118, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", legacy_windows=False)
    console.print(render_stats(stats, console.width))
    path = out / "progress.svg"
    path.write_text(console.export_svg(title="reflux demo"), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- charts

def run_quick_benchmarks(dest: Path) -> Path:
    """``python -m benchmarks.NAME --quick --json`` for each benchmark, from the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for name in BENCHMARKS:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--json",
                               str(dest / f"{name}.json")], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmarks.{name} --quick failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return dest


def make_charts(out: Path, source: Path) -> list[Path]:
    """One chart per benchmark JSON file found in ``source``."""
    import matplotlib

    matplotlib.use("Agg")
    from bench_charts import CHARTS

    made = []
    for name, draw in CHARTS.items():
        path = source / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for suffix, fig in draw(data):
            target = out / f"bench-{name}{suffix}.svg"
            fig.savefig(target, format="svg", bbox_inches="tight", metadata={"Date": None})
            import matplotlib.pyplot as plt

            plt.close(fig)
            made.append(target)
    if not made:
        raise FileNotFoundError(f"no benchmark JSON in {source} (python -m benchmarks.NAME --json FILE writes one)")
    return made


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "_generated", help="where the pictures go")
    ap.add_argument("--only", default=",".join(PARTS), help="which pictures: " + ",".join(PARTS))
    ap.add_argument("--bench-json", type=Path, default=BENCH_JSON, help="folder of benchmark JSON files")
    ap.add_argument("--quick", action="store_true", help="chart fresh --quick benchmark runs instead")
    args = ap.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reflux-pictures-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        if "graph" in parts:
            print("pictures:", make_graph(out, work))
        if "layers" in parts:
            print("pictures:", make_layers(out))
        if "progress" in parts:
            print("pictures:", make_progress(out, work))
        if "charts" in parts:
            source = run_quick_benchmarks(work / "bench") if args.quick else args.bench_json
            for path in make_charts(out, source):
                print("pictures:", path)
        print(f"pictures: done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
