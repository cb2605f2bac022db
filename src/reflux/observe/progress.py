"""Live progress of a running pipeline on a terminal, drawn with ``rich``.

::

    with LiveProgress(pipeline):        # or: pipeline.run(progress=True)
        pipeline.join()

shows a table refreshed several times a second: per node the items in and
out, filtered, errors, the input rate, the busy fraction, the fill of its
input channel and its state (a clogged or failed node stands out in red),
under a node with ``executor="ray"`` one row per Ray actor (where it runs,
items, batches lost, busy fraction, state), then the latest alerts.  It
draws on standard error, so standard output stays clean for data
(``reflux run --json``); when standard error is not a
terminal (a pipe, a file, CI) ``enabled=None`` turns it off by itself.

``rich`` is a dependency of reflux; nothing here is needed by a pipeline that
is not watched.
"""
from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console, RenderableType

    from .stats import HasStats, PipelineStats

__all__ = ["LiveProgress", "render_stats"]

_WORKER_STYLE = {"alive": "green", "starting": "yellow", "restarting": "bold yellow", "dead": "bold red",
                 "ended": "dim"}
_STATE_STYLE = {"running": "green", "done": "dim", "failed": "bold red", "clogged": "bold red",
                "blocked": "yellow", "stuck": "bold red"}


def _count(n: float) -> str:
    """Compact counts: 9,999 then 12.3k, 1.23M."""
    if n < 10_000:
        return f"{n:,.0f}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}" if v < 1000 else f"{v:.0f}{unit}"
    return f"{n:,.0f}"  # pragma: no cover


def render_stats(stats: PipelineStats, width: int | None = None) -> RenderableType:
    """A ``rich`` table of a :class:`~reflux.PipelineStats` snapshot
    (the ``kind`` column is left out on terminals narrower than 100 columns)."""
    from rich import box
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    show_kind = width is None or width >= 100
    table = Table(title=f"reflux · {stats.pipeline} · {stats.status} · {stats.elapsed:.1f}s",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, expand=False,
                  collapse_padding=True)
    table.add_column("node", no_wrap=True, max_width=24)
    if show_kind:
        table.add_column("kind", style="cyan", no_wrap=True)
    for col in ("in", "out", "filt", "err", "drop", "evts", "in/s", "busy"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("input", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for s in stats.nodes.values():
        if s.queued is None or not s.capacity:
            fill: Any = Text("-", style="dim")
        else:
            fill = Table.grid(padding=(0, 1))
            fill.add_row(ProgressBar(total=s.capacity, completed=s.queued, width=6),
                         Text(f"{s.queued / s.capacity:>4.0%}", style="dim"))
        state = s.state if not s.stalled else f"{s.state} {s.stalled:.0f}s"
        cells: list[Any] = [s.name]
        if show_kind:
            cells.append(s.kind)
        cells += [_count(s.received), _count(s.emitted), _count(s.filtered),
                  Text(_count(s.errors), style="red" if s.errors else ""),
                  Text(_count(s.dropped + s.overflowed), style="yellow" if s.overflowed else ""),
                  _count(sum(s.events.values())),
                  _count(s.rate_in), f"{s.busy:.0%}", fill,
                  Text(state, style=_STATE_STYLE.get(s.state, ""))]
        table.add_row(*cells)
        for w in s.workers:  # the node's Ray actors, one row each
            row: list[Any] = [Text(f"  └ {w.label}", style="dim")]
            if show_kind:
                row.append(Text("Ray actor", style="dim"))
            row += [_count(w.items), "", "", Text(_count(w.lost), style="red" if w.lost else "dim"), "",
                    f"{w.busy:.0%}", "", Text(w.state, style=_WORKER_STYLE.get(w.state, ""))]
            table.add_row(*row)
    extra = [Text(line, style="dim") for line in (stats.wall_time.lines() if stats.wall_time else [])]
    extra += [Text(f"! {a.message}", style="red" if a.kind in ("failed", "clogged") else "yellow")
              for a in stats.alerts[-3:]]
    extra += [Text(f"{e.level}: {e.node}: {e.message}", style="yellow" if e.levelno >= 30 else "dim")
              for e in stats.events[-3:]]
    return Group(table, *extra) if extra else table


class LiveProgress:
    """A live view of ``pipeline.stats()`` while the block runs.

    ``enabled``: ``True`` always draws, ``False`` never, ``None`` (default)
    draws only when ``console`` (standard error by default) is a terminal.
    """

    def __init__(self, pipeline: HasStats, *, enabled: bool | None = None, console: Console | None = None,
                 refresh_per_second: float = 8.0) -> None:
        from rich.console import Console

        self.pipeline = pipeline
        self.console = console if console is not None else Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else bool(enabled)
        self.refresh_per_second = refresh_per_second
        self._live: Any = None
        self._handler: logging.Handler | None = None

    def render(self) -> RenderableType:
        """What the view shows now."""
        return render_stats(self.pipeline.stats(), self.console.width)

    def __enter__(self) -> LiveProgress:
        if not self.enabled:
            return self
        from rich.live import Live
        from rich.logging import RichHandler

        # reflux's own log lines (alerts) print above the live table instead of tearing it
        log = logging.getLogger("reflux")
        if not log.handlers:
            self._handler = RichHandler(console=self.console, show_path=False, level=logging.INFO)
            log.addHandler(self._handler)
        self._live = Live(console=self.console, get_renderable=self.render,
                          refresh_per_second=self.refresh_per_second, redirect_stdout=False,
                          redirect_stderr=False, transient=False)
        self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()
        if self._handler is not None:
            logging.getLogger("reflux").removeHandler(self._handler)
            self._handler = None
