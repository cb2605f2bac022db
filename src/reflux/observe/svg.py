"""Drawing a pipeline as an SVG picture, with no drawing program installed.

:func:`to_svg` lays the graph out in layers (sources on the left, sinks on the
right), orders the nodes of each layer to keep edges from crossing, routes an
edge that skips layers through the gaps between nodes, and writes one shape
per node kind (the same kinds as the Mermaid and DOT output of
:mod:`reflux.observe.diagram`): a self-contained SVG document that a browser,
GitHub or a documentation site shows as it is.  :func:`layered_svg` does the
same for any small directed graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from ..describe.graph import Graph
from .diagram import graph_edges

__all__ = ["BoxSpec", "EdgeSpec", "layered_svg", "to_svg"]

FONT = "font-family=\"Helvetica, Arial, sans-serif\""
#: width of one character at the title size, in pixels (an estimate: no font metrics here)
CHAR_W = 7.4
NODE_H = 46
GAP_LAYER = 70      # between layers, along the flow
GAP_NODE = 22       # between nodes of one layer
MARGIN = 16

#: fill and stroke by node kind
COLOURS = {
    "Extractor": ("#e3f2fd", "#1e88e5"),
    "Transformer": ("#f3e5f5", "#8e24aa"),
    "Filter": ("#fff8e1", "#f9a825"),
    "Balancer": ("#e8f5e9", "#43a047"),
    "Broadcast": ("#e8f5e9", "#43a047"),
    "Funnel": ("#e8f5e9", "#43a047"),
    "Messenger": ("#e0f2f1", "#00897b"),
    "Accumulator": ("#fbe9e7", "#f4511e"),
    "Loader": ("#eceff1", "#546e7a"),
}
DEFAULT_COLOURS = ("#f5f5f5", "#616161")


@dataclass
class BoxSpec:
    """A node to draw: ``key`` identifies it in edges, ``kind`` picks its shape and colour."""

    key: str
    title: str
    subtitle: str = ""
    kind: str = ""


@dataclass
class EdgeSpec:
    """An edge to draw from ``source`` to ``target`` (box keys), optionally labelled, dashed."""

    source: str
    target: str
    label: str = ""
    dashed: bool = False


@dataclass
class _Placed:
    key: str
    layer: int
    box: BoxSpec | None           # None: a bend point of an edge that skips layers
    width: float = 0.0
    pos: float = 0.0              # across the flow (y for "LR")
    order: float = 0.0
    ups: list[str] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)


def _layers(boxes: list[BoxSpec], edges: list[EdgeSpec]) -> dict[str, int]:
    """Longest-path layering; an edge that closes a cycle is ignored for it."""
    succ: dict[str, list[str]] = {b.key: [] for b in boxes}
    for e in edges:
        succ[e.source].append(e.target)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(start: str) -> None:  # iterative depth-first search: post-order
        stack = [(start, iter(succ[start]))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                order.append(node)
                stack.pop()
            elif state.get(nxt, 0) == 0:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))

    for b in boxes:
        if state.get(b.key, 0) == 0:
            visit(b.key)
    rank = {key: i for i, key in enumerate(reversed(order))}  # topological rank
    layer = {b.key: 0 for b in boxes}
    for key in reversed(order):
        for nxt in succ[key]:
            if rank[nxt] > rank[key]:  # a forward edge (a back edge would close a cycle)
                layer[nxt] = max(layer[nxt], layer[key] + 1)
    return layer


def _box_width(box: BoxSpec) -> float:
    return max(84.0, CHAR_W * max(len(box.title), 0.85 * len(box.subtitle)) + 34)


def layered_svg(boxes: list[BoxSpec], edges: list[EdgeSpec], direction: str = "LR", title: str = "") -> str:
    """An SVG document of the graph: layers from left to right (``"LR"``) or top down (``"TD"``)."""
    if direction not in ("LR", "TD"):
        raise ValueError(f"direction must be 'LR' or 'TD', not {direction!r}")
    keys = {b.key for b in boxes}
    for e in edges:
        if e.source not in keys or e.target not in keys:
            raise ValueError(f"edge {e.source!r} -> {e.target!r} names a node that is not drawn")
    layer = _layers(boxes, edges)
    placed: dict[str, _Placed] = {b.key: _Placed(b.key, layer[b.key], b, _box_width(b)) for b in boxes}
    routes: list[tuple[EdgeSpec, list[str]]] = []
    for n, e in enumerate(edges):
        a, b = layer[e.source], layer[e.target]
        path = [e.source]
        if b > a + 1:  # a bend point in every layer the edge skips
            for k in range(a + 1, b):
                key = f"\0{n}.{k}"
                placed[key] = _Placed(key, k, None, 0.0)
                path.append(key)
        path.append(e.target)
        for u, v in zip(path, path[1:]):
            if placed[v].layer > placed[u].layer:
                placed[u].downs.append(v)
                placed[v].ups.append(u)
        routes.append((e, path))

    depth = max((p.layer for p in placed.values()), default=0) + 1
    rows: list[list[_Placed]] = [[] for _ in range(depth)]
    for p in placed.values():  # first appearance order, then barycentre sweeps
        rows[p.layer].append(p)
    for row in rows:
        for i, p in enumerate(row):
            p.order = float(i)
    for sweep in range(8):
        down = sweep % 2 == 0
        for row in (rows[1:] if down else reversed(rows[:-1])):
            for p in row:
                near = p.ups if down else p.downs
                if near:
                    p.order = sum(placed[q].order for q in near) / len(near)
            row.sort(key=lambda p: p.order)
            for i, p in enumerate(row):
                p.order = float(i)

    horizontal = direction == "LR"
    def extent(p: _Placed) -> float:  # size across the flow
        return (NODE_H if horizontal else p.width) if p.box is not None else 4.0
    spans = [sum(extent(p) for p in row) + GAP_NODE * max(0, len(row) - 1) for row in rows]
    widest = max(spans, default=0.0)
    for row, span in zip(rows, spans):
        at = (widest - span) / 2
        for p in row:
            p.pos = at + extent(p) / 2
            at += extent(p) + GAP_NODE
    along_size = [max((p.width if horizontal else NODE_H) for p in row if p.box is not None)
                  if any(p.box is not None for p in row) else 20.0 for row in rows]
    along_at: list[float] = []
    at = 0.0
    for size in along_size:
        along_at.append(at + size / 2)
        at += size + GAP_LAYER
    total_along = at - GAP_LAYER

    def xy(p: _Placed) -> tuple[float, float]:
        a = along_at[p.layer] + MARGIN
        c = p.pos + MARGIN
        return (a, c + (24 if title else 0)) if horizontal else (c, a + (24 if title else 0))

    def half(p: _Placed) -> float:  # half the node's size along the flow: where edges attach
        if p.box is None:
            return 0.0
        return p.width / 2 if horizontal else NODE_H / 2

    width = (total_along if horizontal else widest) + 2 * MARGIN
    height = (widest if horizontal else total_along) + 2 * MARGIN + (24 if title else 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/>'
           '</marker></defs>',
           '<rect width="100%" height="100%" fill="#ffffff"/>']
    if title:
        out.append(f'<text x="{MARGIN}" y="{MARGIN + 8}" {FONT} font-size="14" font-weight="bold" '
                   f'fill="#222">{escape(title)}</text>')
    for e, path in routes:
        pts = []
        for i, key in enumerate(path):
            p = placed[key]
            x, y = xy(p)
            h = half(p)
            if i == 0:
                pts.append((x + h, y) if horizontal else (x, y + h))
            elif i == len(path) - 1:
                pts.append((x - h, y) if horizontal else (x, y - h))
            else:
                pts.append((x, y))
        d = f"M {pts[0][0]:.1f} {pts[0][1]:.1f}"
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if horizontal:
                mx = (x0 + x1) / 2
                d += f" C {mx:.1f} {y0:.1f}, {mx:.1f} {y1:.1f}, {x1:.1f} {y1:.1f}"
            else:
                my = (y0 + y1) / 2
                d += f" C {x0:.1f} {my:.1f}, {x1:.1f} {my:.1f}, {x1:.1f} {y1:.1f}"
        dash = ' stroke-dasharray="5 4"' if e.dashed else ""
        out.append(f'<path class="edge" d="{d}" fill="none" stroke="#555" stroke-width="1.4"{dash} '
                   f'marker-end="url(#arrow)"/>')
        if e.label:
            (x0, y0), (x1, y1) = pts[0], pts[1]
            lx, ly = (x0 + x1) / 2, (y0 + y1) / 2
            w = CHAR_W * 0.85 * len(e.label) + 8
            out.append(f'<rect x="{lx - w / 2:.1f}" y="{ly - 9:.1f}" width="{w:.1f}" height="16" rx="3" '
                       f'fill="#ffffff" fill-opacity="0.9"/>')
            out.append(f'<text class="edge-label" x="{lx:.1f}" y="{ly + 3:.1f}" {FONT} font-size="11" '
                       f'text-anchor="middle" fill="#333">{escape(e.label)}</text>')
    for p in placed.values():
        if p.box is not None:
            out.append(_shape(p.box, *xy(p), p.width))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _shape(box: BoxSpec, cx: float, cy: float, w: float) -> str:
    """One node: its kind's outline, its title and subtitle."""
    fill, stroke = COLOURS.get(box.kind, DEFAULT_COLOURS)
    h = NODE_H
    x0, x1, y0, y1 = cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2
    style = f'fill="{fill}" stroke="{stroke}" stroke-width="1.6"'
    k = 12.0  # slant or inset of the outlines that have one
    kind = box.kind
    if kind == "Extractor":
        shape = f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h}" rx="{h / 2}" {style}/>'
    elif kind == "Loader":  # a cylinder lying on its side: a database
        shape = (f'<path d="M {x0 + k:.1f} {y0:.1f} L {x1 - k:.1f} {y0:.1f} A {k} {h / 2} 0 0 1 {x1 - k:.1f} '
                 f'{y1:.1f} L {x0 + k:.1f} {y1:.1f} A {k} {h / 2} 0 0 1 {x0 + k:.1f} {y0:.1f} Z" {style}/>'
                 f'<path d="M {x0 + k:.1f} {y0:.1f} A {k} {h / 2} 0 0 1 {x0 + k:.1f} {y1:.1f}" fill="none" '
                 f'stroke="{stroke}" stroke-width="1.2"/>')
    elif kind == "Filter":
        shape = _polygon([(x0 + k, y0), (x1 - k, y0), (x1, cy), (x1 - k, y1), (x0 + k, y1), (x0, cy)], style)
    elif kind == "Messenger":
        shape = _polygon([(x0, cy), (cx, y0 - 4), (x1, cy), (cx, y1 + 4)], style)
    elif kind == "Balancer":
        shape = _polygon([(x0 + k, y0), (x1 - k, y0), (x1, y1), (x0, y1)], style)
    elif kind == "Broadcast":
        shape = _polygon([(x0, y0), (x1, y0), (x1 - k, y1), (x0 + k, y1)], style)
    elif kind == "Funnel":
        shape = _polygon([(x0, y0), (x1 - k, y0), (x1, y1), (x0 + k, y1)], style)
    elif kind == "Accumulator":
        shape = (f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h}" {style}/>'
                 f'<rect x="{x0 + 4:.1f}" y="{y0 + 4:.1f}" width="{w - 8:.1f}" height="{h - 8}" fill="none" '
                 f'stroke="{stroke}" stroke-width="1"/>')
    else:  # a Transformer, or any other box
        shape = f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h}" rx="4" {style}/>'
    text_y = cy - 2 if box.subtitle else cy + 4
    if kind == "Loader":
        cx += k / 3  # clear of the cylinder's near rim
    texts = (f'<text x="{cx:.1f}" y="{text_y:.1f}" {FONT} font-size="13" text-anchor="middle" '
             f'fill="#111">{escape(box.title)}</text>')
    if box.subtitle:
        texts += (f'<text x="{cx:.1f}" y="{cy + 13:.1f}" {FONT} font-size="10.5" text-anchor="middle" '
                  f'fill="#555">{escape(box.subtitle)}</text>')
    return f'<g class="node" data-kind={quoteattr(kind)}>{shape}{texts}</g>'


def _polygon(points: list[tuple[float, float]], style: str) -> str:
    return '<polygon points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + f'" {style}/>'


def to_svg(pipeline: Graph, direction: str = "LR") -> str:
    """The pipeline as an SVG picture (``direction`` ``LR`` or ``TD``); validates first."""
    edges = graph_edges(pipeline)  # validates, and may add the built-in dead-letter Loader
    keys = {id(n): f"n{i}" for i, n in enumerate(pipeline.nodes)}
    boxes = [BoxSpec(keys[id(n)], n.name, n.kind, n.kind) for n in pipeline.nodes]
    specs = [EdgeSpec(keys[id(a)], keys[id(b)], label, dead) for a, b, label, dead in edges]
    return layered_svg(boxes, specs, direction, title=pipeline.name)
