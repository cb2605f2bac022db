"""Typed signatures and constant docs for the compiled modules, read from their ``.pyi`` stubs.

A Cython module tells autodoc its docstrings and untyped signatures; the types a
checker sees live in the ``.pyi`` stub beside it (``reflux_core/channel.pyi``...).
This extension reads each stub of the installed ``reflux_core`` with :mod:`ast`
and, for the objects of that module, gives autodoc

* the stub's signature and return annotation (functions, methods, classes);
* the type of a property or attribute, as a ``Type:`` line;
* a docstring where the compiled object has none of its own: the stub's
  docstring, or for a module constant the ``#:`` comment above it in the stub.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx

#: the compiled modules whose stubs are read
STUBBED = ("reflux_core.channel", "reflux_core.transform")


@dataclass
class StubEntry:
    signature: str | None = None     # "(a: int, b: str = ...)" without self
    returns: str | None = None       # the return annotation, or None
    type: str | None = None          # a property's or constant's type
    doc: list[str] = field(default_factory=list)


class _Qualify(ast.NodeTransformer):
    """Writes names the stub imports as their full dotted names (``RecordChannel`` ->
    ``reflux_core.channel.RecordChannel``), so cross-references find one target."""

    def __init__(self, imported: dict[str, str]) -> None:
        self.imported = imported

    def visit_Name(self, node: ast.Name) -> ast.AST:
        full = self.imported.get(node.id)
        if full is None:
            return node
        return ast.copy_location(ast.parse(full, mode="eval").body, node)


def _imports(tree: ast.Module) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module not in ("typing", "__future__"):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
    return names


def _args(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> str:
    args = fn.args
    if method and args.posonlyargs:
        args = ast.arguments(posonlyargs=args.posonlyargs[1:], args=args.args, vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults)
    elif method and args.args:
        args = ast.arguments(posonlyargs=args.posonlyargs, args=args.args[1:], vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults)
    return f"({ast.unparse(args)})"


def _docstring(body: list[ast.stmt]) -> list[str]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        import inspect
        return inspect.cleandoc(body[0].value.value).splitlines()
    return []


def _comments(source: list[str], lineno: int) -> list[str]:
    """The ``#:`` comment lines right above line ``lineno`` (1-based)."""
    out: list[str] = []
    i = lineno - 2
    while i >= 0 and source[i].lstrip().startswith("#:"):
        out.insert(0, source[i].lstrip()[2:].strip())
        i -= 1
    return out


def read_stub(path: Path, module: str) -> dict[str, StubEntry]:
    """Every documented name of the stub at ``path``, by its full dotted name."""
    text = path.read_text(encoding="utf-8")
    source = text.splitlines()
    tree = _Qualify(_imports(ast.parse(text))).visit(ast.parse(text))
    entries: dict[str, StubEntry] = {}

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{node.name}"
                decorators = {ast.unparse(d) for d in node.decorator_list}
                entry = entries.setdefault(name, StubEntry())
                if "property" in decorators:
                    entry.type = ast.unparse(node.returns) if node.returns else None
                elif "overload" not in decorators:
                    entry.signature = _args(node, in_class and "staticmethod" not in decorators)
                    entry.returns = ast.unparse(node.returns) if node.returns else None
                entry.doc = entry.doc or _docstring(node.body)
                if in_class and node.name == "__init__":
                    owner = entries.setdefault(prefix, StubEntry())
                    owner.signature = entry.signature
            elif isinstance(node, ast.ClassDef):
                name = f"{prefix}.{node.name}"
                entry = entries.setdefault(name, StubEntry())
                entry.doc = _docstring(node.body)
                visit(node.body, name, True)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                name = f"{prefix}.{node.target.id}"
                entry = entries.setdefault(name, StubEntry())
                entry.type = ast.unparse(node.annotation)
                entry.doc = _comments(source, node.lineno)

    visit(tree.body, module, False)
    return entries


def _load(module: str) -> dict[str, StubEntry]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"{module} is not installed: install reflux before building the docs")
    stub = Path(spec.origin).parent / (module.rsplit(".", 1)[1] + ".pyi")
    if not stub.exists():
        raise FileNotFoundError(f"{module} has no stub at {stub}")
    return read_stub(stub, module)


class Stubs:
    def __init__(self) -> None:
        self.entries: dict[str, StubEntry] = {}
        for module in STUBBED:
            self.entries.update(_load(module))

    def lookup(self, name: str) -> StubEntry | None:
        return self.entries.get(name)


def _final_type(text: str) -> str:
    # Final[int] documents as int: the value never changes
    return text[len("Final["):-1] if text.startswith("Final[") and text.endswith("]") else text


def process_signature(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
                      return_annotation: str | None) -> tuple[str | None, str | None] | None:
    entry = app.env.reflux_stubs.lookup(name)  # type: ignore[attr-defined]
    if entry is None or entry.signature is None:
        return None
    if what == "class":
        return entry.signature, None
    return entry.signature, entry.returns


def process_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    entry = app.env.reflux_stubs.lookup(name)  # type: ignore[attr-defined]
    if entry is None:
        return
    own = getattr(obj, "__doc__", None)
    inherited = own is not None and what in ("data", "attribute") and own == getattr(type(obj), "__doc__", None)
    if (not lines or inherited) and entry.doc:
        lines[:] = list(entry.doc)
    elif inherited:
        lines[:] = []
    if entry.type and what in ("data", "attribute", "property"):
        if lines and lines[-1].strip():
            lines.append("")
        lines.append(f"Type: ``{_final_type(entry.type)}``")


def builder_inited(app: Sphinx) -> None:
    app.env.reflux_stubs = Stubs()  # type: ignore[attr-defined]
    _introspect_from_stubs(app.env.reflux_stubs)  # type: ignore[attr-defined]


def _introspect_from_stubs(stubs: Stubs) -> None:
    """Let autodoc find a stub's signature where it cannot introspect one.

    A compiled class whose ``__init__`` carries no text signature (Cython leaves the slot
    wrapper's docstring alone) gives autodoc no signature at all, and Sphinx 9.0 then fails
    with an ``IndexError`` when ``autodoc-process-signature`` supplies one.  So the
    introspection step itself answers with the stub's signature for such objects.  It is
    Sphinx's private module (the ``docs`` extra pins Sphinx); on another layout nothing is
    changed and those classes show no signature.
    """
    try:
        from sphinx.ext.autodoc._dynamic import _signatures
    except ImportError:
        return
    original = getattr(_signatures, "_extract_signature_from_object", None)
    if original is None or getattr(original, "_reflux_stubs", False):
        return

    def extract(*args: Any, **kwargs: Any) -> Any:
        try:
            found = original(*args, **kwargs)
        except (TypeError, ValueError):
            found = []
        props = kwargs.get("props")
        entry = stubs.lookup(getattr(props, "full_name", "")) if props is not None else None
        if not found and entry is not None and entry.signature is not None:
            return [(entry.signature, "")]
        return found

    extract._reflux_stubs = True  # type: ignore[attr-defined]
    _signatures._extract_signature_from_object = extract  # type: ignore[attr-defined]


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", builder_inited)
    app.connect("autodoc-process-signature", process_signature)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
