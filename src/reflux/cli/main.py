"""The ``reflux`` command (also ``python -m reflux``): run, watch and draw pipelines.

``reflux demo``
    runs the built-in analytics pipeline on generated data (no set-up, no
    network), with live progress on a terminal and a final report.
``reflux run FILE.py[:NAME]``
    runs a pipeline defined in a file: ``NAME`` is a :class:`~reflux.Pipeline`
    object or a function returning one (without ``NAME``: the file's
    ``pipeline``, else its only module-level Pipeline).
``reflux graph FILE.py[:NAME] [--format mermaid|dot|svg]``
    prints the pipeline's graph (an SVG picture needs no drawing program).

Exit codes: 0 the run completed; 1 the run failed (a node failed, the
watchdog stopped it, timeout); 2 bad arguments; 3 the file is missing or
cannot be loaded; 4 the name is not in the file (or no pipeline was found);
5 not a pipeline, or an invalid one; 6 the file or the function raised;
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .demo import build_demo

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from ..pipeline import Pipeline
    from ..result import RunResult

__all__ = ["main", "load_pipeline", "CLIError",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NO_FILE", "EXIT_NO_NAME", "EXIT_INVALID",
           "EXIT_USER_CODE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_FILE = 3
EXIT_NO_NAME = 4
EXIT_INVALID = 5
EXIT_USER_CODE = 6
EXIT_INTERRUPTED = 130

logger = logging.getLogger("reflux")


class CLIError(Exception):
    """A problem the command reports in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- loading a user's pipeline

def _split_target(target: str) -> tuple[str, str | None]:
    """``"path/file.py:name"`` -> (path, name); a drive letter's colon is not a separator."""
    head, sep, tail = target.rpartition(":")
    if sep and head and tail and all(part.isidentifier() for part in tail.split(".")):
        return head, tail
    return target, None


def _import_file(path: Path) -> Any:
    """Import ``path`` as a module named after the file (its folder goes first on
    ``sys.path``, as for ``python FILE.py``), so its functions pickle by reference."""
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else f"_reflux_user_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot load {path}: not a Python file", EXIT_NO_FILE)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise CLIError(f"cannot load {path}: {exc}", EXIT_NO_FILE) from exc
    except Exception as exc:
        del sys.modules[name]
        logger.debug("loading %s failed", path, exc_info=True)
        raise CLIError(f"{path} raised while loading: {type(exc).__name__}: {exc}", EXIT_USER_CODE) from exc
    return module


def load_pipeline(target: str) -> Pipeline:
    """The pipeline ``FILE.py[:NAME]`` defines; raises :class:`CLIError` with the
    exit code for a missing file, a missing name, something that is not a
    pipeline, or a file/function that raised."""
    from ..pipeline import Pipeline

    file, name = _split_target(target)
    path = Path(file)
    if not path.is_file():
        raise CLIError(f"no such file: {file}", EXIT_NO_FILE)
    module = _import_file(path.resolve())
    if name is not None:
        obj: Any = module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise CLIError(f"{file} has no name {name!r}", EXIT_NO_NAME)
            obj = getattr(obj, part)
    elif hasattr(module, "pipeline"):
        name, obj = "pipeline", module.pipeline
    else:
        found = [k for k, v in vars(module).items() if isinstance(v, Pipeline)]
        if len(found) != 1:
            what = "no Pipeline object" if not found else f"several Pipelines ({', '.join(found)})"
            raise CLIError(f"{file} has {what} and no name 'pipeline': say which with {file}:NAME "
                           "(a Pipeline or a function returning one)", EXIT_NO_NAME)
        name = found[0]
        obj = getattr(module, name)
    if isinstance(obj, Pipeline):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise CLIError(f"{file}:{name} needs arguments; reflux calls it with none", EXIT_INVALID) from None
        except ValueError:  # no signature (a builtin): just call it
            pass
        try:
            made = obj()
        except Exception as exc:
            raise CLIError(f"{file}:{name}() raised: {type(exc).__name__}: {exc}", EXIT_USER_CODE) from exc
        if isinstance(made, Pipeline):
            return made
        raise CLIError(f"{file}:{name}() returned {type(made).__name__}, not a reflux Pipeline", EXIT_INVALID)
    raise CLIError(f"{file}:{name} is a {type(obj).__name__}, not a reflux Pipeline "
                   "(or a function returning one)", EXIT_INVALID)


def _validate(pipeline: Pipeline) -> None:
    from ..errors import ValidationError

    try:
        pipeline.validate()
    except ValidationError as exc:
        raise CLIError(f"invalid pipeline: {exc}", EXIT_INVALID) from exc


# --------------------------------------------------------------------------- output

def _console(force_terminal: bool | None = None) -> Console:
    from rich.console import Console
    return Console(stderr=True, force_terminal=force_terminal)


