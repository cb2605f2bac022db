"""Error policies, retries, failures of user hooks, faults and Ctrl-C."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from reflux import (
    Balancer,
    Error,
    ErrorRecord,
    Extractor,
    Filter,
    Loader,
    NodeError,
    Pipeline,
    Transformer,
    TransformError,
)
from support import forever, needs_posix_signals

HANG = 60


def parse(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"cannot parse {x}")
    return x


# --------------------------------------------------------------------------- the policies

class TestPolicies:
    def test_raise_is_default_and_names_the_node(self) -> None:
        p = Pipeline(Extractor(range(100)) >> Transformer(parse) >> Loader(lambda x: None))
        with pytest.raises(NodeError) as info:
            p.run(timeout=HANG)
        err = info.value
        assert str(err) == "Transformer 'parse' failed on item 3: ValueError: cannot parse 3"
        assert err.node == "parse"
        # the original exception and its traceback are chained
        assert isinstance(err.__cause__, ValueError)
        frames = traceback.extract_tb(err.__cause__.__traceback__)
        assert frames[-1].name == "parse"
        assert err.record is not None and err.record.item == 3 and "cannot parse 3" in err.record.traceback
        assert err.result is not None and err.result.status == "failed"
        assert err.result["parse"].errors == 1
        err.result.check_accounting()
        assert p.result is err.result

    def test_skip_counts(self) -> None:
        sink = Loader.to_list()
        result = Pipeline(Extractor(range(100)) >> Transformer(parse, on_error="skip") >> sink).run(timeout=HANG)
        assert result.results[sink.name] == [x for x in range(100) if x % 10 != 3]
        assert result["parse"].errors == 10
        assert result.errors == []  # skip keeps no records
        result.check_accounting()

    def test_dead_letter_builtin(self) -> None:
        result = Pipeline(Extractor(range(30)) >> Transformer(parse, on_error="dead_letter")
                          >> Loader(lambda x: None)).run(timeout=HANG)
        assert [r.item for r in result.dead_letters] == [3, 13, 23]
        rec = result.dead_letters[0]
        assert isinstance(rec, ErrorRecord)
        assert rec.node == "parse" and isinstance(rec.exception, ValueError)
        assert "raise ValueError" in rec.traceback and rec.attempts == 1
        assert result.dead_lettered == 3 and result.loaded == 27
        assert result["dead-letter"].received == 3
        result.check_accounting()

    def test_dead_letter_to_own_loader(self) -> None:
        dead: list[ErrorRecord] = []
        dl = Loader(dead.append, name="quarantine")
        f = Filter(lambda x: 1 / (x % 5), on_error="dead_letter", name="f")
        t = Transformer(parse, on_error="dead_letter", name="t")
        p = Pipeline(Extractor(range(20)) >> f >> t >> Loader(lambda x: None), dead_letter=dl)
        result = p.run(timeout=HANG)
        assert sorted((r.node, r.item) for r in dead) == [("f", 0), ("f", 5), ("f", 10), ("f", 15),
                                                          ("t", 3), ("t", 13)]
        assert result.dead_letters == []  # they went to the given Loader
        assert result.edges[("f", "quarantine")] == 4 and result.edges[("t", "quarantine")] == 2
        result.check_accounting()

    def test_unused_dead_letter_loader(self) -> None:
        dl = Loader.to_list(name="quarantine")
        result = Pipeline(Extractor(range(3)) >> Loader.to_list(name="out"), dead_letter=dl).run(timeout=HANG)
        assert result.results == {"quarantine": [], "out": [0, 1, 2]}
        result.check_accounting()

    def test_per_node_dead_letter_target(self) -> None:
        mine: list[ErrorRecord] = []
        dl = Loader(mine.append, name="mine")
        t = Transformer(parse, on_error="dead_letter", dead_letter="mine")
        result = Pipeline(Extractor(range(5)) >> t >> Loader(lambda x: None), dl).run(timeout=HANG)
        assert [r.item for r in mine] == [3]
        result.check_accounting()

    def test_log_uses_logging(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="reflux"):
            result = Pipeline(Extractor(range(5)) >> Transformer(parse, on_error="log")
                              >> Loader(lambda x: None)).run(timeout=HANG)
        records = [r for r in caplog.records if r.name == "reflux"]
        assert len(records) == 1
        assert "Transformer 'parse' failed on item 3" in records[0].getMessage()
        assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
        assert [r.item for r in result.errors] == [3]
        assert result["parse"].errors == 1

    def test_error_return_with_plain_message(self) -> None:
        result = Pipeline(Extractor(["ok", "bad"]) >> Transformer(lambda s: Error("nope") if s == "bad" else s,
                                                                    on_error="dead_letter")
                          >> Loader(lambda x: None)).run(timeout=HANG)
        (rec,) = result.dead_letters
        assert rec.item == "bad" and isinstance(rec.exception, TransformError) and str(rec.exception) == "nope"

    def test_loader_failure_policy(self) -> None:
        def store(x: int) -> None:
            if x == 2:
                raise OSError("disk full")

        with pytest.raises(NodeError, match="Loader 'store' failed on item 2: OSError: disk full"):
            Pipeline(Extractor(range(5)) >> Loader(store)).run(timeout=HANG)

    def test_max_error_records(self) -> None:
        p = Pipeline(Extractor(range(100)) >> Transformer(parse, on_error="log") >> Loader(lambda x: None),
                     max_error_records=4)
        logging.getLogger("reflux").disabled = True
        try:
            result = p.run(timeout=HANG)
        finally:
            logging.getLogger("reflux").disabled = False
        assert len(result.errors) == 4 and result.errors_not_kept == 6
        assert result["parse"].errors == 10


class TestRetries:
    def test_retries_until_success(self) -> None:
        attempts: dict[int, int] = {}

        def flaky(x: int) -> int:
            attempts[x] = attempts.get(x, 0) + 1
            if attempts[x] <= x % 3:  # item fails x % 3 times
                raise ConnectionError("again")
            return x

        sink = Loader.to_list()
        result = Pipeline(Extractor(range(30)) >> Transformer(flaky, retries=2) >> sink).run(timeout=HANG)
        assert result.results[sink.name] == list(range(30))
        assert result["flaky"].retried == sum(x % 3 for x in range(30))
        assert result["flaky"].errors == 0

    def test_policy_applies_after_retries(self) -> None:
        calls = [0]

        def always(x: int) -> int:
            calls[0] += 1
            raise ValueError("no")

        result = Pipeline(Extractor([1, 2]) >> Transformer(always, retries=3, on_error="dead_letter")
                          >> Loader(lambda x: None)).run(timeout=HANG)
        assert calls[0] == 8
        assert [r.attempts for r in result.dead_letters] == [4, 4]

    def test_error_return_is_retried(self) -> None:
        seen = [0]

        def second_time(x: int) -> Any:
            seen[0] += 1
            return x if seen[0] > 1 else Error(ValueError("first"))

        sink = Loader.to_list()
        result = Pipeline(Extractor([7]) >> Transformer(second_time, retries=1) >> sink).run(timeout=HANG)
        assert result.results[sink.name] == [7]

    def test_backoff_waits_between_attempts(self) -> None:
        stamps: list[float] = []

        def failing(x: int) -> int:
            stamps.append(time.monotonic())
            raise ValueError("no")

        Pipeline(Extractor([1]) >> Transformer(failing, retries=3, backoff=0.05, backoff_factor=2.0,
                                               on_error="skip") >> Loader(lambda x: None)).run(timeout=HANG)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert len(gaps) == 3
        # lower bounds only: 0.05, 0.1, 0.2 seconds
        assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195

    def test_stop_interrupts_backoff(self) -> None:
        started = threading.Event()

        def failing(x: int) -> int:
            started.set()
            raise ValueError("no")

        p = Pipeline(Extractor([1]) >> Transformer(failing, retries=5, backoff=3600, on_error="skip")
                     >> Loader(lambda x: None))
        p.start()
        assert started.wait(HANG)
        p.stop(drain=False)
        result = p.join(HANG)  # did not wait an hour
        assert result["failing"].dropped == 1
        result.check_accounting()

    def test_generator_is_not_retried_after_partial_output(self) -> None:
        calls = [0]

        def partial(x: int) -> Iterator[int]:
            calls[0] += 1
            yield x
            raise ValueError("half way")

        sink = Loader.to_list()
        result = Pipeline(Extractor([1]) >> Transformer(partial, retries=3, on_error="skip") >> sink).run(timeout=HANG)
        assert result.results[sink.name] == [1] and calls[0] == 1  # never sent twice


# --------------------------------------------------------------------------- faults

class TestFaults:
    def test_crash_releases_blocked_neighbours(self) -> None:
        """A crash downstream of full channels (clogging in the crate) ends the run:
        the blocked Extractor is released and nothing keeps filling memory."""
        gate = threading.Event()

        def stuck_then_crash(x: int) -> int:
            gate.wait(HANG)
            raise RuntimeError("crashed")

        p = Pipeline(Extractor(forever) >> Transformer(lambda x: x, name="pass") >> Transformer(stuck_then_crash)
                     >> Loader(lambda x: None), capacity=8)
        p.start()
        try:
            deadline = time.monotonic() + HANG
            while p.stats()["pass"].received < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)  # both channels are full now, the Extractor is blocked
            extracted = p.stats()["forever"].received
            assert extracted < 100
        finally:
            gate.set()
        with pytest.raises(NodeError, match="Transformer 'stuck_then_crash' failed on item 0: RuntimeError"):
            p.join(HANG)
        assert p.result is not None
        assert p.result.extracted < 100 + extracted
        p.result.check_accounting()

    def test_open_hook_failure(self) -> None:
        class Conn:
            def open(self) -> None:
                raise ConnectionRefusedError("db down")

            def __call__(self, x: int) -> None:
                pass

        with pytest.raises(NodeError, match="Loader 'conn' failed: ConnectionRefusedError: db down"):
            Pipeline(Extractor(forever) >> Loader(Conn())).run(timeout=HANG)

    def test_close_hook_failure(self) -> None:
        class Sink:
            def __call__(self, x: int) -> None:
                pass

            def close(self) -> None:
                raise OSError("flush failed")

        with pytest.raises(NodeError, match="OSError: flush failed"):
            Pipeline(Extractor(range(3)) >> Loader(Sink(), name="sink")).run(timeout=HANG)

    def test_failure_in_one_branch_ends_all(self) -> None:
        def boom(x: int) -> int:
            raise KeyError(x)

        p = Pipeline(Extractor(forever) >> Balancer() >> [Transformer(lambda x: x) >> Loader(lambda x: None),
                                                          Transformer(boom) >> Loader(lambda x: None)])
        with pytest.raises(NodeError, match="Transformer 'boom'"):
            p.run(timeout=HANG)
        assert p.result is not None and p.result.status == "failed"
        p.result.check_accounting()

    def test_first_failure_wins(self) -> None:
        def boom(x: int) -> int:
            raise ValueError(x)

        p = Pipeline(Extractor(range(1000)) >> Balancer() >> [Transformer(boom, name="a") >> Loader(lambda x: None),
                                                              Transformer(boom, name="b") >> Loader(lambda x: None)])
        with pytest.raises(NodeError) as info:
            p.run(timeout=HANG)
        assert info.value.node in ("a", "b")
        assert len([r for r in info.value.result.errors if r.node in ("a", "b")]) >= 1


# --------------------------------------------------------------------------- Ctrl-C

CTRL_C_RUN = textwrap.dedent("""
    import logging, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from reflux import Extractor, Transformer, Loader, Pipeline, PipelineInterrupted

    logging.basicConfig(level=logging.WARNING)  # reflux logs only where the application asks

    def forever():
        i = 0
        while True:
            if i == 100:
                print("ready", flush=True)
            yield i
            i += 1

    def slow(x):
        time.sleep(0.0005)
        return x

    p = Pipeline(Extractor(forever) >> Transformer(slow) >> Loader(lambda x: None), capacity=64)
    try:
        p.run()
    except PipelineInterrupted as e:
        r = e.result
        left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print("interrupted", r.status, r.extracted, r.loaded, r.dropped, len(r.accounting_problems()),
              len(left), flush=True)
        sys.exit(0)
    sys.exit(3)
""")


@needs_posix_signals
def test_ctrl_c_during_run_stops_cleanly(tmp_path: Any) -> None:
    script = tmp_path / "child.py"
    script.write_text(CTRL_C_RUN)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    words = out.split()
    assert words[:2] == ["interrupted", "interrupted"], out
    extracted, loaded, dropped, problems, threads_left = map(int, words[2:7])
    assert extracted >= 100 and loaded > 0
    assert extracted == loaded + dropped  # every item accounted for
    assert problems == 0
    assert threads_left == 0
    assert "interrupted" in err  # the summary is logged (to the handler the script configured)


def test_a_multi_line_failure_is_not_repeated_in_the_node_error() -> None:
    def boom(x: int) -> int:
        raise RuntimeError("first line\nsecond line\nthird line")

    with pytest.raises(NodeError) as info:
        Pipeline(Extractor(range(3)) >> Transformer(boom, name="boom") >> Loader.to_list()).run(timeout=60)
    message = str(info.value)
    assert message == "Transformer 'boom' failed on item 0: RuntimeError: first line (see its cause for the rest)"
    assert "second line" in str(info.value.__cause__)
