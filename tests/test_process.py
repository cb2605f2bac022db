"""Process workers: ``Transformer(fn, executor="process")`` (reflux.run.process).

Every test checks (autouse fixture) that no child process is left behind
(psutil lists the children of this process).  The tests run on every
platform, over the transport the platform uses by default (native OS pipes on
Linux, multiprocessing connections elsewhere); CI runs this file again with
``REFLUX_PROCESS_TRANSPORT=portable`` on Linux, and test_process_transport.py
tests both transports side by side.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import procfns
import pytest
from processes import alive, check_no_process_left, child_pids

from reflux import (
    Error,
    Extractor,
    Filter,
    Loader,
    NeedsMoreWork,
    NodeError,
    Pipeline,
    ProcessWorkerError,
    RemoteError,
    Transformer,
    ValidationError,
)
from reflux.run.process import child as wire

HANG = 60  # seconds: a hang guard only
TESTS = os.path.dirname(os.path.abspath(__file__))

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="start_method='fork' needs os.fork (POSIX)")
needs_sigint = pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a process (POSIX signals)")
START_METHODS = ["spawn", pytest.param("fork", marks=needs_fork)]


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    before = child_pids()
    yield
    check_no_process_left(before)


def run(*parts: Any, **kwargs: Any) -> Any:
    return Pipeline(*parts, **kwargs).run(timeout=HANG)


# --------------------------------------------------------------------------- results


def test_results_equal_the_plain_computation() -> None:
    n = 5000
    r = run(Extractor(range(n)) >> Transformer(procfns.square, executor="process", workers=2)
            >> Loader.to_list(name="out"))
    assert r.status == "completed"
    assert r.results["out"] == [x * x for x in range(n)]
    st = r.nodes["square"]
    assert (st.received, st.emitted, st.errors, st.dropped) == (n, n, 0, 0)
    assert not r.accounting_problems()


def test_ordered_keeps_input_order_with_uneven_costs() -> None:
    n = 600
    r = run(Extractor(range(n)) >> Transformer(procfns.uneven, executor="process", workers=2, ordered=True)
            >> Loader.to_list(name="out"), batch_size=16)
    assert r.results["out"] == [x * 3 for x in range(n)]


def test_unordered_emits_everything_once() -> None:
    n = 600
    r = run(Extractor(range(n)) >> Transformer(procfns.uneven, executor="process", workers=2, ordered=False)
            >> Loader.to_list(name="out"), batch_size=16)
    assert sorted(r.results["out"]) == [x * 3 for x in range(n)]
    assert r.nodes["uneven"].emitted == n


def test_sum_through_a_longer_pipeline() -> None:
    n = 20_000
    r = run(Extractor(range(n)) >> Transformer(procfns.heavyish, executor="process")
            >> Filter(lambda y: y % 2 == 0) >> Loader.to_list(name="out"))
    expected = [procfns.heavyish(x) for x in range(n)]
    assert r.results["out"] == [y for y in expected if y % 2 == 0]


def test_one_worker_and_single_items() -> None:
    r = run(Extractor(iter([3, 4])) >> Transformer(procfns.square, executor="process", workers=1)
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [9, 16]


def test_results_come_out_while_no_input_arrives() -> None:
    """The source waits for the first result before it sends more: results must be
    emitted by the logic's time-driven tick, not only when input arrives or at the end."""
    import threading
    first = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        assert first.wait(HANG), "the first result never came out"
        yield 2

    def load(x: int) -> None:
        first.set()

    r = run(Extractor(source) >> Transformer(procfns.square, executor="process", workers=1)
            >> Loader.to_callback(load, name="out"))
    assert r.results["out"] == 2


def test_numpy_payloads_round_trip_writable() -> None:
    arrays = [np.arange(n, dtype=dt).reshape(-1) for n, dt in
              [(0, np.int64), (1, np.float32), (1000, np.float64), (100_000, np.int32), (7, np.uint8)]]
    arrays.append(np.arange(100, dtype=np.float64)[::3])  # not contiguous
    arrays.append(np.zeros((3, 4), dtype=[("a", "i4"), ("b", "f8")]))  # structured, 2-D
    r = run(Extractor(arrays, batch_size=3) >> Transformer(procfns.doubled, executor="process", workers=2)
            >> Loader.to_list(name="out"))
    out = r.results["out"]
    assert len(out) == len(arrays)
    for a, b in zip(arrays[:-1], out[:-1]):
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(b, a * 2)
        assert b.flags.writeable
    assert out[-1].dtype == arrays[-1].dtype and out[-1].shape == (3, 4)
    assert (out[-1]["a"] == 1).all() and (arrays[-1]["a"] == 0).all()


