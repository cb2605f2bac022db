"""Drawing a pipeline: Mermaid and Graphviz DOT text of its graph.

Both show every node (its name and kind, one shape per kind), every edge the
pipeline will run: explicit edges, a Messenger's routes (labelled with their
keys) and dead-letter edges (dashed).  The graph is validated first, so an
invalid pipeline raises :class:`~reflux.ValidationError` naming the node, as
:meth:`Pipeline.validate` does.

Paste the Mermaid text into a Markdown file (GitHub renders it) or
https://mermaid.live; render the DOT text with ``dot -Tsvg``.
"""
from __future__ import annotations

from typing import Any

from ..describe.base import Node
from ..describe.graph import Graph
from ..describe.nodes import Messenger

__all__ = ["graph_edges", "to_dot", "to_mermaid"]

#: Mermaid node shapes by kind: (open, close)
_MERMAID_SHAPES = {
    "Extractor": ("([", "])"),
    "Loader": ("[(", ")]"),
    "Filter": ("{{", "}}"),
    "Messenger": ("{", "}"),
    "Balancer": ("[/", "\\]"),
    "Broadcast": ("[\\", "/]"),
    "Funnel": ("[/", "/]"),
    "Accumulator": ("[[", "]]"),
}
#: DOT node shapes by kind
_DOT_SHAPES = {
    "Extractor": "invhouse",
    "Loader": "cylinder",
    "Filter": "hexagon",
    "Messenger": "diamond",
    "Balancer": "trapezium",
    "Broadcast": "invtrapezium",
    "Funnel": "invtriangle",
    "Accumulator": "box3d",
    "Transformer": "box",
}


def graph_edges(pipeline: Graph) -> list[tuple[Node, Node, str, bool]]:
    """Every edge as ``(sender, receiver, label, dead_letter)``, validating the pipeline.

    ``label`` lists the Messenger route keys that lead along the edge (and
    ``default`` for its default route), else it is empty.
    """
    edges, dead = pipeline.resolved()
    out: list[tuple[Node, Node, str, bool]] = []
    for a, b in edges:
        label = ""
        if isinstance(a, Messenger):
            keys = []
            for key, target in a.route_table.items():
                if target is b or target == b.name:
                    keys.append(repr(key) if not isinstance(key, str) else key)
            default = a.default
            if default is not None and (default is b or default == b.name):
                keys.append("default")
            label = ", ".join(keys)
        out.append((a, b, label, False))
    for node in pipeline.nodes:
        sink = dead.get(id(node))
        if sink is not None:
            out.append((node, sink, "dead letters", True))
    return out


def _ids(pipeline: Graph) -> dict[int, str]:
    return {id(n): f"n{i}" for i, n in enumerate(pipeline.nodes)}


def _mermaid_text(text: str) -> str:
    # inside "..." Mermaid takes HTML entities; quotes would end the string
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def to_mermaid(pipeline: Graph, direction: str = "LR") -> str:
    """The pipeline as a Mermaid ``flowchart`` (``direction`` ``LR`` or ``TD``)."""
    edges = graph_edges(pipeline)  # validates, and may add the built-in dead-letter Loader
    ids = _ids(pipeline)
    lines = [f"flowchart {direction}"]
    for n in pipeline.nodes:
        left, right = _MERMAID_SHAPES.get(n.kind, ("[", "]"))
        lines.append(f'    {ids[id(n)]}{left}"{_mermaid_text(n.name)}<br/><small>{n.kind}</small>"{right}')
    for a, b, label, dead in edges:
        arrow = "-.->" if dead else "-->"
        text = f'|"{_mermaid_text(label)}"|' if label else ""
        lines.append(f"    {ids[id(a)]} {arrow}{text} {ids[id(b)]}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: Any) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(pipeline: Graph) -> str:
    """The pipeline as a Graphviz ``digraph``."""
    edges = graph_edges(pipeline)
    ids = _ids(pipeline)
    lines = [f"digraph {_dot_quote(pipeline.name)} {{", "    rankdir=LR;",
             '    node [fontname="Helvetica"];']
    for n in pipeline.nodes:
        shape = _DOT_SHAPES.get(n.kind, "box")
        lines.append(f"    {ids[id(n)]} [label={_dot_quote(n.name + chr(10) + n.kind)}, shape={shape}];")
    for a, b, label, dead in edges:
        attrs = []
        if label:
            attrs.append(f"label={_dot_quote(label)}")
        if dead:
            attrs.append("style=dashed")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {ids[id(a)]} -> {ids[id(b)]}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
