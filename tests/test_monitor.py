"""Pipeline.stats() snapshots, alerts and the clogging watchdog (reflux.observe)."""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import pytest

from reflux import ClogError, Extractor, Filter, Loader, NodeError, Pipeline, Transformer, ValidationError
from reflux.observe.stats import Alert, PipelineStats
from reflux.observe.watchdog import Monitor

HANG = 60


def _wait_for(cond: Any, what: str, limit: float = HANG) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- stats snapshots

def test_stats_before_start_is_empty_and_idle() -> None:
    p = Pipeline(Extractor(range(3)) >> Loader.to_list())
    st = p.stats()
    assert isinstance(st, PipelineStats)
    assert st.status == "idle" and len(st) == 0 and st.clogged == []


def test_live_stats_show_rates_busy_fraction_and_channel_fill() -> None:
    gate = threading.Event()

    def slow(x: int) -> int:
        gate.wait(HANG)
        return x

    # fuse=False: every node has its own input channel (a fused chain hands lists over directly)
    p = Pipeline(Extractor(range(1000)) >> Transformer(slow, name="slow") >> Loader.to_list(name="sink"),
                 capacity=8, batch_size=4, fuse=False)
    p.start()
    try:
        # the slow node holds one batch; its input fills up behind it
        _wait_for(lambda: p.stats()["slow"].queued == 8, "the slow node's input to fill")
        st = p.stats()
        assert st.status == "running"
        s = st["slow"]
        assert s.capacity == 8 and s.fill == 1.0
        assert 1 <= s.received <= 4 and s["in"] == s.received  # the counters read as before
        assert s.state == "running"
        assert st["extractor"].queued is None and st["extractor"].fill is None  # a source has no input
        assert st["extractor"].received >= s.received + 8  # taken + queued
        assert st["extractor"].rate_in > 0
    finally:
        gate.set()
    result = p.join(HANG)
    final = p.stats()
    assert final.status == "completed"
    assert final["sink"].received == result["sink"].received == 1000
    assert all(s.state == "done" for s in final.values())
    # after the run: averages over the run, and busy time was accounted for
    assert final["slow"].rate_in == pytest.approx(1000 / result.elapsed)
    assert final["slow"].busy_seconds > 0 and 0 < final["slow"].busy <= 1
    assert result["slow"].busy == final["slow"].busy_seconds
    json.dumps(final.as_dict())  # JSON-able
    assert "slow" in final.table()


def test_busy_fraction_points_at_the_bottleneck() -> None:
    def heavy(x: int) -> int:
        t = time.perf_counter() + 0.002
        while time.perf_counter() < t:
            pass
        return x

    p = Pipeline(Extractor(range(300)) >> Transformer(lambda x: x, name="light")
                 >> Transformer(heavy, name="heavy") >> Loader(lambda x: None, name="sink"))
    p.run(timeout=HANG)
    st = p.stats()
    assert st["heavy"].busy_seconds >= 300 * 0.002
    assert st["heavy"].busy_seconds > 3 * st["light"].busy_seconds


def test_stats_is_cheap_enough_to_poll() -> None:
    gate = threading.Event()
    p = Pipeline(Extractor(range(10)) >> Transformer(lambda x: gate.wait(HANG) and x) >> Loader.to_list())
    p.start()
    try:
        snaps = [p.stats() for _ in range(200)]  # many polls do not disturb the run
        assert all(s.status == "running" for s in snaps)
    finally:
        gate.set()
    assert p.join(HANG).loaded == 10


# --------------------------------------------------------------------------- the clogging watchdog

def _clogging_pipeline(gate: threading.Event, **kwargs: Any) -> Pipeline:
    def stuck(x: int) -> int:
        gate.wait(HANG)
        return x

    return Pipeline(Extractor(range(200), name="src") >> Transformer(lambda x: x, name="up")
                    >> Transformer(stuck, name="stuck") >> Loader.to_list(name="sink"),
                    capacity=4, batch_size=2, fuse=False, **kwargs)


