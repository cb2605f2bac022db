"""Pipeline.to_mermaid()/to_dot()/to_svg(), the Prometheus text and server, the rich progress view."""
from __future__ import annotations

import io
import re
import threading
import urllib.error
import urllib.request
from xml.etree import ElementTree

import pytest
from rich.console import Console

from reflux import Broadcast, Extractor, Filter, Funnel, Loader, Messenger, Pipeline, Transformer, ValidationError
from reflux.observe.metrics import CONTENT_TYPE, MetricsServer, prometheus_text
from reflux.observe.progress import LiveProgress, render_stats

HANG = 60


def _routing_pipeline() -> Pipeline:
    dead = Loader.to_list(name="dead")
    router = Messenger(lambda r: r["k"], name="route", routes={"a": "handle-a", 7: "handle-b"},
                       default="handle-b", on_error="dead_letter")
    p = Pipeline(name='my "graph"', dead_letter=dead)
    p.add(Extractor([{"k": "a"}], name="src") >> router)
    ha, hb = Transformer(lambda r: r, name="handle-a"), Transformer(lambda r: r, name="handle-b")
    p.add(ha, hb)
    p.connect([ha, hb], Funnel(name="merge"))
    p.connect(p["merge"], Loader.to_list(name="out"))
    return p


# --------------------------------------------------------------------------- graphs

def test_mermaid_shows_every_node_route_and_dead_letter_edge() -> None:
    text = _routing_pipeline().to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {}
    for line in lines[1:]:
        m = re.match(r'\s+(n\d+)\W+"([^<"]+)<br/><small>(\w+)</small>"', line)
        if m:
            ids[m.group(2)] = m.group(1)
            continue
    assert set(ids) == {"dead", "src", "route", "handle-a", "handle-b", "merge", "out"}
    assert f'    {ids["route"]}{{"route<br/><small>Messenger</small>"}}' in lines  # a Messenger is a rhombus
    assert f"    {ids['src']} --> {ids['route']}" in lines
    assert f'    {ids["route"]} -->|"a"| {ids["handle-a"]}' in lines
    assert f'    {ids["route"]} -->|"7, default"| {ids["handle-b"]}' in lines
    assert f'    {ids["route"]} -.->|"dead letters"| {ids["dead"]}' in lines
    assert f"    {ids['merge']} --> {ids['out']}" in lines


def test_dot_is_a_digraph_with_escaped_names() -> None:
    text = _routing_pipeline().to_dot()
    assert text.startswith('digraph "my \\"graph\\"" {')
    assert text.rstrip().endswith("}")
    assert 'label="route\\nMessenger", shape=diamond' in text
    assert re.search(r'n\d+ -> n\d+ \[label="dead letters", style=dashed\];', text)
    assert re.search(r'n\d+ -> n\d+ \[label="7, default"\];', text)
    # one node statement per node, one edge statement per edge (4 plain, 2 routes, 1 dead letter)
    assert len(re.findall(r"^\s+n\d+ \[label=", text, re.M)) == 7
    assert len(re.findall(r"^\s+n\d+ -> n\d+", text, re.M)) == 7


SVG = "{http://www.w3.org/2000/svg}"


def _svg_nodes(text: str) -> dict[str, tuple[str, float, float]]:
    """{title: (kind, x, y)} of every node the SVG draws (the centre of its title)."""
    root = ElementTree.fromstring(text)
    nodes = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node":
            title = next(g.iter(f"{SVG}text"))
            nodes[title.text or ""] = (g.get("data-kind") or "", float(title.get("x", 0)), float(title.get("y", 0)))
    return nodes


def test_svg_draws_every_node_and_edge_in_layers_from_left_to_right() -> None:
    text = _routing_pipeline().to_svg()
    root = ElementTree.fromstring(text)  # well-formed XML: names are escaped
    assert root.tag == f"{SVG}svg" and float(root.get("width", 0)) > 0
    nodes = _svg_nodes(text)
    assert {k: v[0] for k, v in nodes.items()} == {
        "dead": "Loader", "src": "Extractor", "route": "Messenger", "handle-a": "Transformer",
        "handle-b": "Transformer", "merge": "Funnel", "out": "Loader"}
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == 7  # 4 plain, 2 routes, 1 dead letter
    assert sum(1 for p in edges if p.get("stroke-dasharray")) == 1
    labels = sorted(t.text or "" for t in root.iter(f"{SVG}text") if t.get("class") == "edge-label")
    assert labels == ["7, default", "a", "dead letters"]
    assert root.find(f"{SVG}text").text == 'my "graph"'  # the title, unescaped by the parser
    x = {name: v[1] for name, v in nodes.items()}
    assert x["src"] < x["route"] < x["handle-a"] < x["merge"] < x["out"]  # the flow goes right
    assert x["handle-a"] == x["handle-b"] and x["dead"] > x["route"]


def test_svg_top_down_and_edges_that_skip_layers() -> None:
    src = Extractor([1], name="src")
    fork = Broadcast(name="fork")
    slow = Transformer(lambda x: x, name="a") >> Transformer(lambda x: x, name="b")
    merge = Funnel(name="merge")
    p = Pipeline(src >> fork >> [slow, Transformer(lambda x: x, name="short")])
    p.connect([p["b"], p["short"]], merge)
    p.connect(merge, Loader.to_list(name="out"))
    nodes = _svg_nodes(p.to_svg("TD"))
    y = {name: v[2] for name, v in nodes.items()}
    assert y["src"] < y["fork"] < y["a"] < y["b"] < y["merge"] < y["out"]  # the flow goes down
    assert y["short"] == y["a"]  # in the layer after fork; its edge to merge skips a layer
    with pytest.raises(ValueError, match="direction"):
        p.to_svg("RL")


