"""Streaming features: async stages, batch-level functions, leaky inputs, events, sinks that
reduce, per-node pause and reflux.stopping()."""
from __future__ import annotations

import asyncio
import http.server
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest

from reflux import (
    Balancer,
    Broadcast,
    Error,
    Extractor,
    Filter,
    Loader,
    Messenger,
    NodeError,
    NotCallableError,
    Pipeline,
    Transformer,
    ValidationError,
    emit,
    stopping,
)
from reflux.logic import LocalContext, make_logic
from support import wait_until

HANG = 60.0


# --------------------------------------------------------------------------- async stages

class SlowServer:
    """An HTTP server on 127.0.0.1: GET /N answers N*2 after 10 ms; /7 answers 500."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                n = int(self.path.strip("/"))
                time.sleep(0.01)
                body = str(n * 2).encode()
                self.send_response(500 if n == 7 else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="test-http")

    def __enter__(self) -> SlowServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_an_async_transformer_enriches_items_from_a_real_http_server() -> None:
    with SlowServer() as server:
        async def enrich(n: int) -> int:
            status, body = await http_get(server.port, f"/{n}")
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            return int(body)

        result = Pipeline(Extractor(range(60)) >> Transformer(enrich, concurrency=20, on_error="dead_letter",
                                                              retries=1, name="enrich")
                          >> Loader.collect(name="out")).run(timeout=HANG)
    assert result.results["out"] == [n * 2 for n in range(60) if n != 7]  # input order kept
    (record,) = result.dead_letters
    assert record.item == 7 and record.attempts == 2 and "HTTP 500" in str(record.exception)
    assert result["enrich"].retried == 1
    result.check_accounting()


def test_async_calls_stay_within_the_concurrency_and_can_complete_out_of_order() -> None:
    inside = [0, 0]

    async def work(x: int) -> int:
        inside[0] += 1
        inside[1] = max(inside[1], inside[0])
        await asyncio.sleep(0.001 * (x % 5))
        inside[0] -= 1
        return x

    result = Pipeline(Extractor(range(300)) >> Transformer(work, concurrency=7, ordered=False, name="w")
                      >> Loader.collect(name="out")).run(timeout=HANG)
    assert sorted(result.results["out"]) == list(range(300))
    assert 1 < inside[1] <= 7


def test_call_timeout_and_async_hooks_filter_and_loader() -> None:
    class Store:
        def __init__(self) -> None:
            self.rows: list[int] = []
            self.opened = self.closed = False

        async def open(self) -> None:
            self.opened = True

        async def __call__(self, x: int) -> None:
            await asyncio.sleep(0)
            self.rows.append(x)

        async def close(self) -> None:
            self.closed = True

    async def keep(x: int) -> bool:
        if x == 3:
            await asyncio.sleep(5)  # longer than call_timeout
        return x % 2 == 1

    store = Store()
    result = Pipeline(Extractor(range(10)) >> Filter(keep, concurrency=4, call_timeout=0.2, on_error="skip",
                                                     name="keep")
                      >> Loader(store, name="store")).run(timeout=HANG)
    assert store.opened and store.closed and store.rows == [1, 5, 7, 9]
    assert result["keep"].errors == 1 and result["keep"].filtered == 5
    result.check_accounting()


def test_stopping_an_async_stage_cancels_its_calls_within_the_bound() -> None:
    async def forever(x: int) -> int:
        await asyncio.sleep(3600)
        return x

    p = Pipeline(Extractor(range(100)) >> Transformer(forever, concurrency=10, name="w") >> Loader.collect())
    p.start()
    wait_until(lambda: p.stats()["w"].received > 0, "the calls to start")
    t0 = time.monotonic()
    p.stop(drain=False)
    result = p.join(HANG)
    assert time.monotonic() - t0 < 2 and result.status == "stopped" and result.dropped > 0
    result.check_accounting()


def test_bad_async_settings_are_refused() -> None:
    async def fetch(x: Any) -> Any:
        return x

    with pytest.raises(ValidationError, match="Transformer 'abs': concurrency= applies to an async function"):
        Transformer(abs, concurrency=4)
    with pytest.raises(ValidationError, match="Filter 'bool': call_timeout= applies to an async function"):
        Filter(bool, call_timeout=1)
    with pytest.raises(ValidationError, match="set concurrency= instead of parallel="):
        Transformer(fetch, parallel=2)
    with pytest.raises(ValidationError, match="concurrency must be a positive integer"):
        Transformer(fetch, concurrency=0)
    with pytest.raises(ValidationError, match="call_timeout must be a positive number"):
        Loader(fetch, call_timeout=-1)
    with pytest.raises(ValidationError, match="executor='process' takes a plain function"):
        Transformer(fetch, executor="process")
    with pytest.raises(NotCallableError, match="is an async function"):
        Messenger(fetch)
    with pytest.raises(TypeError, match="runs on an event loop"):
        node = Transformer(fetch)
        make_logic(node, LocalContext(node.make_stats()))


# --------------------------------------------------------------------------- batch-level functions

def test_a_batched_transformer_sees_whole_batches_and_keeps_the_order() -> None:
    sizes: list[int] = []

    def double(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return [x * 2 for x in xs]

    result = Pipeline(Extractor(range(1000)) >> Transformer(double, batched=True, name="d")
                      >> Loader.collect(name="out"), batch_size=100).run(timeout=HANG)
    assert result.results["out"] == [x * 2 for x in range(1000)]
    assert sum(sizes) == 1000 and max(sizes) <= 100 and len(sizes) < 1000
    result.check_accounting()


def test_a_failing_batch_is_split_so_one_bad_item_fails_alone() -> None:
    calls: list[int] = []

    def inverse(xs: list[int]) -> list[float]:
        calls.append(len(xs))
        return [1 / x for x in xs]

    items = [1, 2, 4, 0, 5, 8, 10, 20]
    result = Pipeline(Extractor(items, batch_size=8) >> Transformer(inverse, batched=True, on_error="dead_letter",
                                                                    name="inv")
                      >> Loader.collect(name="out"), fuse=False).run(timeout=HANG)
    assert result.results["out"] == [1 / x for x in items if x]
    assert [r.item for r in result.dead_letters] == [0] and result["inv"].errors == 1
    result.check_accounting()


def test_a_batched_function_returning_the_wrong_length_fails_through_the_policy() -> None:
    with pytest.raises(NodeError, match=r"the batched function returned 2 results for 1 items"):
        Pipeline(Extractor(range(10)) >> Transformer(lambda xs: [*xs, 0], batched=True, name="long")
                 >> Loader.collect()).run(timeout=HANG)
    result = Pipeline(Extractor(range(10)) >> Transformer(lambda xs: 5, batched=True, on_error="skip", name="num")
                      >> Loader.collect(name="out")).run(timeout=HANG)
    assert result["num"].errors == 10 and result.results["out"] == []


def test_batched_filters_take_a_mask_and_work_with_numpy_and_fusion() -> None:
    result = Pipeline(Extractor(np.arange(1000.0).tolist()) >> Transformer(lambda xs: np.sqrt(xs), batched=True)
                      >> Filter(lambda xs: np.asarray(xs) > 10, batched=True, name="big")
                      >> Loader.sum(name="total")).run(timeout=HANG)
    expected = [float(np.sqrt(x)) for x in range(1000) if np.sqrt(x) > 10]
    assert result.results["total"] == pytest.approx(sum(expected))
    assert result["big"].filtered == 1000 - len(expected)
    result.check_accounting()
    with pytest.raises(ValidationError, match="does not combine with flat=True"):
        Transformer(lambda xs: xs, batched=True, flat=True)
    with pytest.raises(ValidationError, match="batched must be True or False"):
        Filter(bool, batched="yes")  # type: ignore[arg-type]


def test_a_batched_result_may_fail_or_feed_back_single_items() -> None:
    def step(xs: list[int]) -> list[Any]:
        return [Error(ValueError("odd")) if x % 2 else x for x in xs]

    result = Pipeline(Extractor(range(10)) >> Transformer(step, batched=True, on_error="skip", name="s")
                      >> Loader.collect(name="out")).run(timeout=HANG)
    assert result.results["out"] == [0, 2, 4, 6, 8] and result["s"].errors == 5


def test_batched_stages_see_numpy_chunks_as_one_array_of_records() -> None:
    rec = np.dtype([("x", "<f8"), ("k", "<i4")])
    chunks = []
    for i in range(40):
        a = np.zeros(25 + i, rec)  # chunks of different lengths
        a["x"] = np.arange(len(a)) + 1000 * i
        a["k"] = i
        chunks.append(a)
    calls: list[int] = []

    def scaled(records: np.ndarray) -> np.ndarray:
        calls.append(len(records))
        out = records.copy()
        out["x"] *= 2
        return out

    result = Pipeline(Extractor(chunks) >> Transformer(scaled, batched=True, name="scale")
                      >> Filter(lambda r: r["k"] % 4 != 3, batched=True, name="keep")
                      >> Loader.collect(name="out")).run(timeout=HANG)
    out = result.results["out"]
    kept = [c for c in chunks if c["k"][0] % 4 != 3]
    assert [len(c) for c in out] == [len(c) for c in kept]  # cut back per chunk, in order
    assert all(np.array_equal(o["x"], c["x"] * 2) for o, c in zip(out, kept, strict=True))
    assert sum(calls) == sum(len(c) for c in chunks) and len(calls) < len(chunks)  # whole batches per call
    assert result["keep"].filtered == 10 and result["scale"].emitted == 40
    result.check_accounting()


def test_a_batched_chunk_call_returning_the_wrong_length_fails_its_chunks() -> None:
    chunks = [np.arange(10.0) + 10 * i for i in range(6)]
    result = Pipeline(Extractor(chunks) >> Transformer(lambda a: a if a[0] != 30 else a[:-1], batched=True,
                                                      on_error="skip", name="t")
                      >> Loader.collect(name="out")).run(timeout=HANG)
    # the failing batch is split down to the one chunk whose call comes back short
    assert [int(c[0]) for c in result.results["out"]] == [0, 10, 20, 40, 50]
    assert result["t"].errors == 1
    grids = Pipeline(Extractor([np.ones((2, 3)), np.ones((4, 3))]) >> Transformer(lambda xs: [x.shape for x in xs],
                                                                                   batched=True)
                     >> Loader.collect(name="out")).run(timeout=HANG)
    assert grids.results["out"] == [(2, 3), (4, 3)]  # not 1-d chunks of records: a list, as for any items
    bad = Pipeline(Extractor([np.arange(4.0)]) >> Filter(lambda a: a[:2] > 0, batched=True, name="f",
                                                         on_error="log")
                   >> Loader.collect(name="out")).run(timeout=HANG)
    assert bad["f"].errors == 1 and "2 truth values for 4 records" in str(bad.errors[0].exception)


# --------------------------------------------------------------------------- leaky inputs

@pytest.mark.parametrize("how", ["drop_newest", "drop_oldest"])
def test_a_leaky_input_drops_instead_of_stalling_the_source(how: str) -> None:
    got: list[int] = []

    def slow(x: int) -> None:
        time.sleep(0.001)
        got.append(x)

    result = Pipeline(Extractor(range(3000), batch_size=100) >> Transformer(lambda x: x, name="t")
                      >> Loader(slow, name="slow", overflow=how, capacity=16)).run(timeout=HANG)
    result.check_accounting()
    st = result["slow"]
    assert st.received == 3000 and st.emitted == len(got) and st.overflowed == 3000 - len(got) > 0
    assert got == sorted(got) and len(set(got)) == len(got)
    assert result.overflowed == st.overflowed
    if how == "drop_oldest":
        assert got[-1] == 2999  # the freshest item made it
    else:
        assert got[0] == 0


def test_leaky_inputs_under_two_producers_and_two_consumers_lose_or_keep_each_item_once() -> None:
    delivered: list[int] = []
    lock = threading.Lock()

    def consume(x: int) -> int:
        time.sleep(0.0001)
        with lock:
            delivered.append(x)
        return x

    n = 20_000
    p = Pipeline(workers=4)
    srcs = [Extractor(range(k, n, 2), name=f"src{k}", batch_size=64) for k in range(2)]
    sink = Transformer(consume, parallel=2, name="sink", overflow="drop_oldest", capacity=32)
    p.add(srcs[0] >> sink, srcs[1])
    p.connect(srcs[1], sink)
    p.add(sink >> Loader.count(name="n"))
    result = p.run(timeout=HANG)
    result.check_accounting()
    assert len(delivered) == len(set(delivered)), "an item was delivered twice"
    assert result["sink"].received == n
    assert len(delivered) + result["sink"].overflowed == n


def test_overflow_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="overflow must be one of 'block', 'drop_oldest', 'drop_newest'"):
        Transformer(abs, overflow="leak")
    with pytest.raises(ValidationError, match="Extractor 'x': overflow= is about a node's input"):
        Extractor([1], name="x", overflow="drop_newest")


def test_leaky_drops_show_in_stats_metrics_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reflux")
    p = Pipeline(Extractor(range(2000), batch_size=100)
                 >> Loader(lambda x: time.sleep(0.0005), name="slow", overflow="drop_newest", capacity=8))
    p.run(timeout=HANG)
    assert p.stats()["slow"].overflowed > 0 and p.stats().as_dict()["nodes"]["slow"]["overflowed"] > 0
    assert 'reflux_node_items_overflowed_total{pipeline="pipeline",node="slow",kind="Loader"}' in p.metrics()
    assert [r for r in caplog.records if "its input is full; dropped" in r.getMessage()]


# --------------------------------------------------------------------------- events

def test_emitted_events_are_logged_counted_kept_and_exported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reflux")

    def check(x: int) -> int:
        if x % 10 == 0:
            emit("warning", "round number", value=x)
        if x == 5:
            emit("info", "five")
        return x

    p = Pipeline(Extractor(range(100)) >> Transformer(check, name="check") >> Loader.count(name="n"),
                 max_events=4)
    result = p.run(timeout=HANG)
    assert result["check"].events == {"warning": 10, "info": 1}
    assert len(result.events) == 4 and result.events_not_kept == 7
    first = result.events[0]
    assert (first.node, first.level, first.message, first.fields) == ("check", "warning", "round number",
                                                                        {"value": 0})
    logged = [r for r in caplog.records if r.getMessage() == "Transformer 'check': round number"]
    assert len(logged) == 10 and logged[0].levelno == logging.WARNING
    text = p.metrics()
    assert 'reflux_node_events_total{pipeline="pipeline",node="check",kind="Transformer",level="warning"} 10' in text
    assert p.stats()["check"].events == {"warning": 10, "info": 1}


def test_emit_outside_a_pipeline_logs_and_checks_its_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="reflux")
    emit("error", "not in a node")
    emit(30, "a number works too")
    assert [r.levelno for r in caplog.records[-2:]] == [logging.ERROR, logging.WARNING]
    with pytest.raises(ValueError, match="emit: level must be one of"):
        emit("loud", "no such level")
    assert stopping() is False


# --------------------------------------------------------------------------- sinks that reduce

def test_sinks_that_reduce_report_one_value_and_are_found_by_node() -> None:
    total, count, biggest, rows = (Loader.sum(name="total"), Loader.count(name="count"),
                                   Loader.reduce(max, name="max"), Loader.collect(name="rows"))
    p = Pipeline(Extractor(range(1000)) >> Broadcast() >> [total, count, biggest, rows])
    result = p.run(timeout=HANG)
    assert result.results[total] == result.results["total"] == sum(range(1000))
    assert (result.value(count), result.value(biggest)) == (1000, 999) and result.results[rows] == list(range(1000))
    assert result[total].received == 1000  # node objects index the counters too
    again = p.run(timeout=HANG)
    assert again.results[total] == sum(range(1000)) and again.results[count] == 1000  # each run its own
    empty = Pipeline(Extractor([]) >> Loader.reduce(max, name="m")).run(timeout=HANG)
    assert empty.results["m"] is None
    start = Pipeline(Extractor([1.5, 2.5]) >> Loader.reduce(lambda a, b: a * b, 2.0, name="p")).run(timeout=HANG)
    assert start.results["p"] == 7.5


# --------------------------------------------------------------------------- per-node control

def test_pausing_one_node_holds_its_branch_without_a_worker_or_cpu() -> None:
    fast_done = threading.Event()
    p = Pipeline(workers=2, capacity=64)
    p.add(Extractor(range(100_000), name="a_src") >> Transformer(lambda x: x, name="a", fuse=False)
          >> Loader.count(name="a_sink", fuse=False))
    p.add(Extractor(range(50_000), name="b_src") >> Transformer(lambda x: x, name="b")
          >> Loader(lambda x: fast_done.set() if x == 49_999 else None, name="b_sink"))
    p.start()
    p.pause("a")
    assert fast_done.wait(HANG), "the other branch did not run while one node was paused"
    frozen = p.stats()["a"].received
    assert p.paused_nodes == {"a"} and p.stats()["a"].state == "paused"
    cpu0 = time.process_time()
    time.sleep(0.5)
    cpu = time.process_time() - cpu0
    assert p.stats()["a"].received == frozen
    assert cpu < 0.1, f"a paused branch used {cpu:.3f} s of CPU in 0.5 s"
    p.resume(p["a"])
    result = p.join(HANG)
    assert result.results["a_sink"] == 100_000
    result.check_accounting()
    with pytest.raises(ValidationError, match="has no node 'nope'"):
        Pipeline(Extractor([1]) >> Loader.count()).start().pause("nope")


def test_a_long_call_sees_the_run_stopping() -> None:
    seen = threading.Event()

    def long_call(x: int) -> int:
        while not stopping():
            time.sleep(0.005)
        seen.set()
        return x

    p = Pipeline(Extractor(range(5)) >> Transformer(long_call, name="long") >> Loader.collect(name="out"))
    p.start()
    wait_until(lambda: p.stats()["long"].received > 0, "the call to start")
    p.stop()
    result = p.join(HANG)
    assert seen.is_set() and result.status == "stopped" and result.results["out"]
    result.check_accounting()


def test_per_node_pause_with_balancer_and_replicas() -> None:
    p = Pipeline(Extractor(range(20_000), batch_size=100) >> Balancer()
                 >> [Transformer(lambda x: x, name="r1"), Transformer(lambda x: x, name="r2", parallel=2)]
                 >> Loader.count(name="n"), capacity=32)
    p.start()
    p.pause("r2")
    time.sleep(0.2)
    p.resume("r2")
    assert p.join(HANG).results["n"] == 20_000




def test_events_emitted_in_process_workers_reach_the_node() -> None:
    import procfns

    result = Pipeline(Extractor(range(50)) >> Transformer(procfns.emits, executor="process", workers=2, name="p")
                      >> Loader.count(name="n")).run(timeout=HANG)
    assert result["p"].events == {"warning": 5}
    assert sorted(e.fields["x"] for e in result.events) == [0, 10, 20, 30, 40]
    assert all(e.node == "p" and e.fields["obj"].startswith("<unlocked _thread.lock") for e in result.events)