def test_watchdog_reports_the_stuck_node_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    alerts: list[Alert] = []
    p = _clogging_pipeline(gate, clog_timeout=0.2, on_clog="warn", on_alert=alerts.append)
    caplog.set_level(logging.WARNING, logger="reflux")
    p.start()
    try:
        _wait_for(lambda: any(a.kind == "clogged" for a in alerts), "a clog alert")
        st = p.stats()
        # the stuck node is named; the node feeding it is only blocked behind it
        assert st.clogged == ["stuck"]
        assert st["stuck"].state == "clogged" and st["stuck"].stalled >= 0.2
        assert st["up"].state in ("blocked", "running")
        assert [a.node for a in alerts if a.kind == "clogged"] == ["stuck"]
        assert "Transformer 'stuck' is clogged" in alerts[0].message
        assert any("Transformer 'stuck' is clogged" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        assert p.running  # "warn" lets it run on
    finally:
        gate.set()
    result = p.join(HANG)
    assert result.status == "completed" and result.loaded == 200


def test_watchdog_policy_stop_fails_the_run_naming_the_node() -> None:
    gate = threading.Event()
    p = _clogging_pipeline(gate, clog_timeout=0.2, on_clog="stop", join_timeout=0.5)
    try:
        with pytest.raises(ClogError) as info:
            p.run(timeout=HANG)
    finally:
        gate.set()
    err = info.value
    assert isinstance(err, NodeError) and err.node == "stuck"
    assert "Transformer 'stuck' is clogged" in str(err) and "on_clog='stop'" in str(err)
    assert err.result is not None and err.result.status == "failed"
    assert p.stats()["stuck"].state in ("clogged", "stuck")


def test_a_slow_node_that_makes_progress_is_not_clogged() -> None:
    alerts: list[Alert] = []

    def slowish(x: int) -> int:
        time.sleep(0.002)
        return x

    p = Pipeline(Extractor(range(400)) >> Transformer(slowish, name="slowish") >> Loader.to_list(),
                 capacity=4, batch_size=1, clog_timeout=2.0, on_alert=alerts.append, fuse=False)
    result = p.run(timeout=HANG)
    assert result.loaded == 400
    assert [a for a in alerts if a.kind == "clogged"] == []


@pytest.mark.parametrize("clog_timeout", [3600.0, None])
def test_a_node_that_died_is_reported_at_once(clog_timeout: float | None,
                                               caplog: pytest.LogCaptureFixture) -> None:
    alerts: list[Alert] = []
    running_when_reported: list[bool] = []

    def boom(x: int) -> int:
        if x == 5:
            raise ValueError("bad item")
        return x

    def on_alert(a: Alert) -> None:
        alerts.append(a)
        running_when_reported.append(p.running)

    p = Pipeline(Extractor(range(100)) >> Transformer(boom, name="boom") >> Loader.to_list(),
                 clog_timeout=clog_timeout, on_alert=on_alert)
    caplog.set_level(logging.ERROR, logger="reflux")
    with pytest.raises(NodeError):
        p.run(timeout=HANG)
    assert [(a.kind, a.node) for a in alerts] == [("failed", "boom")]
    assert "Transformer 'boom' died on item 5: ValueError: bad item" in alerts[0].message
    assert alerts[0].record is not None and alerts[0].record.item == 5
    # reported while the pipeline was still running, not after a timeout or at the end
    assert running_when_reported == [True]
    assert any("Transformer 'boom' died" in r.getMessage() for r in caplog.records)
    assert p.stats().failed == ["boom"]


class _FakeChannel:
    def __init__(self) -> None:
        self.n = 0
        self.capacity = 4

    def __len__(self) -> int:
        return self.n


def _fake_monitor(paused: Any = None) -> tuple[Monitor, dict[str, Any], dict[str, _FakeChannel], list[Alert]]:
    """A Monitor over a real plan whose channels are fakes and whose runtime only snapshots:
    the watchdog rule can then be driven with a fake clock."""
    p = Pipeline(Extractor(range(3), name="src") >> Transformer(lambda x: x, name="a")
                 >> Transformer(lambda x: x, name="b") >> Loader.to_list(name="sink"))
    plan = p.compile()
    chans: dict[str, _FakeChannel] = {}
    for box in plan.inboxes:
        box.channel = chans.setdefault(box.owner, _FakeChannel())  # type: ignore[assignment]

    class FakeRuntime:
        failure = None

        def snapshot(self) -> dict[str, Any]:
            return {t.name: t.stats.copy() for t in plan.tasks}

    alerts: list[Alert] = []
    mon = Monitor("fake", plan, FakeRuntime(), clog_timeout=1.0, on_alert=alerts.append, paused=paused)
    return mon, {t.name: t.stats for t in plan.tasks}, chans, alerts


def test_monitor_check_is_deterministic_with_a_fake_clock() -> None:
    """The watchdog rule on its own: full input + no progress for the timeout -> clogged;
    a receiver that is full too -> only blocked; progress -> unclogged."""
    mon, stats, chans, alerts = _fake_monitor()
    chans["a"].n = chans["b"].n = 4  # both inputs full
    assert mon.check(now=100.0) == []
    assert mon.check(now=100.5) == []
    assert mon.check(now=101.1) == ["b"]  # a's receiver (b) is full: a is only blocked
    st = mon.sample()
    assert st["b"].state == "clogged" and st["a"].state == "blocked" and st["sink"].state == "running"
    assert st["b"].stalled == pytest.approx(1.1)
    stats["b"].received += 1  # b moves
    assert mon.check(now=101.2) == []
    assert [(a.kind, a.node) for a in alerts] == [("clogged", "b"), ("unclogged", "b")]
    assert mon.sample()["b"].state == "running"
    chans["b"].n = 0  # b's input drains: a is stalled with a full input and nothing blocking it
    assert mon.check(now=101.3) == ["a"]


def test_a_paused_pipeline_is_never_clogged() -> None:
    paused = [True]
    mon, _, chans, alerts = _fake_monitor(paused=lambda: paused[0])
    chans["b"].n = 4
    for t in (100.0, 101.0, 105.0):  # full and still, but paused: not clogged, and the clock restarts
        assert mon.check(now=t) == []
    paused[0] = False
    assert mon.check(now=106.0) == []
    assert mon.check(now=106.5) == []
    assert mon.check(now=107.0) == ["b"]  # a full second after the resume
    assert [a.kind for a in alerts] == ["clogged"]


def test_a_not_quite_full_input_is_not_clogged() -> None:
    mon, _, chans, alerts = _fake_monitor()
    chans["b"].n = 3  # one slot free: the node is merely slow to be fed
    for t in (100.0, 110.0, 200.0):
        assert mon.check(now=t) == []
    assert alerts == []


def test_bad_watchdog_options_are_refused() -> None:
    with pytest.raises(ValidationError, match="clog_timeout"):
        Pipeline(clog_timeout=0)
    with pytest.raises(ValidationError, match="on_clog"):
        Pipeline(on_clog="explode")
    with pytest.raises(ValidationError, match="on_alert"):
        Pipeline(on_alert=42)  # type: ignore[arg-type]


def test_an_alert_callback_that_raises_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def bad(a: Alert) -> None:
        raise RuntimeError("callback bug")

    p = Pipeline(Extractor(range(10)) >> Transformer(lambda x: 1 // (x - 3), name="div") >> Loader.to_list(),
                 on_alert=bad)
    with pytest.raises(NodeError, match="ZeroDivisionError"):
        p.run(timeout=HANG)
    assert any("on_alert callback raised" in r.getMessage() for r in caplog.records)


def test_filter_counts_in_stats() -> None:
    p = Pipeline(Extractor(range(10)) >> Filter(lambda x: x % 2, name="odd") >> Loader.to_list())
    p.run(timeout=HANG)
    s = p.stats()["odd"]
    assert (s.received, s.emitted, s.filtered, s.errors) == (10, 5, 5, 0)


def test_watchdog_names_the_stuck_node_inside_a_fused_chain() -> None:
    """With the default fusion, 'up' >> 'stuck' >> sink run as one task behind one channel:
    the report still names the node that holds the items, not the chain's first node."""
    from reflux import Funnel

    gate = threading.Event()
    alerts: list[Alert] = []

    def stuck(x: int) -> int:
        gate.wait(HANG)
        return x

    # the Funnel has an input channel and ends the chain in front of it; 'up' heads a fused chain
    p = Pipeline(Extractor(range(200), name="src") >> Funnel(name="gate")
                 >> Transformer(lambda x: x, name="up") >> Transformer(stuck, name="stuck")
                 >> Loader.to_list(name="sink"), capacity=4, batch_size=2, clog_timeout=0.2,
                 on_alert=alerts.append)
    p.start()
    try:
        _wait_for(lambda: any(a.kind == "clogged" for a in alerts), "a clog alert")
        assert [a.node for a in alerts if a.kind == "clogged"] == ["stuck"]
        assert p.stats().clogged == ["stuck"]
        assert p.stats()["up"].state != "clogged"
        if ["up", "stuck", "sink"] in p._runtime.fused_chains():  # type: ignore[union-attr]
            assert "input channel of its fused chain (at Transformer 'up')" in alerts[0].message
    finally:
        gate.set()
    assert p.join(HANG).loaded == 200


def test_busy_time_of_replicas_is_summed_and_the_fraction_is_per_replica() -> None:
    def heavy(x: int) -> int:
        t = time.perf_counter() + 0.001
        while time.perf_counter() < t:
            pass
        return x

    p = Pipeline(Extractor(range(300)) >> Transformer(heavy, name="heavy", parallel=2)
                 >> Loader(lambda x: None, name="sink"), workers=2)
    result = p.run(timeout=HANG)
    st = p.stats()["heavy"]
    assert result["heavy"].received == 300
    assert st.busy_seconds >= 300 * 0.001  # both replicas' time, summed
    assert 0 < st.busy <= 1


def test_a_crashed_worker_process_is_reported_at_once() -> None:
    """A process worker that dies (os._exit) fails its items; under "raise" the node died:
    the alert names it at once, while the run is still going."""
    import procfns

    alerts: list[Alert] = []
    running: list[bool] = []

    def on_alert(a: Alert) -> None:
        alerts.append(a)
        running.append(p.running)

    p = Pipeline(Extractor(range(50)) >> Transformer(procfns.crash_on_5, name="crashy", executor="process",
                                                     workers=1) >> Loader.to_list(),
                 clog_timeout=3600, on_alert=on_alert)
    with pytest.raises(NodeError, match="crashy"):
        p.run(timeout=HANG)
    assert [(a.kind, a.node) for a in alerts] == [("failed", "crashy")]
    assert "worker process" in alerts[0].message and "exited with code 3" in alerts[0].message
    assert running == [True]
    assert p.stats()["crashy"].state == "failed"
