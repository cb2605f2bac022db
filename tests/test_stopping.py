"""Stop means stop: Ctrl-C, stop(drain=False), timeouts and a failure end a run within one
call of user code (not one batch of calls), and every item is still accounted for.

The bounds here are bounds on waiting, generous next to what they guard: a node whose
function takes 50 ms must end within a second, where a batch of 256 such calls would take
12.8 s.  Medians are printed (run with ``-s`` to see them).
"""
from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import needs_posix_signals, wait_until

from reflux import Extractor, Filter, Loader, NodeError, Pipeline, Transformer

HANG = 60.0
SLOW = 0.05  # seconds a slow call takes


def busy(x: int) -> int:
    """50 ms of CPU-bound Python (it holds the GIL, as the slow functions users write do)."""
    end = time.perf_counter() + SLOW
    while time.perf_counter() < end:
        pass
    return x


def _report(what: str, times: list[float]) -> None:
    print(f"\n{what}: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
          f"over {len(times)} trials")


def _slow_pipeline(**kwargs: object) -> Pipeline:
    return Pipeline(Extractor(range(10_000)) >> Transformer(busy, parallel=2, name="slow")
                    >> Loader.to_list(name="out"), **kwargs)  # type: ignore[arg-type]


def test_stop_without_draining_returns_within_one_call() -> None:
    times = []
    for _ in range(3):
        p = _slow_pipeline()
        p.start()
        wait_until(lambda: p.stats()["out"].received >= 4, "some items to be loaded")
        t0 = time.monotonic()
        p.stop(drain=False)
        result = p.join(HANG)
        times.append(time.monotonic() - t0)
        assert result.status == "stopped" and result.dropped > 0
        result.check_accounting()
    _report("stop(drain=False) + join()", times)
    assert max(times) < 0.5


def test_a_drain_stop_and_a_pause_are_seen_within_about_one_budget() -> None:
    # capacity 8: a drain-stop lets what was extracted flow on, which is little here
    p = _slow_pipeline(capacity=8)
    p.start()
    wait_until(lambda: p.stats()["out"].received >= 2, "some items to be loaded")
    p.pause()
    before = p.stats()["slow"].received
    time.sleep(0.3)
    held = p.stats()["slow"].received - before
    p.resume()
    t0 = time.monotonic()
    p.stop()  # drain: what was extracted goes on, then the run ends
    extracted_at_stop = p.stats()["extractor"].received
    result = p.join(HANG)
    elapsed = time.monotonic() - t0
    # a batch in flight when pause() came may finish (a few calls per replica), nothing more
    assert held <= 8, f"{held} items went in while paused"
    assert result.status == "stopped" and result.dropped == 0
    assert result.loaded == result.extracted and result.loaded < 10_000
    # the source stopped at once: at most one more small batch after stop()
    assert result.extracted - extracted_at_stop <= 8
    result.check_accounting()
    assert elapsed < 5, f"a drain-stop took {elapsed:.1f} s"


def test_run_timeout_raises_within_the_timeout_and_one_call() -> None:
    times = []
    for _ in range(3):
        p = _slow_pipeline()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            p.run(timeout=1)
        times.append(time.monotonic() - t0)
        result = p.result
        assert result is not None and result.status == "stopped" and result.loaded < 10_000
        result.check_accounting()
    _report("run(timeout=1)", times)
    assert max(times) < 1.5


def test_the_command_line_timeout_has_the_same_bound(tmp_path: object) -> None:
    from reflux.cli.main import EXIT_FAILED, main

    script = os.path.join(str(tmp_path), "slow_pipeline.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent("""
            import time
            from reflux import Extractor, Loader, Pipeline, Transformer

            def busy(x):
                end = time.perf_counter() + 0.05
                while time.perf_counter() < end:
                    pass
                return x

            pipeline = Pipeline(Extractor(range(10_000)) >> Transformer(busy, parallel=2) >> Loader.to_list())
        """))
    t0 = time.monotonic()
    code = main(["run", script, "--timeout", "1", "--no-progress"])
    elapsed = time.monotonic() - t0
    assert code == EXIT_FAILED
    assert elapsed < 1.5 + 0.5, f"--timeout 1 took {elapsed:.2f} s (loading the file included)"


def test_a_failing_replica_ends_the_run_while_the_other_is_busy() -> None:
    def fail_once_started(x: int) -> int:
        if x == 3:
            raise ValueError("boom")
        return busy(x)

    p = Pipeline(Extractor(range(10_000)) >> Transformer(fail_once_started, parallel=2, name="t")
                 >> Loader.to_list(name="out"))
    t0 = time.monotonic()
    with pytest.raises(NodeError, match="Transformer 't' failed on item 3") as info:
        p.run(timeout=HANG)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, f"the failure took {elapsed:.1f} s to end the run"
    assert info.value.result is not None
    info.value.result.check_accounting()


def test_every_node_kind_stops_between_calls_not_batches() -> None:
    """Filter, Loader and a fused chain of them: a stop(drain=False) is seen before the next call."""
    def slow_keep(x: int) -> bool:
        busy(x)
        return True

    def slow_load(x: int) -> None:
        busy(x)

    for graph in (Extractor(range(10_000)) >> Filter(slow_keep) >> Loader.to_list(),
                  Extractor(range(10_000)) >> Loader(slow_load, name="sink"),
                  Extractor(range(10_000)) >> Transformer(busy) >> Filter(slow_keep) >> Loader(slow_load)):
        p = Pipeline(graph, batch_size=256)
        p.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        p.stop(drain=False)
        result = p.join(HANG)
        assert time.monotonic() - t0 < 0.5
        result.check_accounting()


CTRL_C_CHILD = textwrap.dedent("""
    import signal, sys, time
    # a background process starts with SIGINT ignored: restore Python's handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reflux import Extractor, Loader, Pipeline, PipelineInterrupted, Transformer

    def busy(x):
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
        return x

    if __name__ == "__main__":
        loaded = []
        def load(x):
            loaded.append(x)
            if len(loaded) == 2:
                print("loading", flush=True)
        p = Pipeline(Extractor(range(100_000)) >> Transformer(busy, parallel=2) >> Loader(load))
        try:
            p.run()
        except PipelineInterrupted as exc:
            exc.result.check_accounting()
            print("INTERRUPTED", exc.result.status, flush=True)
            sys.exit(0)
        sys.exit(3)
""")


def _ctrl_c_trial(script: str) -> float:
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "loading", (line, proc.stderr.read() if proc.stderr else "")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=HANG)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "INTERRUPTED interrupted" in out, err[-2000:]
    return elapsed


@needs_posix_signals
def test_ctrl_c_ends_a_run_of_slow_calls_within_a_second(tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "ctrl_c.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(CTRL_C_CHILD)
    with ThreadPoolExecutor(2) as pool:
        times = list(pool.map(lambda _: _ctrl_c_trial(script), range(10)))
    _report("Ctrl-C to exit (50 ms calls, parallel=2)", times)
    assert max(times) < 1.0, [round(t, 3) for t in times]


FORK_CHILD = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reflux import Extractor, Loader, Pipeline, Transformer
    from support import forever, square

    if __name__ == "__main__":
        p = Pipeline(Extractor(forever()) >> Transformer(square, executor="process", workers=2,
                                                         start_method="fork") >> Loader(lambda x: None))
        try:
            print("go", flush=True)
            p.run()
        except KeyboardInterrupt:
            sys.exit(0)
        sys.exit(3)
""")