#: the reflux logger's (level, propagate) before the command's handler was added, by handler
_saved_logging: dict[logging.Handler, tuple[int, bool]] = {}


def _setup_logging(console: Console | None) -> logging.Handler:
    """The command's own log output on standard error (library code only logs)."""
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler
        handler = RichHandler(console=console, show_path=False, show_time=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("reflux: %(levelname)s: %(message)s"))
    log = logging.getLogger("reflux")
    _saved_logging[handler] = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _teardown_logging(handler: logging.Handler) -> None:
    log = logging.getLogger("reflux")
    log.removeHandler(handler)
    level, propagate = _saved_logging.pop(handler)
    log.setLevel(level)
    log.propagate = propagate


def _report(pipeline: Pipeline, result: RunResult | None) -> str:
    """The final report: per-node counters, rates, busy fraction."""
    stats = pipeline.stats()
    lines = [stats.table()]
    if result is not None:
        lines.append(f"\nextracted {result.extracted:,}, loaded {result.loaded:,}, filtered {result.filtered:,}, "
                     f"errors {result.error_count:,}, dropped {result.dropped:,} in {result.elapsed:.2f}s; "
                     f"{result.mode}")
        if result.checkpoint is not None:
            lines.append(result.checkpoint.line())
    return "\n".join(lines)


def _json_report(pipeline: Pipeline, result: RunResult | None, error: BaseException | None) -> str:
    data = pipeline.stats().as_dict()
    workers = getattr(pipeline, "workers", None)
    if workers is not None:
        data["workers"] = workers
    if result is not None:
        data.update(extracted=result.extracted, loaded=result.loaded, filtered=result.filtered,
                    error_count=result.error_count, dropped=result.dropped,
                    dead_lettered=result.dead_lettered, gil_enabled=result.gil_enabled, mode=result.mode,
                    errors=[{"node": r.node, "item": repr(r.item)[:200],
                             "exception": f"{type(r.exception).__name__}: {r.exception}"}
                            for r in result.errors])
        if result.checkpoint is not None:
            data["checkpoint"] = result.checkpoint.as_dict()
    if error is not None:
        data["error"] = f"{type(error).__name__}: {error}"
    return json.dumps(data, indent=2, default=str)


def _run_kwargs(pipeline: Pipeline, workers: int | None) -> dict[str, Any]:
    """How ``--workers`` reaches the pipeline: a ``workers`` argument of ``run``
    or a ``workers`` attribute, when this reflux has them."""
    if workers is None:
        return {}
    if "workers" in inspect.signature(pipeline.run).parameters:
        return {"workers": workers}
    if hasattr(pipeline, "workers"):
        pipeline.workers = workers
        return {}
    logger.info("--workers %d ignored: this pipeline's runtime has no worker setting", workers)
    return {}


def _execute(pipeline: Pipeline, *, progress: bool | None, console: Console, as_json: bool,
             metrics_port: int | None, metrics_host: str, workers: int | None, timeout: float | None,
             report: bool = True) -> tuple[int, RunResult | None]:
    """Run ``pipeline`` with progress and metrics as asked, print the report; returns (exit code, result)."""
    from ..errors import NodeError, PipelineInterrupted
    from ..observe.progress import LiveProgress

    kwargs = _run_kwargs(pipeline, workers)
    server = pipeline.serve_metrics(metrics_port, metrics_host) if metrics_port is not None else None
    result: RunResult | None = None
    error: BaseException | None = None
    code = EXIT_OK
    try:
        view = LiveProgress(pipeline, enabled=progress, console=console)
        with view:
            try:
                result = pipeline.run(timeout, **kwargs)
            except NodeError as exc:
                error, result, code = exc, exc.result, EXIT_FAILED
            except TimeoutError as exc:
                error, result, code = exc, pipeline.result, EXIT_FAILED
            except PipelineInterrupted as exc:
                error, result, code = exc, exc.result, EXIT_INTERRUPTED
    finally:
        if server is not None:
            server.close()
    if as_json:
        print(_json_report(pipeline, result, error))
    elif report and not view.enabled:  # the live view's last frame is the table already
        print(_report(pipeline, result))
    elif result is not None:
        tail = 2 if result.checkpoint is not None else 1  # the totals (and the checkpoint line)
        print("\n".join(_report(pipeline, result).split("\n")[-tail:]))
    if error is not None and code != EXIT_INTERRUPTED:
        print(f"reflux: run failed: {error}", file=sys.stderr)
    elif code == EXIT_INTERRUPTED:
        print("reflux: interrupted", file=sys.stderr)
    return code, result


# --------------------------------------------------------------------------- commands

