"""The two transports of process workers side by side (reflux.run.process.transport).

``native``: OS pipes with ``os.writev``/``os.readv`` and ``select.poll``
(POSIX; the default on Linux).  ``portable``: multiprocessing connections and
``multiprocessing.connection.wait`` (the default on Windows and macOS).
``REFLUX_PROCESS_TRANSPORT`` picks one; each test here runs under both where
the platform has them.
"""
from __future__ import annotations

import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Pipe
from typing import Any

import numpy as np
import procfns
import pytest
from processes import alive, check_no_process_left, child_pids

from reflux import Extractor, Loader, NodeError, Pipeline, ProcessWorkerError, Transformer
from reflux.run.process import child as wire
from reflux.run.process import transport

HANG = 60  # seconds: a hang guard only
NATIVE = pytest.param("native", marks=pytest.mark.skipif(
    not transport._native_available(), reason="the native transport needs POSIX pipes (os.writev, select.poll)"))
TRANSPORTS = [NATIVE, "portable"]


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    before = child_pids()
    yield
    check_no_process_left(before)


@pytest.fixture(params=TRANSPORTS)
def transport_name(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(transport.TRANSPORT_ENV, request.param)
    return str(request.param)


def _open_logic(node: Transformer) -> tuple[Any, Any]:
    from reflux.logic import LocalContext, Outbox
    from reflux.run.placement import logic_for
    logic = logic_for(node, LocalContext(node.make_stats()), 1, ["out"])
    logic.open()
    return logic, Outbox()


# --------------------------------------------------------------------------- choosing


def test_the_default_is_native_on_linux_and_portable_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, "", "auto", " AUTO "):
        if value is None:
            monkeypatch.delenv(transport.TRANSPORT_ENV, raising=False)
        else:
            monkeypatch.setenv(transport.TRANSPORT_ENV, value)
        assert transport.chosen_transport() == ("native" if sys.platform.startswith("linux") else "portable")
    monkeypatch.setenv(transport.TRANSPORT_ENV, "portable")
    assert transport.chosen_transport() == "portable"


def test_native_is_refused_where_there_are_no_posix_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_native_available", lambda: False)
    monkeypatch.setenv(transport.TRANSPORT_ENV, "native")
    with pytest.raises(ValueError, match="REFLUX_PROCESS_TRANSPORT=native needs POSIX pipes"):
        transport.chosen_transport()
    monkeypatch.setenv(transport.TRANSPORT_ENV, "auto")
    if not sys.platform.startswith("linux"):
        assert transport.chosen_transport() == "portable"


def test_an_unknown_transport_fails_the_node_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(transport.TRANSPORT_ENV, "carrier-pigeon")
    p = Pipeline(Extractor(range(5)) >> Transformer(procfns.square, executor="process", name="sq")
                 >> Loader.to_list(name="out"))
    with pytest.raises(NodeError) as info:
        p.run(timeout=HANG)
    assert info.value.node == "sq"
    cause = info.value.__cause__
    assert isinstance(cause, ProcessWorkerError)
    assert "REFLUX_PROCESS_TRANSPORT must be one of 'auto', 'native', 'portable', got 'carrier-pigeon'" in str(cause)


# --------------------------------------------------------------------------- the portable framing


def test_connection_framing_sends_buffers_out_of_band() -> None:
    """Header and pickle in one connection message, each buffer in one more, read into
    fresh writable buffers (empty and non-contiguous arrays included)."""
    arrays = [np.arange(50_000, dtype=np.float64), np.zeros(0, dtype=np.int32),
              np.arange(100, dtype=np.int16)[::3], np.ones((4, 5), dtype=[("a", "i4"), ("b", "f8")])]
    parts = wire.encode((wire.WORK, 7, arrays))
    assert len(parts) == 2 + 3  # the non-contiguous slice is pickled in band
    r, w = Pipe(duplex=False)
    try:
        sender = threading.Thread(target=wire.send_conn, args=(w, parts), name="sender")
        sender.start()
        first = r.recv_bytes()  # header + pickle: no array data in it
        assert len(first) < 2000
        sizes = [len(r.recv_bytes()) for _ in range(3)]
        sender.join()
        assert sizes == [50_000 * 8, 0, 4 * 5 * 12]
        sender = threading.Thread(target=wire.send_conn, args=(w, parts), name="sender")
        sender.start()
        data, bufs = wire.recv_conn_raw(r)
        sender.join()
    finally:
        r.close()
        w.close()
    kind, seq, back = pickle.loads(data, buffers=bufs)
    assert (kind, seq) == (wire.WORK, 7)
    for a, b in zip(arrays, back):
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(b, a)
    assert back[0].flags.writeable and back[3].flags.writeable