def _fork_trial(script: str, delay: float) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir(), env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            return f"still running 20 s after SIGINT at {delay * 1000:.0f} ms: {err[-1500:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or "Exception ignored" in err:
        return f"exit {proc.returncode} after SIGINT at {delay * 1000:.0f} ms: {err[-1500:]}"
    return ""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="start_method='fork' needs os.fork (POSIX)")
def test_ctrl_c_during_a_forked_start_is_never_lost(tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "fork_start.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(FORK_CHILD)
    rng = random.Random(13)
    delays = [rng.uniform(0, 0.05) for _ in range(50)]
    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(lambda d: _fork_trial(script, d), delays) if p]
    assert not problems, "\n".join(problems)


LATCH_CHILD = textwrap.dedent("""
    import os, signal, sys
    from reflux import Extractor, Loader, Pipeline, PipelineInterrupted, Transformer

    def forever():
        i = 0
        while True:
            yield i
            i += 1

    during = []

    def hit(x):
        if x == 1000:
            handler = signal.getsignal(signal.SIGINT)
            during.append(handler)
            # where the default handler's raise would be swallowed (a weak-reference
            # callback, a finaliser), all that counts is that the handler noted it:
            # call it here, on a worker thread, where a raise could reach nobody
            handler(signal.SIGINT, None)
        return x

    p = Pipeline(Extractor(forever()) >> Transformer(hit) >> Loader(lambda x: None))
    try:
        p.run()
    except PipelineInterrupted as exc:
        assert exc.result is not None and exc.result.extracted >= 1000, exc.result
        assert during and during[0] is not signal.default_int_handler, during
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        print("INTERRUPTED")
        sys.exit(0)
    sys.exit(3)
""")


@needs_posix_signals
def test_a_ctrl_c_whose_raise_would_be_swallowed_still_stops_the_run() -> None:
    proc = subprocess.run([sys.executable, "-c", LATCH_CHILD], capture_output=True, text=True, timeout=HANG,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0 and "INTERRUPTED" in proc.stdout, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


def test_a_handler_of_the_users_own_is_left_in_place() -> None:
    code = textwrap.dedent("""
        import os, signal
        from reflux import Extractor, Loader, Pipeline, Transformer
        got = []
        mine = lambda signum, frame: got.append(signum)
        signal.signal(signal.SIGINT, mine)
        def hit(x):
            if x == 10:
                assert signal.getsignal(signal.SIGINT) is mine
                signal.raise_signal(signal.SIGINT)
            return x
        r = Pipeline(Extractor(range(100)) >> Transformer(hit) >> Loader.to_list()).run()
        assert r.loaded == 100 and got == [signal.SIGINT], (r, got)
        assert signal.getsignal(signal.SIGINT) is mine
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_join_reports_a_call_that_never_returns_as_stuck_and_the_process_can_exit() -> None:
    code = textwrap.dedent("""
        import threading, time
        from reflux import Extractor, Loader, Pipeline, Transformer
        never = threading.Event()
        def hang(x):
            if x == 5:
                never.wait()
            return x
        p = Pipeline(Extractor(range(100)) >> Transformer(hang, name="hang") >> Loader.to_list(),
                     join_timeout=0.5)
        p.start()
        time.sleep(0.3)
        p.stop(drain=False)
        r = p.join(30)
        assert r.stuck == ["hang"], r.stuck
        print("STUCK", r.stuck)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0 and "STUCK ['hang']" in proc.stdout, proc.stderr
    assert time.monotonic() - t0 < 30
