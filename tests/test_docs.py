"""The documentation site holds what it promises: every public name in the API reference, every
item of the Rust crate in the mapping, every test it cites, and no word about how the project
was built.

The site itself is built by ``sphinx-build -W`` in .ci/run's docs leg (warnings are errors);
these tests read its sources, so they run in the default suite without Sphinx.  When
``REFLUX_DOCS_HTML`` names a built site, the API test also reads its inventory
(``objects.inv``): the names are not only listed, autodoc documented them.
"""
from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
needs_docs = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ is not next to the tests")

#: the public modules of the compiled core and of the Python layer's facade
CORE_MODULES = ("reflux_core", "reflux_core.channel", "reflux_core.transform")
#: the connector modules: public, documented whole, like the core's
CONNECTOR_MODULES = ("reflux.connectors.files", "reflux.connectors.parquet", "reflux.connectors.sqlite",
                     "reflux.connectors.postgres")


def public_names() -> dict[str, set[str]]:
    """{module: its public names}: each module's ``__all__`` (``__version__`` included)."""
    import reflux

    names = {"reflux": set(reflux.__all__)}
    for module in CORE_MODULES + CONNECTOR_MODULES:
        names[module] = module_all(module)
    return names


def module_all(module: str) -> set[str]:
    """A module's ``__all__``; read from its source where importing it needs an extra that is
    not installed (pyarrow, psycopg)."""
    import importlib.util

    try:
        return set(importlib.import_module(module).__all__)
    except ImportError:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                    for t in node.targets):
                return set(ast.literal_eval(node.value))
        raise


DIRECTIVE = re.compile(r"^\.\. (?:auto)?(?:py:)?(class|exception|function|data|attribute|method|module)"
                       r"::\s+([\w.]+)", re.M)


def documented_names() -> tuple[dict[str, set[str]], set[str]]:
    """({module: names its page documents one by one}, {modules documented with :members:})."""
    per_module: dict[str, set[str]] = {}
    with_members: set[str] = set()
    for page in sorted((DOCS / "api").glob("*.rst")):
        text = page.read_text(encoding="utf-8")
        current = None
        for m in re.finditer(r"^\.\. (?:auto)?(?:py:)?(\w+)::\s+([\w.]+)(.*?)(?=^\.\. |\Z)", text, re.M | re.S):
            kind, name, body = m.groups()
            if kind == "module":
                current = name
                if m.group(0).startswith(".. automodule::") and ":members:" in body:
                    with_members.add(name)
                continue
            if "." in name:
                module, _, short = name.rpartition(".")
            else:
                module, short = current or "", name
            per_module.setdefault(module, set()).add(short)
    return per_module, with_members


@needs_docs
def test_the_api_reference_names_every_public_name() -> None:
    documented, whole_modules = documented_names()
    missing = {}
    for module, names in public_names().items():
        if module in whole_modules:  # automodule :members: documents the module's __all__
            continue
        lacking = names - documented.get(module, set())
        if lacking:
            missing[module] = sorted(lacking)
    assert not missing, f"the API reference (docs/api/*.rst) does not document: {missing}"
    assert set(CORE_MODULES) <= whole_modules
    assert set(CONNECTOR_MODULES) <= whole_modules