def test_connection_framing_ends_with_eof() -> None:
    r, w = Pipe(duplex=False)
    w.close()
    with pytest.raises(EOFError):
        wire.recv_conn_raw(r)
    r.close()


# --------------------------------------------------------------------------- both transports, end to end


def test_each_transport_carries_a_run(transport_name: str) -> None:
    n = 5000
    r = Pipeline(Extractor(range(n)) >> Transformer(procfns.square, executor="process", workers=2)
                 >> Loader.to_list(name="out")).run(timeout=HANG)
    assert r.results["out"] == [x * x for x in range(n)]
    assert sum(r.results["out"]) == sum(x * x for x in range(n))
    assert not r.accounting_problems()


def test_the_chosen_transport_is_the_one_used(transport_name: str) -> None:
    logic, out = _open_logic(Transformer(procfns.pid, executor="process", workers=2))
    try:
        logic.process(list(range(20)), out)
        logic.finish(out)
        out.flush()
        links = {type(w.link).__name__ for w in logic.workers}
        handles = logic.wait_handles()
    finally:
        logic.close()
    assert links == {"PipeLink" if transport_name == "native" else "ConnectionLink"}
    assert all(isinstance(h, int) for h in handles) == (transport_name == "native")
    assert os.getpid() not in out.sent[0] and len(out.sent[0]) == 20


def test_numpy_arrays_round_trip_writable(transport_name: str) -> None:
    arrays = [np.arange(n, dtype=np.float64) for n in (0, 1, 1000, 300_000)]
    r = Pipeline(Extractor(arrays, batch_size=2) >> Transformer(procfns.doubled, executor="process", workers=2)
                 >> Loader.to_list(name="out")).run(timeout=HANG)
    out = r.results["out"]
    for a, b in zip(arrays, out):
        np.testing.assert_array_equal(b, a * 2)
        assert b.flags.writeable


def test_errors_carry_the_worker_traceback(transport_name: str) -> None:
    r = Pipeline(Extractor(range(12)) >> Transformer(procfns.fail_on_3, executor="process", workers=2,
                                                    on_error="dead_letter")
                 >> Loader.to_list(name="out")).run(timeout=HANG)
    assert r.results["out"] == [x for x in range(12) if x % 3]
    assert sorted(rec.item for rec in r.dead_letters) == [0, 3, 6, 9]
    assert all("Traceback in worker process" in rec.traceback and "fail_on_3" in rec.traceback
               for rec in r.dead_letters)


def test_a_dying_worker_is_replaced(transport_name: str) -> None:
    r = Pipeline(Extractor(range(200)) >> Transformer(procfns.crash_on_5, executor="process", workers=2,
                                                     on_error="dead_letter")
                 >> Loader.to_list(name="out"), batch_size=8).run(timeout=HANG)
    lost = [rec.item for rec in r.dead_letters]
    assert 5 in lost and "exited with code 3" in str(r.dead_letters[0].exception)
    assert sorted(r.results["out"] + lost) == list(range(200))


def test_a_function_the_worker_cannot_load_fails_at_start(transport_name: str) -> None:
    import types
    mod = types.ModuleType("reflux_transport_phantom")
    exec("def ghost(x):\n    return x\n", mod.__dict__)
    sys.modules["reflux_transport_phantom"] = mod
    try:
        p = Pipeline(Extractor(range(10)) >> Transformer(mod.ghost, executor="process", name="ghost")
                     >> Loader.to_list(name="out"))
        with pytest.raises(NodeError) as info:
            p.run(timeout=HANG)
    finally:
        del sys.modules["reflux_transport_phantom"]
    assert "could not load the function" in str(info.value.__cause__)
    assert "reflux_transport_phantom" in str(info.value.__cause__)


def test_abandon_terminates_the_workers(transport_name: str) -> None:
    logic, out = _open_logic(Transformer(procfns.sleepy, executor="process", workers=2))
    logic.process([0.5] * 4, out)
    pids = list(logic.pids)
    assert logic.abandon() == 4 - len(out.ports[0])
    logic.close()
    assert not [p for p in pids if alive(p)]