def _cmd_demo(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else Path(tempfile.gettempdir())
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline, sinks = build_demo(args.items, out_dir)
    t0 = time.perf_counter()
    code, result = _execute(pipeline, progress=args.progress, console=args.console, as_json=False,
                            metrics_port=args.metrics_port, metrics_host="127.0.0.1", workers=args.workers,
                            timeout=None)
    elapsed = time.perf_counter() - t0
    if result is not None and code == EXIT_OK:
        windows = len(result.results[sinks["to_list"].name])
        print(f"\n{args.items:,} events in {elapsed:.2f} s ({args.items / elapsed:,.0f} events/s); "
              f"{windows:,} windows of totals written to {sinks['file']}")
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.target)
    _validate(pipeline)
    if args.checkpoint is not None or args.checkpoint_every is not None:
        _set_checkpoint(pipeline, args.checkpoint, args.checkpoint_every)
    code, _ = _execute(pipeline, progress=args.progress, console=args.console, as_json=args.json,
                       metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                       workers=args.workers, timeout=args.timeout)
    return code


def _set_checkpoint(pipeline: Pipeline, path: str | None, every: int | None) -> None:
    """``--checkpoint PATH`` / ``--checkpoint-every N``: over the pipeline's own checkpoint
    settings, if it has any (the others are kept)."""
    import dataclasses

    from ..checkpoint.config import Checkpoint
    from ..errors import ValidationError
    current = pipeline.checkpoint
    if path is None and current is None:
        raise CLIError("--checkpoint-every needs --checkpoint PATH (the pipeline records no checkpoints)",
                       EXIT_USAGE)
    try:
        if current is None:
            assert path is not None
            pipeline.checkpoint = Checkpoint(path) if every is None else Checkpoint(path, every=every)
        else:
            changes: dict[str, Any] = {}
            if path is not None:
                changes["path"] = path
            if every is not None:
                changes["every"] = every
            pipeline.checkpoint = dataclasses.replace(current, **changes)
    except ValidationError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None


def _cmd_graph(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.target)
    _validate(pipeline)
    draw = {"dot": pipeline.to_dot, "svg": pipeline.to_svg, "mermaid": pipeline.to_mermaid}[args.format]
    print(draw(), end="")
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {n}")
    return n


def plain_text(doc: str) -> str:
    """A docstring as a terminal shows it: reST literals and roles become plain words
    (````x```` -> ``x``; ``:class:`~reflux.Pipeline``` -> ``Pipeline``)."""
    doc = re.sub(r":[a-z]+:`~[\w.]*?([\w]+)`", r"\1", doc)
    doc = re.sub(r":[a-z]+:`([^`]+)`", r"\1", doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)


def version_text() -> str:
    """What ``reflux --version`` prints: the distribution's version, Python's, and where reflux is."""
    from importlib import metadata
    from pathlib import Path

    try:
        version = metadata.version("pyreflux")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown (not installed)"
    where = Path(__file__).resolve().parent.parent
    return f"reflux {version} (Python {sys.version.split()[0]}, {where})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reflux", description=plain_text(__doc__ or ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text().replace("%", "%%"),
                        help="print the version of reflux and of Python, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def watch_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="live progress on standard error (default: only when it is a terminal)")
        p.add_argument("--metrics-port", type=_port, metavar="N",
                       help="serve Prometheus metrics at http://127.0.0.1:N/metrics while running (0: any free port)")

    demo = sub.add_parser("demo", help="run the built-in demo pipeline on generated data")
    demo.add_argument("--items", type=int, default=1_000_000, help="events to generate (default 1000000)")
    demo.add_argument("--out", help="folder for the result file (default: the temp folder)")
    demo.add_argument("--workers", type=_positive_int, metavar="N", help="threads of the worker pool")
    watch_options(demo)
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run a pipeline defined in a Python file")
    run.add_argument("target", metavar="FILE.py[:NAME]",
                     help="the file, and the name of a Pipeline or of a function returning one")
    watch_options(run)
    run.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on (default 127.0.0.1)")
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help="threads of the worker pool (default: the pipeline's own setting, else the CPUs)")
    run.add_argument("--json", action="store_true", help="print the final stats as JSON on standard output")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="abandon the run after this long; it ends within the calls in flight then (exit 1)")
    run.add_argument("--checkpoint", metavar="PATH",
                     help="record checkpoints in this file, and resume after the last one it holds")
    run.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                     help="take a checkpoint every N items pulled (default 10000; and every 30 s)")
    run.set_defaults(func=_cmd_run)

    graph = sub.add_parser("graph", help="print a pipeline's graph")
    graph.add_argument("target", metavar="FILE.py[:NAME]")
    graph.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid",
                       help="mermaid (default), Graphviz dot, or an SVG picture")
    graph.set_defaults(func=_cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reflux`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "items", 1) < 1:
        parser.error("--items must be >= 1")
    console = _console()
    progress = getattr(args, "progress", False)
    live = console.is_terminal if progress is None else bool(progress)
    args.console = console
    handler = _setup_logging(console if live else None)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"reflux: {exc}", file=sys.stderr)
        return exc.code
    finally:
        _teardown_logging(handler)
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