@pytest.mark.skipif(not os.environ.get("REFLUX_DOCS_HTML"), reason="REFLUX_DOCS_HTML names no built site")
def test_the_built_site_documents_every_public_name() -> None:
    from sphinx.util.inventory import InventoryFile

    path = Path(os.environ["REFLUX_DOCS_HTML"]) / "objects.inv"
    with open(path, "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    objects = set()
    for kind, entries in inventory.data.items() if hasattr(inventory, "data") else inventory.items():
        if kind.startswith("py:"):
            objects.update(entries)
    missing = sorted(f"{module}.{name}" for module, names in public_names().items() for name in names
                     if f"{module}.{name}" not in objects)
    assert not missing, f"the built site documents no object named {missing}"


# --------------------------------------------------------------------------- the crate page

#: every public item of the Rust crate reflux 4.0 (its lib.rs: structs and their public
#: methods and fields, enums and their variants, exported macros), written out so that a
#: row dropped from the mapping fails here
CRATE_ITEMS = [
    "Extractor", "Extractor::new", "Extractor::join",
    "Loader", "Loader::new", "Loader::join",
    "Broadcast<T>", "Broadcast::new", "Broadcast::subscribe", "Broadcast::channel", "Broadcast::join",
    "Router<T>", "Router::new", "Router::subscribe", "Router::join",
    "Message<ID, M>", "Messenger<ID, S>", "Messenger::new", "Messenger::subscribe", "Messenger::join",
    "Funnel<D>", "Funnel::new", "Funnel::add_source", "Funnel::join",
    "Accumulator<D>", "Accumulator::new", "Accumulator::join",
    "Transformer<I, O, E>", "Transformer::new", "Transformer::join", "TransformerContext<D, G>",
    "FnContext<I, D>",
    "Filter", "Filter::new", "Filter::join",
    "TransformerResult::Output", "TransformerResult::Terminate", "TransformerResult::Consume",
    "TransformerResult::Effect", "TransformerResult::Transformed", "TransformerResult::NeedsMoreWork",
    "TransformerResult::Error",
    "TransformerEffectType::Emergency", "::Alert", "::Critical", "TransformerEffectType::Error",
    "TransformerEffectType::Warning", "TransformerEffectType::Notice", "::Info", "TransformerEffectType::Debug",
    "add_routine!", "output!", "terminate!", "consume!", "effect_emerg!", "effect_crit!", "effect_alert!",
    "effect_error!", "effect_warn!", "effect_notice!", "effect_info!", "effect_debug!",
]


@needs_docs
def test_the_crate_mapping_covers_every_public_item_of_the_crate() -> None:
    text = (DOCS / "coming-from-rust.md").read_text(encoding="utf-8")
    table = text[text.index("## Every public item"):text.index("## What the crate gets wrong")]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    missing = [item for item in CRATE_ITEMS if not any(f"`{item}" in cell for cell in first_cells)]
    assert not missing, f"the crate mapping has no row for {missing}"
    for row in table.splitlines():
        if row.startswith("| `"):
            assert row.split("|")[2].strip(), f"a crate item without an equivalent: {row}"


# --------------------------------------------------------------------------- cited tests

CITED = re.compile(r"tests/(test_\w+\.py)::([\w:]+)")


def _defined(path: Path) -> set[str]:
    """``name`` and ``Class::name`` of every test function and class of a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            found.add(node.name)
            found.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return found


@needs_docs
def test_every_test_the_pages_cite_exists() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    cited = {(page.name, m.group(1), m.group(2)) for page in pages if page.exists()
             for m in CITED.finditer(page.read_text(encoding="utf-8"))}
    assert len(cited) >= 20  # the crate page and the bounds table cite their tests
    here = Path(__file__).resolve().parent
    missing = [f"{page}: tests/{file}::{name}" for page, file, name in sorted(cited)
               if not (here / file).exists() or name not in _defined(here / file)]
    assert not missing, f"the pages cite tests that do not exist: {missing}"


# --------------------------------------------------------------------------- only the software

#: what speaks of how the project was built rather than of the software
HISTORY = re.compile(r"\bissues? ?#?\d+|\bthis session\b|\bthe issue(?:'s)?\b|\bissue's\b|\ba later issue\b",
                     re.I)


def _user_facing_files() -> list[Path]:
    """What a user reads: the README, the docs, docstrings, CLI help, log messages and comments."""
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "pyproject.toml", ROOT / "setup.py"]
    for folder, patterns in (("docs", ("*.md", "*.rst", "*.py")), ("src", ("*.py",)),
                             ("reflux_core", ("*.py", "*.pyx", "*.pxd", "*.pyi", "*.h")),
                             ("benchmarks", ("*.py", "*.c")), ("examples", ("*.py", "*.pyx", "*.toml")),
                             ("tools", ("*.py", "*.sh"))):
        for pattern in patterns:
            files += [p for p in (ROOT / folder).rglob(pattern) if "_build" not in p.parts]
    return [f for f in files if f.is_file()]


@pytest.mark.skipif(not (ROOT / "src").is_dir(), reason="the source tree is not next to the tests")
def test_nothing_a_user_reads_speaks_of_how_the_project_was_built() -> None:
    found = []
    for path in _user_facing_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- the README

def _anchor(heading: str) -> str:
    """The anchor GitHub and MyST give a heading (lower case, punctuation dropped, spaces to '-')."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.skipif(not (ROOT / "README.md").exists(), reason="README.md is not next to the tests")
@needs_docs
def test_the_readme_is_short_and_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    size = len(readme.encode("utf-8"))
    assert size < 15_000, f"README.md is {size} bytes: keep it under 15 KB, the rest belongs in docs/"
    assert readme.startswith("# reflux\n\n```bash\npip install . && reflux demo\npip install \".[test]\" && pytest\n```")
    links = re.findall(r"\]\(((?!https?:)[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    pages = {target for target, _ in links if target.startswith("docs/")}
    toctree = (DOCS / "index.md").read_text(encoding="utf-8")
    for name in ("getting-started", "nodes", "running", "errors", "streaming", "processes", "free-threaded",
                 "ray", "connectors", "checkpoints", "performance", "cython", "channels", "observing",
                 "benchmarks", "install", "architecture", "coming-from-rust"):
        assert f"docs/{name}.md" in pages, f"the README does not link to docs/{name}.md"
        assert f"\n{name}\n" in toctree, f"docs/index.md's contents do not list {name}"
    for target, anchor in links:
        path = ROOT / target
        assert path.exists(), f"the README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#{1,4} (.+)$", path.read_text(encoding="utf-8"), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{target} has no heading #{anchor}"