def test_graph_of_an_invalid_pipeline_names_the_node() -> None:
    p = Pipeline(Extractor([1]) >> Transformer(lambda x: x, name="dangling"))
    with pytest.raises(ValidationError, match="Transformer 'dangling' has no receivers"):
        p.to_mermaid()
    with pytest.raises(ValidationError, match="dangling"):
        p.to_dot()
    with pytest.raises(ValidationError, match="dangling"):
        p.to_svg()


# --------------------------------------------------------------------------- Prometheus

_SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)$')


def _parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP ")
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name, labels, value = m.groups()
        assert name in types, f"{name} has no TYPE line"
        pairs = frozenset(tuple(kv.split("=", 1)) for kv in re.findall(r'\w+="(?:[^"\\]|\\.)*"', labels))
        out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


def test_prometheus_text_has_the_counters_of_every_node() -> None:
    p = Pipeline(Extractor(range(10)) >> Filter(lambda x: x % 2, name="odd") >> Loader.to_list(name="sink"),
                 name="prom")
    p.run(timeout=HANG)
    samples = _parse(p.metrics())

    def get(metric: str, node: str, kind: str) -> float:
        return samples[(metric, frozenset({("pipeline", "prom"), ("node", node), ("kind", kind)}))]

    assert get("reflux_node_items_in_total", "odd", "Filter") == 10
    assert get("reflux_node_items_out_total", "odd", "Filter") == 5
    assert get("reflux_node_items_filtered_total", "odd", "Filter") == 5
    assert get("reflux_node_items_in_total", "sink", "Loader") == 5
    assert get("reflux_channel_capacity", "sink", "Loader") == 1024
    assert get("reflux_node_clogged", "sink", "Loader") == 0
    assert samples[("reflux_pipeline_status", frozenset({("pipeline", "prom"), ("status", "completed")}))] == 1
    assert samples[("reflux_pipeline_status", frozenset({("pipeline", "prom"), ("status", "running")}))] == 0
    # a source has no input channel: no channel series for it
    assert not any(name == "reflux_channel_items" and ("node", "extractor") in labels
                   for name, labels in samples)


def test_prometheus_label_values_are_escaped() -> None:
    p = Pipeline(Extractor([1], name='we"ird\\name') >> Loader.to_list(), name="esc")
    p.run(timeout=HANG)
    text = prometheus_text(p.stats())
    assert 'node="we\\"ird\\\\name"' in text
    _parse(text)


def test_metrics_server_serves_the_live_stats() -> None:
    gate = threading.Event()
    p = Pipeline(Extractor(range(50), name="src") >> Transformer(lambda x: gate.wait(HANG) and x, name="wait")
                 >> Loader.to_list(name="sink"), name="served")
    p.start()
    try:
        with p.serve_metrics(port=0) as server:
            assert server.port > 0 and server.url.endswith("/metrics")
            with urllib.request.urlopen(server.url, timeout=HANG) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE
                body = resp.read().decode()
            samples = _parse(body)
            key = ("reflux_pipeline_status", frozenset({("pipeline", "served"), ("status", "running")}))
            assert samples[key] == 1
            assert ("reflux_node_up", frozenset({("pipeline", "served"), ("node", "wait"),
                                                 ("kind", "Transformer")})) in samples
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(server.url.replace("/metrics", "/nope"), timeout=HANG)
            assert info.value.code == 404
            info.value.close()
    finally:
        gate.set()
    p.join(HANG)
    # closed: the port is released
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=5)


def test_metrics_server_needs_a_source() -> None:
    with pytest.raises(TypeError):
        MetricsServer(42)  # type: ignore[arg-type]
    server = MetricsServer(lambda: [])
    assert "reflux_node_items_in_total" in server.render()


# --------------------------------------------------------------------------- progress

def test_progress_is_off_when_not_a_terminal() -> None:
    p = Pipeline(Extractor(range(5)) >> Loader.to_list())
    view = LiveProgress(p, console=Console(file=io.StringIO(), force_terminal=False))
    assert not view.enabled
    p.start()
    with view:
        p.join(HANG)
    assert view.console.file.getvalue() == ""


def test_progress_draws_the_nodes_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    p = Pipeline(Extractor(range(2000), name="numbers") >> Filter(lambda x: x % 3, name="thirds")
                 >> Loader.to_list(name="keep"), name="shown")
    p.start()
    with LiveProgress(p, console=console, enabled=None) as view:
        assert view.enabled
        p.join(HANG)
    text = out.getvalue()
    assert "reflux · shown" in text
    for word in ("numbers", "thirds", "keep", "Filter", "1,333", "667", "done"):
        assert word in text, word


def test_render_marks_a_clogged_node() -> None:
    from reflux.observe.stats import NodeSnapshot, PipelineStats

    st = PipelineStats("x", "running", 3.0, {
        "a": NodeSnapshot("a", "Transformer", received=12_345_678, queued=4, capacity=4, state="clogged",
                          stalled=2.5)})
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render_stats(st, 100))
    text = out.getvalue()
    assert "clogged 2s" in text or "clogged 3s" in text
    assert "12.3M" in text and "100%" in text


def test_run_with_progress_true_finishes_and_returns_the_result() -> None:
    p = Pipeline(Extractor(range(100)) >> Loader.to_list(name="sink"))
    result = p.run(timeout=HANG, progress=True)  # stderr is not a terminal under pytest: still fine
    assert result.loaded == 100
