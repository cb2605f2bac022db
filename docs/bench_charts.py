"""Charts of the benchmarks, from the JSON that ``python -m benchmarks.NAME --json FILE`` writes.

Used by ``docs/pictures.py``: :data:`CHARTS` maps a benchmark's name to a
function that takes its JSON and returns ``(suffix, figure)`` pairs.  Every
chart puts reflux and its peers side by side from one run, reflux's bars in
one colour and the peers' in another, and says under it what ran, where and
when (from the JSON's own metadata).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9.5, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.dpi": 100})
REFLUX = "#7b1fa2"
PEER = "#90a4ae"
Chart = Iterator[tuple[str, Figure]]


def _where(meta: dict[str, Any]) -> str:
    date = str(meta.get("date", ""))[:16].replace("T", " ")
    cpus = meta.get("cpus")
    python = meta.get("python")
    parts = [f"{cpus} CPUs" if cpus else "", f"Python {python}" if python else "", f"{date} UTC" if date else ""]
    return ", ".join(p for p in parts if p)


def human(v: float) -> str:
    """3.58 M, 385 k, 26.9: a rate as people read it."""
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def bars(title: str, labels: list[str], values: list[float], unit: str, *, reflux: list[bool],
         note: str = "", log: bool = False, fmt: Callable[[float], str] = human) -> Figure:
    """Horizontal bars, the first label on top, each bar labelled with its value."""
    height = 0.9 + 0.33 * len(labels) + (0.3 if note else 0)
    fig, ax = plt.subplots(figsize=(8.2, height))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=[REFLUX if r else PEER for r in reflux], height=0.65)
    ax.set_yticks(ys, labels)
    ax.set_xlabel(unit)
    if log:
        ax.set_xscale("log")
    if fmt is human:
        ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
    top = max(values) if values else 1.0
    ax.set_xlim(right=top * (3.0 if log else 1.18))
    for y, v in zip(ys, values):
        ax.text(v * (1.05 if log else 1.0) + (0 if log else top * 0.01), y, fmt(v), va="center", fontsize=8.5)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if note:
        fig.text(0.01, 0.005, note, fontsize=7.5, color="#555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return fig


def _rows(data: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return [r for r in data["rows"] if r.get("section") == section and r.get("rate")]


def _is_reflux(label: str) -> bool:
    return label.startswith("reflux") or label.startswith("RecordChannel")


def channels(data: dict[str, Any]) -> Chart:
    meta = data.get("meta", {})
    rows = _rows(data, "1p1c")
    yield "", bars("Channels: one producer and one consumer thread, 1,000,000 ints",
                   [r["label"] for r in rows], [r["rate"] / 1e6 for r in rows], "million items per second",
                   reflux=[_is_reflux(r["label"]) for r in rows],
                   note=f"python -m benchmarks.channels: medians of {meta.get('repeat', '?')} runs; {_where(meta)}")
    rows = _rows(data, "records")
    if rows:
        yield "-records", bars("Records without the GIL: RecordChannel and a plain C ring",
                               [r["label"] for r in rows], [r["rate"] / 1e6 for r in rows],
                               "million 8-byte records per second", reflux=[_is_reflux(r["label"]) for r in rows],
                               note=f"python -m benchmarks.channels: {_where(meta)}")


def pipeline(data: dict[str, Any]) -> Chart:
    meta = data.get("meta", {})
    rows = _rows(data, "overhead")
    yield "", bars("A light pipeline (1,000,000 ints: x*2+1, x%3==0, sum), reflux and its peers",
                   [r["label"] for r in rows], [r["rate"] for r in rows], "items per second (log scale)",
                   reflux=[bool(r.get("reflux")) for r in rows], log=True,
                   note=f"python -m benchmarks.pipeline: medians; {_where(meta)}")
    rows = _rows(data, "cpu")
    if rows:
        base = rows[0]["rate"]
        yield "-cpu", bars("CPU-heavy Python: speed-up over the plain loop, 2 cores",
                           [r["label"] for r in rows], [r["rate"] / base for r in rows], "x the plain loop",
                           reflux=[bool(r.get("reflux")) for r in rows], fmt=lambda v: f"{v:.2f}x",
                           note=f"python -m benchmarks.pipeline: {_where(meta)}")


def cython_transform(data: dict[str, Any]) -> Chart:
    rates = data["records_per_s"]
    labels = list(rates)
    yield "", bars(f"One transform over {data['records']:,} records, six ways",
                   labels, [rates[k] / 1e6 for k in labels], "million records per second",
                   reflux=["python per item" not in k and "numpy" not in k for k in labels],
                   note=f"python -m benchmarks.cython_transform: medians of {data.get('repeat', '?')} runs "
                        "(purple: a compiled plug-in)")


def process_transport(data: dict[str, Any]) -> Chart:
    wire = data["wire"]
    labels = list(wire)
    load = f"load average {data.get('load_start', 0):.1f}-{data.get('load_end', 0):.1f}"
    yield "", bars("Process to process: each way against reflux's OS pipes",
                   labels, [wire[k]["ratio"] for k in labels], "x the native transport (higher is faster)",
                   reflux=[k.endswith("pipe+writev") or k.endswith("portable") for k in labels],
                   fmt=lambda v: f"{v:.2f}x",
                   note=f"python -m benchmarks.process_transport: medians; {load}")


def panels(title: str, parts: list[tuple[str, list[dict[str, Any]]]], unit: str, note: str = "") -> Figure:
    """One panel of bars per part (its own scale): ``(subtitle, rows)``, each row with a
    ``label``, a ``rate`` and whether it is ``reflux``."""
    n = sum(len(rows) for _, rows in parts)
    fig, axes = plt.subplots(len(parts), 1, figsize=(8.2, 0.9 + 0.33 * n + 0.55 * len(parts)),
                             gridspec_kw={"height_ratios": [max(1, len(rows)) for _, rows in parts]})
    axes = list(axes) if len(parts) > 1 else [axes]
    for ax, (subtitle, rows) in zip(axes, parts):
        ys = list(range(len(rows)))[::-1]
        values = [r["rate"] for r in rows]
        ax.barh(ys, values, color=[REFLUX if r.get("reflux") else PEER for r in rows], height=0.65)
        ax.set_yticks(ys, [r["label"] for r in rows])
        top = max(values)
        ax.set_xlim(right=top * 1.22)
        for y, v in zip(ys, values):
            ax.text(v + top * 0.01, y, human(v), va="center", fontsize=8.5)
        ax.xaxis.set_major_formatter(EngFormatter(sep=" "))
        ax.set_title(subtitle, loc="left", fontsize=9.5)
    axes[-1].set_xlabel(unit)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
    if note:
        fig.text(0.01, 0.005, note, fontsize=7.5, color="#555", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return fig


def _listed(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = data["rows"]
    return [r for r in (rows.values() if isinstance(rows, dict) else rows) if r.get("rate")]


def streaming(data: dict[str, Any]) -> Chart:
    rows = _listed(data)
    titles = {"async": "10,000 calls that wait 10 ms", "batched": "1,000,000 floats through np.sqrt",
              "sum": "1,000,000 ints through x*2+1, x%3==0 into a sum"}
    parts = [(titles.get(sec, sec), [r for r in rows if r["section"] == sec]) for sec in titles]
    yield "", panels("Streaming features against the plain ways of doing the same work",
                     [(t, rs) for t, rs in parts if rs], "items per second",
                     note="python -m benchmarks.streaming: medians")


def demo(data: dict[str, Any]) -> Chart:
    rows = _listed(data)
    titles = {"demo": "reflux demo's pipeline and the same functions in one loop",
              "light": "the light pipeline (x*2+1, x%3==0, sum)",
              "cpu": "CPU-heavy Python in 2 worker processes",
              "mixed": "Python beside a nogil plug-in (2 replicas)"}
    parts = [(titles.get(sec, sec), [r for r in rows if r["section"] == sec]) for sec in titles]
    yield "", panels("Pool workers: 1, 2 and 4 against the plain loop",
                     [(t, rs) for t, rs in parts if rs], "items per second",
                     note="python -m benchmarks.demo: medians")


CHARTS: dict[str, Callable[[dict[str, Any]], Chart]] = {
    "channels": channels,
    "pipeline": pipeline,
    "cython_transform": cython_transform,
    "process_transport": process_transport,
    "streaming": streaming,
    "demo": demo,
}