@pytest.mark.skipif(not hasattr(os, "writev"), reason="the native framing needs os.writev (POSIX)")
def test_numpy_data_travels_out_of_band() -> None:
    """The array's bytes are not in the pickle stream (protocol 5 buffers)."""
    from reflux.run.process import child as wire
    a = np.arange(100_000, dtype=np.float64)
    parts = wire.encode((wire.WORK, 0, [a]))
    assert len(parts) == 3
    assert len(parts[1]) < 1000 and parts[2].nbytes == a.nbytes
    r, w = os.pipe()
    try:
        import threading
        t = threading.Thread(target=wire.write_all, args=(w, parts), name="writer")
        t.start()
        msg = wire.read_msg(r)
        t.join()
    finally:
        os.close(r)
        os.close(w)
    np.testing.assert_array_equal(msg[2][0], a)
    assert msg[2][0].flags.writeable


def test_generator_function_is_flat() -> None:
    r = run(Extractor(range(100)) >> Transformer(procfns.pairs, executor="process", workers=2)
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [v for x in range(100) for v in (x, -x)]


def test_flat_true_flattens_returned_lists() -> None:
    r = run(Extractor(range(50)) >> Transformer(procfns.listing, flat=True, executor="process")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [v for x in range(50) for v in [x] * (x % 4)]


def test_flat_chunks_come_back_joined_unless_an_item_needs_looking_at() -> None:
    # a flat-map's chunk crosses the pipe as one list of outputs when nothing failed and
    # no output is a signal; otherwise item by item, so feedback and failures stay exact
    assert wire.join_outputs([[1, 2], [], [3]]) == [1, 2, 3]
    assert wire.join_outputs([[1], [NeedsMoreWork(2)]]) is None
    assert wire.join_outputs([[Error("no")]]) is None
    n = 3000
    r = run(Extractor(range(n)) >> Transformer(procfns.flat_mixed, flat=True, executor="process", workers=2,
                                               on_error="skip") >> Loader.to_list(name="out"),
            batch_size=64)
    fed = [x for x in range(n) if x % 7 != 3 and x % 5 == 1]
    expect = sorted(v for x in range(n) if x % 7 != 3 and x % 5 != 1 for v in (x, -x))
    expect += sorted(v for x in fed for v in (x + 1, -(x + 1)) if (x + 1) % 7 != 3)
    assert sorted(r.results["out"]) == sorted(expect)
    node = r.nodes["flat_mixed"]
    assert node.fed_back == len(fed)
    assert node.errors == sum(1 for x in range(n) if x % 7 == 3) + sum(1 for x in fed if (x + 1) % 7 == 3)
    r.check_accounting()


def test_needs_more_work_feeds_back() -> None:
    r = run(Extractor([3, 0, 5]) >> Transformer(procfns.countdown, executor="process", workers=2)
            >> Loader.to_list(name="out"))
    assert r.results["out"] == ["done"] * 3
    assert r.nodes["countdown"].fed_back == 8


# --------------------------------------------------------------------------- state and hooks


def test_function_state_is_sent_once_per_worker() -> None:
    n = 2000
    r = run(Extractor(range(n)) >> Transformer(procfns.Counting(), executor="process", workers=2)
            >> Loader.to_list(name="out"), batch_size=64)
    by_pid: dict[int, list[int]] = {}
    for p, calls in r.results["out"]:
        by_pid.setdefault(p, []).append(calls)
    assert os.getpid() not in by_pid
    assert 1 <= len(by_pid) <= 2
    for seq in by_pid.values():  # one object per worker, never re-sent: 1, 2, 3, ... in order
        assert seq == list(range(1, len(seq) + 1))
    assert sum(len(s) for s in by_pid.values()) == n


def test_open_and_close_run_in_each_worker(tmp_path: Any) -> None:
    r = run(Extractor(range(100)) >> Transformer(procfns.Hooks(str(tmp_path)), executor="process", workers=2)
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [(x, True) for x in range(100)]
    assert len(list(tmp_path.glob("closed-*"))) == 2


def test_failing_close_hook_fails_the_run(tmp_path: Any) -> None:
    p = Pipeline(Extractor(range(10)) >> Transformer(procfns.Hooks(str(tmp_path), fail_close=True),
                                                     executor="process", workers=1, name="hooks")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError) as info:
        p.run(timeout=HANG)
    assert info.value.node == "hooks"
    assert "close hook failed" in str(info.value.__cause__)


# --------------------------------------------------------------------------- errors


def test_on_error_skip() -> None:
    r = run(Extractor(range(30)) >> Transformer(procfns.fail_on_3, executor="process", on_error="skip")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [x for x in range(30) if x % 3]
    assert r.nodes["fail_on_3"].errors == 10
    assert not r.accounting_problems()


def test_on_error_dead_letter_carries_the_worker_traceback() -> None:
    r = run(Extractor(range(30)) >> Transformer(procfns.fail_on_3, executor="process", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [x for x in range(30) if x % 3]
    recs = r.dead_letters
    assert sorted(rec.item for rec in recs) == list(range(0, 30, 3))
    rec = recs[0]
    assert rec.node == "fail_on_3"
    assert isinstance(rec.exception, ValueError)
    assert "Traceback in worker process" in rec.traceback
    assert "procfns.py" in rec.traceback and "fail_on_3" in rec.traceback
    assert f"bad item {rec.item}" in rec.traceback


def test_on_error_raise_fails_the_run_with_the_worker_traceback() -> None:
    p = Pipeline(Extractor(range(1000)) >> Transformer(procfns.fail_on_3, executor="process", name="f")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError) as info:
        p.run(timeout=HANG)
    err = info.value
    assert err.node == "f"
    assert isinstance(err.__cause__, ValueError)
    assert err.record is not None and "Traceback in worker process" in err.record.traceback
    if sys.version_info >= (3, 11):
        assert any("Traceback in worker process" in note for note in err.__cause__.__notes__)
    assert not err.result.accounting_problems()


def test_on_error_log(caplog: Any) -> None:
    import logging
    with caplog.at_level(logging.ERROR, logger="reflux"):
        r = run(Extractor(range(6)) >> Transformer(procfns.fail_on_3, executor="process", on_error="log")
                >> Loader.to_list(name="out"))
    assert r.results["out"] == [1, 2, 4, 5]
    assert "Traceback in worker process" in caplog.text


def test_returned_error_goes_through_the_policy() -> None:
    r = run(Extractor(range(9)) >> Transformer(procfns.error_on_3, executor="process", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [1, 2, 4, 5, 7, 8]
    assert [rec.item for rec in r.dead_letters] == [0, 3, 6]
    assert "no good" in str(r.dead_letters[0].exception)


def test_retries_run_in_the_worker() -> None:
    r = run(Extractor(range(40)) >> Transformer(procfns.Flaky(), executor="process", retries=1, name="flaky")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == list(range(40))
    assert r.nodes["flaky"].retried == 40
    assert r.nodes["flaky"].errors == 0


def test_retries_exhausted_count_attempts() -> None:
    r = run(Extractor([3]) >> Transformer(procfns.fail_on_3, executor="process", retries=2,
                                          on_error="dead_letter") >> Loader.to_list(name="out"))
    assert r.dead_letters[0].attempts == 3
    assert r.nodes["fail_on_3"].retried == 2


def test_exception_that_cannot_be_pickled_becomes_remote_error() -> None:
    r = run(Extractor([1]) >> Transformer(procfns.raise_two_arg, executor="process", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    exc = r.dead_letters[0].exception
    assert isinstance(exc, RemoteError)
    assert "TwoArgError" in str(exc) and "1/b" in str(exc)
    assert "raise_two_arg" in r.dead_letters[0].traceback


def test_results_and_items_that_cannot_be_pickled_fail_per_item() -> None:
    import threading
    r = run(Extractor(range(6)) >> Transformer(procfns.lock_result, executor="process", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [0, 2, 4]
    assert [rec.item for rec in r.dead_letters] == [1, 3, 5]
    lock = threading.Lock()
    r = run(Extractor([1, lock, 2]) >> Transformer(procfns.pid, executor="process", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert len(r.results["out"]) == 2
    assert [rec.item for rec in r.dead_letters] == [lock]


def test_a_worker_that_dies_fails_its_items_and_is_replaced() -> None:
    r = run(Extractor(range(200)) >> Transformer(procfns.crash_on_5, executor="process", workers=2,
                                                 on_error="dead_letter") >> Loader.to_list(name="out"),
            batch_size=8)
    lost = [rec.item for rec in r.dead_letters]
    assert 5 in lost
    assert all(isinstance(rec.exception, ProcessWorkerError) for rec in r.dead_letters)
    assert "exited with code 3" in str(r.dead_letters[0].exception)
    assert sorted(r.results["out"] + lost) == list(range(200))
    assert not r.accounting_problems()


# --------------------------------------------------------------------------- start_method="fork"


def _single_threaded() -> None:
    """A fork start needs this process to run one thread: wait for the threads of earlier runs."""
    deadline = time.monotonic() + 10
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == 1, [t.name for t in threading.enumerate()]


@needs_fork
def test_fork_start_gives_the_same_results_from_forked_workers() -> None:
    _single_threaded()
    n = 3000
    r = run(Extractor(range(n)) >> Transformer(procfns.square, executor="process", workers=2,
                                               start_method="fork") >> Loader.to_list(name="out"))
    assert r.results["out"] == [x * x for x in range(n)]
    assert not r.accounting_problems()
    _single_threaded()
    r = run(Extractor(range(400)) >> Transformer(procfns.pid, executor="process", workers=2,
                                                 start_method="fork") >> Loader.to_list(name="pids"),
            batch_size=8)
    pids = set(r.results["pids"])
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@needs_fork
def test_two_forked_nodes_and_a_spawned_one_end_cleanly() -> None:
    # each forked child closes the parent's ends of its siblings' pipes, so every
    # worker sees its end of input when the parent closes it (no hang at the end)
    _single_threaded()
    r = run(Extractor(range(2000))
            >> Transformer(procfns.square, executor="process", workers=2, start_method="fork", name="a")
            >> Transformer(procfns.square, executor="process", workers=2, start_method="fork", name="b")
            >> Transformer(procfns.square, executor="process", workers=1, name="c")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [x ** 8 for x in range(2000)]
    assert not r.accounting_problems()


@needs_fork
def test_fork_workers_see_what_the_parent_has_loaded() -> None:
    # unlike spawned workers (test_function_the_worker_cannot_import_fails_at_start)
    mod = types.ModuleType("reflux_forked_phantom")
    exec("def ghost(x):\n    return x + 1\n", mod.__dict__)
    sys.modules["reflux_forked_phantom"] = mod
    try:
        _single_threaded()
        r = run(Extractor(range(10)) >> Transformer(mod.ghost, executor="process", workers=1,
                                                    start_method="fork", name="ghost")
                >> Loader.to_list(name="out"))
    finally:
        del sys.modules["reflux_forked_phantom"]
    assert r.results["out"] == list(range(1, 11))


@needs_fork
def test_fork_errors_and_a_dying_worker_go_through_the_policy() -> None:
    _single_threaded()
    r = run(Extractor(range(10)) >> Transformer(procfns.fail_on_3, executor="process", workers=2,
                                                start_method="fork", on_error="dead_letter")
            >> Loader.to_list(name="out"))
    assert r.results["out"] == [1, 2, 4, 5, 7, 8]  # fail_on_3 fails on multiples of 3
    assert [rec.item for rec in r.dead_letters] == [0, 3, 6, 9]
    assert "Traceback in worker process" in r.dead_letters[0].traceback  # a note (3.11+) or the cause (3.10)
    _single_threaded()
    r = run(Extractor(range(200)) >> Transformer(procfns.crash_on_5, executor="process", workers=2,
                                                 start_method="fork", on_error="dead_letter")
            >> Loader.to_list(name="out"), batch_size=8)
    lost = [rec.item for rec in r.dead_letters]
    assert 5 in lost and "exited with code 3" in str(r.dead_letters[0].exception)
    assert sorted(r.results["out"] + lost) == list(range(200))  # the replacement (spawned) went on


@needs_fork
def test_fork_workers_of_a_node_that_never_opened_are_ended() -> None:
    # the run fails before the process node runs: its forked workers must not outlive it
    def bad_source() -> Iterator[int]:
        raise ValueError("no input")
        yield 0

    _single_threaded()
    p = Pipeline(Extractor(bad_source(), batch_size=4) >> Transformer(procfns.square, executor="process",
                                                                      workers=2, start_method="fork")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError, match="no input"):
        p.run(timeout=HANG)
    assert p._runtime is not None and p._runtime.preforked == {}  # every forked worker adopted or ended


@needs_fork
def test_fork_start_is_refused_while_other_threads_run() -> None:
    _single_threaded()
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="someone-else", daemon=True)
    t.start()
    try:
        p = Pipeline(Extractor(range(10)) >> Transformer(procfns.square, executor="process",
                                                         start_method="fork") >> Loader.to_list())
        with pytest.raises(RuntimeError, match="Transformer 'square': start_method='fork' .* someone-else"):
            p.run(timeout=HANG)
    finally:
        release.set()
        t.join()
    _single_threaded()  # the refused run started no thread and no process (the fixture checks)


# --------------------------------------------------------------------------- validation


def test_options_are_validated_with_the_node_named() -> None:
    with pytest.raises(ValidationError, match="Transformer 'square': executor must be one of"):
        Transformer(procfns.square, executor="processes")
    with pytest.raises(ValidationError, match="Transformer 'square': workers must be a positive integer"):
        Transformer(procfns.square, executor="process", workers=0)
    with pytest.raises(ValidationError, match="workers= needs executor='process'"):
        Transformer(procfns.square, workers=2)
    with pytest.raises(ValidationError, match="ordered must be True or False"):
        Transformer(procfns.square, executor="process", ordered="yes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="Transformer 'square': start_method must be one of 'spawn', 'fork'"):
        Transformer(procfns.square, executor="process", start_method="forkserver")
    with pytest.raises(ValidationError, match="start_method= needs executor='process'"):
        Transformer(procfns.square, start_method="fork")
    assert Transformer(procfns.square, executor="process").start_method == "spawn"


def test_unpicklable_function_is_refused_naming_the_node() -> None:
    with pytest.raises(ValidationError, match="Transformer 'sq': executor='process' .* cannot be pickled"):
        Transformer(lambda x: x, executor="process", name="sq")

    def local(x: int) -> int:
        return x

    with pytest.raises(ValidationError, match="Transformer 'local'"):
        Transformer(local, executor="process")


def test_function_the_worker_cannot_import_fails_at_start() -> None:
    mod = types.ModuleType("reflux_phantom_module")
    exec("def ghost(x):\n    return x\n", mod.__dict__)
    sys.modules["reflux_phantom_module"] = mod
    try:
        p = Pipeline(Extractor(range(10)) >> Transformer(mod.ghost, executor="process", name="ghost")
                     >> Loader.to_list(name="out"))
        with pytest.raises(NodeError) as info:
            p.run(timeout=HANG)
    finally:
        del sys.modules["reflux_phantom_module"]
    assert info.value.node == "ghost"
    cause = info.value.__cause__
    assert isinstance(cause, ProcessWorkerError)
    assert "could not load the function" in str(cause) and "reflux_phantom_module" in str(cause)


# --------------------------------------------------------------------------- stopping


@pytest.mark.parametrize("start", START_METHODS)
def test_stop_without_drain_ends_the_workers(start: str) -> None:
    if start == "fork":
        _single_threaded()
    p = Pipeline(Extractor([0.01] * 100_000) >> Transformer(procfns.sleepy, executor="process", workers=2,
                                                            start_method=start)
                 >> Loader.to_list(name="out"))
    p.start()
    try:
        time.sleep(0.5)
    finally:
        p.stop(drain=False)
    r = p.join(HANG)
    assert r.status == "stopped"
    assert r.nodes["sleepy"].dropped > 0
    assert not r.accounting_problems()


def test_stop_with_drain_finishes_what_was_sent() -> None:
    p = Pipeline(Extractor(procfns_forever) >> Transformer(procfns.square, executor="process", workers=2)
                 >> Loader.to_list(name="out"))
    p.start()
    time.sleep(0.5)
    p.stop()
    r = p.join(HANG)
    out = r.results["out"]
    assert r.status == "stopped"
    assert out == [x * x for x in range(len(out))]
    assert r.nodes["square"].dropped == 0
    assert not r.accounting_problems()


def procfns_forever() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


def test_timeout_abandons_and_ends_the_workers() -> None:
    p = Pipeline(Extractor([0.05] * 1000) >> Transformer(procfns.sleepy, executor="process", workers=2)
                 >> Loader.to_list(name="out"))
    with pytest.raises(TimeoutError):
        p.run(timeout=0.5)


CTRL_C = textwrap.dedent("""
    import os, signal, sys, threading
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    from reflux import Extractor, Transformer, Loader, Pipeline, PipelineInterrupted
    import procfns
    from processes import child_pids

    seen = [0]
    def load(x):
        seen[0] += 1
        if seen[0] == 20:
            print("ready", " ".join(map(str, sorted(child_pids()))), flush=True)

    if __name__ == "__main__":
        p = Pipeline(Extractor([0.002] * 10_000_000)
                     >> Transformer(procfns.sleepy, executor="process", workers=2, start_method={start!r})
                     >> Loader(load))
        try:
            p.run()
        except PipelineInterrupted as e:
            r = e.result
            print("interrupted", r.status, len(child_pids()), len(r.accounting_problems()), flush=True)
            sys.exit(0)
        sys.exit(3)
""")


@needs_sigint
@pytest.mark.parametrize("start", START_METHODS)
def test_ctrl_c_ends_the_workers(tmp_path: Any, start: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CTRL_C.format(tests=TESTS, start=start))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=str(tmp_path))
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line and line[0] == "ready", child.stderr.read() if child.stderr else ""
        workers = [int(x) for x in line[1:]]
        assert len(workers) == 2
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "interrupted", "0", "0"], (out, err)
    assert not [w for w in workers if alive(w)]
    assert "Traceback" not in err.replace("PipelineInterrupted", "")  # workers print nothing


PARENT_DIES = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from reflux import Extractor, Transformer, Loader, Pipeline
    import procfns
    from processes import child_pids

    seen = [0]
    def load(x):
        seen[0] += 1
        if seen[0] == 20:
            print("ready", " ".join(map(str, sorted(child_pids()))), flush=True)
            os.kill(os.getpid(), getattr(signal, "SIGKILL", 9))  # Windows: TerminateProcess, exit code 9

    if __name__ == "__main__":
        Pipeline(Extractor([{cost}] * 10_000_000)
                 >> Transformer(procfns.sleepy, executor="process", workers=2, start_method={start!r})
                 >> Loader(load)).run()
""")


@pytest.mark.parametrize("start", START_METHODS)
@pytest.mark.parametrize("cost", [0.0, 0.2])
def test_workers_exit_when_the_parent_dies(tmp_path: Any, cost: float, start: str) -> None:
    """Idle or busy, a worker whose parent was killed notices its pipe closed and exits."""
    script = tmp_path / "child.py"
    script.write_text(PARENT_DIES.format(tests=TESTS, cost=cost, start=start))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=str(tmp_path))
    try:
        out, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == (-signal.SIGKILL if os.name == "posix" else 9), err
    words = out.split()
    assert words and words[0] == "ready", (out, err)
    workers = [int(w) for w in words[1:]]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while [w for w in workers if alive(w)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [w for w in workers if alive(w)]


# --------------------------------------------------------------------------- no runtime at all


def _logic(node: Transformer) -> tuple[Any, Any, Any]:
    from reflux.logic import LocalContext, Outbox
    from reflux.run.placement import logic_for
    ctx = LocalContext(node.make_stats())
    return logic_for(node, ctx, 1, ["out"]), Outbox(), ctx


def test_the_logic_runs_without_a_runtime() -> None:
    """Driven by hand through the logic contract (open, process, tick, finish, close)."""
    logic, out, ctx = _logic(Transformer(procfns.fail_on_3, executor="process", workers=2,
                                         on_error="dead_letter"))
    logic.open()
    try:
        for s in range(0, 300, 50):
            logic.process(list(range(s, s + 50)), out)
            deadline = logic.next_deadline()
            if deadline is not None:
                logic.tick(max(deadline, time.monotonic()), out)
        logic.finish(out)
        out.flush()
    finally:
        logic.close()
    assert out.sent[0] == [x for x in range(300) if x % 3]
    assert [r.item for r in out.dead_sent] == list(range(0, 300, 3))
    assert ctx.stats.errors == 100 and logic.abandon() == 0


def test_non_blocking_hooks_for_a_pool_runtime() -> None:
    """busy() / wait_handles() / drain_step(): a runtime can drive the node without blocking."""
    from multiprocessing.connection import wait
    logic, out, _ = _logic(Transformer(procfns.countdown, executor="process", workers=2))
    logic.open()
    try:
        items = list(range(40))
        while items:
            if logic.busy():
                wait(logic.wait_handles(), 5)
                logic.drain_step(out)
                continue
            logic.process([items.pop()], out)
        while not logic.drain_step(out):
            assert logic.wait_handles()
            wait(logic.wait_handles(), 5)
        out.flush()
    finally:
        logic.close()
    assert out.sent[0] == ["done"] * 40
    assert logic.stats.fed_back == sum(range(40))


def test_abandon_counts_what_is_in_flight_and_ends_the_workers() -> None:
    logic, out, _ = _logic(Transformer(procfns.sleepy, executor="process", workers=2))
    logic.open()
    logic.process([0.5] * 4, out)
    pids = list(logic.pids)
    assert logic.abandon() == 4 - len(out.ports[0])
    logic.close()
    assert not [p for p in pids if alive(p)]


NO_GUARD = textwrap.dedent("""
    from reflux import Extractor, Transformer, Loader, Pipeline

    def square(x):
        return x * x

    # no `if __name__ == "__main__":` guard: each worker imports this file again
    Pipeline(Extractor(range(10)) >> Transformer(square, executor="process", workers=2)
             >> Loader.to_list(name="out")).run(timeout=60)
""")


def test_a_script_without_main_guard_fails_clearly(tmp_path: Any) -> None:
    """As with multiprocessing's spawn: a clear error naming the idiom, never a cascade of workers."""
    script = tmp_path / "noguard.py"
    script.write_text(NO_GUARD)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=HANG,
                          cwd=str(tmp_path))
    assert proc.returncode == 1
    assert "NodeError: Transformer 'square' failed" in proc.stderr
    assert "put the code that builds and runs pipelines under 'if __name__ == \"__main__\":'" in proc.stderr
    # reflux refuses first: not multiprocessing's longer message, repeated through nested failures
    assert "bootstrapping phase" not in proc.stderr


def test_pipeline_default_executor() -> None:
    t = Transformer(procfns.pid, name="pid")
    mine = Transformer(procfns.pid, executor="thread", name="mine")
    r = run(Extractor(range(5)) >> t >> Loader.to_list(name="a"), executor="process")
    assert os.getpid() not in r.results["a"]
    r = run(Extractor(range(5)) >> mine >> Loader.to_list(name="b"), executor="process")
    assert r.results["b"] == [os.getpid()] * 5
    with pytest.raises(ValidationError, match="Transformer 'lam': executor='process' .* cannot be pickled"):
        Pipeline(Extractor(range(5)) >> Transformer(lambda x: x, name="lam") >> Loader.to_list(),
                 executor="process").run(timeout=HANG)
    with pytest.raises(ValidationError, match="Pipeline 'p': executor must be one of"):
        Pipeline(name="p", executor="fork")


@pytest.mark.slow
def test_stress_random_shapes() -> None:
    """Many runs with random sizes, batch sizes, worker counts, order and failures."""
    import random
    rng = random.Random(4)
    for _ in range(30):
        n = rng.randrange(0, 3000)
        workers = rng.randrange(1, 4)
        ordered = rng.random() < 0.5
        batch = rng.choice([1, 7, 64, 256])
        r = run(Extractor(range(n)) >> Transformer(procfns.fail_on_3, executor="process", workers=workers,
                                                   ordered=ordered, on_error="skip")
                >> Loader.to_list(name="out"), batch_size=batch)
        want = [x for x in range(n) if x % 3]
        got = r.results["out"]
        assert (got if ordered else sorted(got)) == want, (n, workers, ordered, batch)
        assert r.nodes["fail_on_3"].errors == n - len(want)
        assert not r.accounting_problems()

