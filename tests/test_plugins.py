"""Compiled plug-ins: the C ABI and its checks, the Cython base classes, the
Python layer (Transformer / Filter / Messenger given a plug-in) and the nogil
RecordPump, with real threads.

The plug-ins used here live in ``reflux_core._testplugins`` (built with the
core); ``tests/test_cython_example.py`` builds a user extension the way a user does.
"""
from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest
from support import needs_posix_signals, start, wait_until

import reflux_core
from reflux import Extractor, Filter, Loader, Messenger, NodeError, Pipeline, Transformer
from reflux.describe.plugins import PluginABIError, c_plugin, check_plugin, is_plugin
from reflux_core import _testplugins as P
from reflux_core import transform as T
from reflux_core.channel import RecordChannel
from reflux_core.transform import RecordError, RecordPump

REC = np.dtype(P.RECORD)


def records(n: int, start: int = 0) -> np.ndarray:
    a = np.zeros(n, REC)
    a["id"] = np.arange(start, start + n)
    a["x"] = (np.arange(start, start + n) % 97) * 1.5
    return a


def newton_ref(a: np.ndarray, rounds: int) -> np.ndarray:
    """What NewtonSqrt does, in numpy: drop x < 0, then `rounds` Newton steps."""
    a = a[a["x"] >= 0]
    y = a["x"] + 1.0
    for _ in range(rounds):
        y = 0.5 * (y + a["x"] / y)
    out = np.empty(len(a), REC)
    out["id"] = a["id"]
    out["x"] = y
    return out


def chunks_of(a: np.ndarray, size: int) -> list[np.ndarray]:
    return [a[i:i + size] for i in range(0, len(a), size)]


# --------------------------------------------------------------------------- the ABI, in C and Python

def test_abi_versions_agree():
    assert T.ABI_VERSION == reflux_core.ABI_VERSION
    header = os.path.join(reflux_core.get_include(), "reflux_core", "abi.h")
    with open(header, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"#define REFLUX_ABI_VERSION (\d+)", text)
    assert m and int(m.group(1)) == reflux_core.ABI_VERSION
    assert f'#define REFLUX_PLUGIN_CAPSULE "{T.CAPSULE_NAME}"' in text
    assert T.STRUCT_SIZE == 72 or T.STRUCT_SIZE > 0  # 72 on LP64


def test_public_pxd_has_no_inline_function_and_no_private_header():
    pkg = importlib.resources.files("reflux_core")
    for name in ("transform.pxd", "channel.pxd", "__init__.pxd"):
        text = (pkg / name).read_text(encoding="utf-8")
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        assert "inline" not in code, name
        for private in ("atomics.h", "rings.h", "park.h", "reflux_core._ring"):
            assert private not in code, (name, private)
        includes = re.findall(r'cdef extern from "([^"]+)"', code)
        assert set(includes) <= {"reflux_core/abi.h"}, (name, includes)
    text = (pkg / "transform.pxd").read_text(encoding="utf-8")
    for decl in ("cdef class CTransform", "cdef class CFilter", "cdef class CKey", "reflux_status",
                 "cdef extern from \"reflux_core/abi.h\"", "noexcept nogil", "cdef class RecordPump"):
        assert decl in text, decl
    assert "from reflux_core.transform cimport" in (pkg / "__init__.pxd").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
def test_abi_header_compiles_as_c_and_is_usable(tmp_path):
    """A C plug-in needs nothing but abi.h: fill the struct, check it at compile time."""
    src = tmp_path / "plug.c"
    src.write_text(
        '#include "reflux_core/abi.h"\n#include "reflux_core/abi.h"\n'
        "static int64_t neg(void *self, const void *src, int64_t n, void *dst, reflux_status *st)\n"
        "{ (void)self; (void)src; (void)dst; (void)st; return n; }\n"
        "static reflux_plugin plug = { REFLUX_ABI_VERSION, sizeof(reflux_plugin),\n"
        "  REFLUX_PLUGIN_TRANSFORM, 0, 16, 16, \"neg\", 0, neg, 0, 0 };\n"
        "int main(void) { return plug.abi_version == 1 ? 0 : 1; }\n")
    cc = os.environ.get("CC", "cc")
    proc = subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-pedantic", "-I", reflux_core.get_include(),
                           str(src), "-o", str(tmp_path / "plug")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run([str(tmp_path / "plug")], timeout=60).returncode == 0


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler")
def test_abi_header_compiles_as_cxx(tmp_path):
    src = tmp_path / "plug.cpp"
    src.write_text('#include "reflux_core/abi.h"\n'
                   "static_assert(REFLUX_ABI_VERSION >= 1, \"version\");\n"
                   "extern \"C\" int64_t k(void *, const void *, int64_t, int64_t *, reflux_status *) { return 0; }\n"
                   "int main() { reflux_plugin p{}; p.key = k; return p.key == nullptr; }\n")
    cxx = os.environ.get("CXX", "c++")
    proc = subprocess.run([cxx, "-std=c++11", "-fsyntax-only", "-Wall", "-Werror", "-I", reflux_core.get_include(),
                           str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_capsule_of_a_cython_plugin():
    p = P.NewtonSqrt(4)
    cap = p.__reflux_plugin__
    assert T.plugin_header(cap) == (T.ABI_VERSION, T.STRUCT_SIZE)
    info = T.plugin_info(cap)
    assert info["kind"] == T.KIND_TRANSFORM and info["has_function"]
    assert info["in_itemsize"] == info["out_itemsize"] == REC.itemsize
    assert info["name"] == "NewtonSqrt"
    # the capsule keeps the plug-in alive
    del p
    a = records(10)
    out = np.empty(10, REC)
    assert T.run_transform(cap, a, out)[0] == 10


def test_run_transform_matches_numpy_and_reports_drops_and_errors():
    a = records(1000)
    a["x"][::7] = -1.0  # dropped by the plug-in
    out = np.empty(len(a), REC)
    n, code, index = T.run_transform(P.NewtonSqrt(12).__reflux_plugin__, a, out)
    ref = newton_ref(a, 12)
    assert (code, index) == (0, len(a))
    assert n == len(ref) < len(a)
    np.testing.assert_array_equal(out[:n]["id"], ref["id"])
    np.testing.assert_allclose(out[:n]["x"], ref["x"], rtol=1e-12)
    a["x"][500] = np.nan
    n, code, index = T.run_transform(P.NewtonSqrt(12).__reflux_plugin__, a, out)
    assert (code, index) == (1, 500)
    assert n == len(newton_ref(a[:500], 12))


def test_run_filter_and_run_key():
    a = records(300)
    keep = np.empty(300, np.uint8)
    n, code, _ = T.run_filter(P.AtLeast(50.0).__reflux_plugin__, a, keep)
    assert code == 0 and n == int((a["x"] >= 50).sum())
    np.testing.assert_array_equal(keep.astype(bool), a["x"] >= 50)
    keys = np.empty(300, np.int64)
    _, code, _ = T.run_key(P.IdModulo(4).__reflux_plugin__, a, keys)
    assert code == 0
    np.testing.assert_array_equal(keys, a["id"] % 4)
    a["id"][3] = -5
    assert T.run_key(P.IdModulo(4).__reflux_plugin__, a, keys)[1:] == (3, 3)


def test_run_helpers_refuse_wrong_buffers():
    cap = P.NewtonSqrt().__reflux_plugin__
    with pytest.raises(ValueError, match="whole number"):
        T.run_transform(cap, np.zeros(17, np.uint8), np.empty(2, REC))
    with pytest.raises(ValueError, match="room"):
        T.run_transform(cap, records(4), np.empty(2, REC))
    with pytest.raises(TypeError, match="not a filter"):
        T.run_filter(cap, records(4), np.empty(4, np.uint8))
    with pytest.raises(TypeError, match="PyCapsule named"):
        T.run_transform(object(), records(1), np.empty(1, REC))


def test_the_c_lane_without_cython():
    cap = P.c_negate_plugin()
    a = records(20)
    out = np.empty(20, REC)
    assert T.run_transform(cap, a, out) == (20, 0, 20)
    np.testing.assert_array_equal(out["x"], -a["x"])
    handle = c_plugin(cap, REC, name="negate", keepalive=P)
    assert is_plugin(handle)
    sink = Loader.to_list()
    result = Pipeline(Extractor(chunks_of(a, 8)) >> Transformer(handle) >> sink).run()
    assert result.status == "completed"
    assert Transformer(handle).name == "negate"
    np.testing.assert_array_equal(np.concatenate(result.results[sink.name])["x"], -a["x"])


# --------------------------------------------------------------------------- refusals, naming the node

@pytest.mark.parametrize("version,size,what", [(2, None, "ABI version 2"), (1, 64, "64 bytes"),
                                               (0, 0, "ABI version 0")])
def test_a_mismatched_plugin_is_refused_naming_the_node(version, size, what):
    cap = P.fake_plugin(version, T.STRUCT_SIZE if size is None else size)
    handle = c_plugin(cap, REC)
    with pytest.raises(PluginABIError, match=f"Transformer 'hot'.*{what}.*rebuild") as info:
        Transformer(handle, name="hot")
    assert f"ABI version {T.ABI_VERSION}" in str(info.value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(PluginABIError, match="Filter 'f'"):
        Filter(handle, name="f")
    with pytest.raises(TypeError, match="ABI"):  # the core guards direct use too
        T.run_transform(cap, records(1), np.empty(1, REC))
    with pytest.raises(TypeError, match="ABI"):
        RecordPump(RecordChannel(REC, 8), handle, RecordChannel(REC, 8))


def test_wrong_kind_wrong_dtype_and_not_a_capsule_are_refused():
    with pytest.raises(PluginABIError, match=r"Filter 'f': needs a filter plug-in \(CFilter\), got a transform"):
        Filter(P.NewtonSqrt(), name="f")
    with pytest.raises(PluginABIError, match="Messenger 'm': needs a key plug-in"):
        Messenger(P.AtLeast(1.0), name="m")
    with pytest.raises(PluginABIError, match="Transformer 't': needs a transform"):
        Transformer(P.IdModulo(2), name="t")
    with pytest.raises(PluginABIError, match="Transformer 't'.*16-byte records.*int32"):
        Transformer(c_plugin(P.c_negate_plugin(), np.int32), name="t")

    class NotACapsule:
        __reflux_plugin__ = "nope"

    with pytest.raises(PluginABIError, match="Transformer 't'.*PyCapsule named 'reflux_core.plugin'"):
        Transformer(NotACapsule(), name="t")

    class NoDtype:
        __reflux_plugin__ = P.c_negate_plugin()

    with pytest.raises(PluginABIError, match="Transformer 't'.*in_dtype"):
        Transformer(NoDtype(), name="t")
    with pytest.raises(PluginABIError, match="Transformer 't'.*not initialised"):
        Transformer(T.CTransform.__new__(T.CTransform), name="t")
    with pytest.raises(Exception, match="flat=True"):
        Transformer(P.NewtonSqrt(), flat=True)


def test_check_plugin_returns_what_the_logic_needs():
    p = check_plugin(P.NewtonSqrt(), "Transformer 'x'", "transform")
    assert p.kind == "transform" and p.in_dtype == REC == p.out_dtype and p.name == "NewtonSqrt"
    assert not is_plugin(P.NewtonSqrt) and not is_plugin(len)


def test_base_classes_refuse_odd_dtypes():
    with pytest.raises(TypeError, match="Python objects"):
        T.CTransform(object)
    with pytest.raises(TypeError, match="only a CTransform"):
        T.CFilter(REC, np.int64)


# --------------------------------------------------------------------------- in a pipeline

def test_transformer_filter_messenger_with_plugins_match_numpy():
    a = records(5000)
    a["x"][::11] = -2.0
    even, odd = Loader.to_list(name="even"), Loader.to_list(name="odd")
    route = Messenger(P.IdModulo(2), routes={0: even, 1: odd}, name="route")
    pipe = Pipeline(Extractor(chunks_of(a, 512)) >> Transformer(P.NewtonSqrt(20), name="sqrt")
                    >> Filter(P.AtLeast(5.0), name="big") >> route >> [even, odd])
    result = pipe.run()
    assert result.status == "completed", result
    ref = newton_ref(a, 20)
    ref = ref[ref["x"] >= 5.0]
    for sink, parity in ((even, 0), (odd, 1)):
        got = np.concatenate(result.results[sink.name])
        want = ref[ref["id"] % 2 == parity]
        np.testing.assert_array_equal(got["id"], want["id"])  # order kept within a route
        np.testing.assert_allclose(got["x"], want["x"], rtol=1e-12)
    st = result.nodes
    assert st["sqrt"].received == st["sqrt"].emitted == 10
    assert st["sqrt"].imbalance() == 0 and st["big"].imbalance() == 0


def test_all_dropped_chunk_counts_as_filtered_and_is_not_sent():
    a = records(30)
    neg = a.copy()
    neg["x"] = -1.0
    sink = Loader.to_list()
    # chunk counting: without record edges (tests/test_record_edges.py counts records between plug-ins)
    result = Pipeline(Extractor([a[:10], neg[:10], a[10:]]) >> Transformer(P.NewtonSqrt(), name="t")
                      >> Filter(P.AtLeast(1e9), name="none") >> sink, record_edges=False).run()
    assert result.status == "completed"
    assert result.nodes["t"].filtered == 1 and result.nodes["t"].emitted == 2
    assert result.nodes["none"].filtered == 2 and result.nodes["none"].emitted == 0
    assert result.results[sink.name] == []


def test_single_records_work_as_items():
    a = records(5)
    sink = Loader.to_list()
    result = Pipeline(Extractor(list(a)) >> Transformer(P.NewtonSqrt(30)) >> sink).run()
    got = result.results[sink.name]
    assert len(got) == 5 and all(isinstance(r, np.void) for r in got)
    np.testing.assert_allclose([r["x"] for r in got], np.sqrt(a["x"]), rtol=1e-9, atol=1e-6)


def test_a_failing_record_fails_its_chunk_under_the_policy():
    a = records(40)
    a["x"][25] = np.nan
    sink, dead = Loader.to_list(), Loader.to_list(name="dead")
    pipe = Pipeline(Extractor(chunks_of(a, 10)) >> Transformer(P.NewtonSqrt(), name="t", on_error="dead_letter",
                                                                dead_letter=dead) >> sink)
    pipe.add(dead)
    result = pipe.run()
    assert result.status == "completed"
    assert result.nodes["t"].errors == 1 and result.nodes["t"].emitted == 3
    (record,) = result.results["dead"]
    exc = record.exception
    assert isinstance(exc, RecordError)
    assert (exc.code, exc.index, exc.node) == (1, 5, "Transformer 't'")
    assert "Transformer 't'" in str(exc) and "error code 1" in str(exc)
    assert record.item.tobytes() == a[20:30].tobytes()  # the whole chunk is the failed item

    with pytest.raises(NodeError, match="'t'") as info:
        Pipeline(Extractor(chunks_of(a, 10)) >> Transformer(P.NewtonSqrt(), name="t")
                 >> Loader.to_list()).run()
    assert "error code 1" in str(info.value) or "error code 1" in repr(info.value.result.errors)


def test_base_class_not_overridden_fails_with_not_implemented():
    sink = Loader.to_list()
    result = Pipeline(Extractor([records(3)]) >> Transformer(T.CTransform(REC), name="base", on_error="log")
                      >> sink).run()
    assert result.nodes["base"].errors == 1
    assert result.errors[0].exception.code == T.ERR_NOT_IMPLEMENTED


def test_messenger_plugin_unknown_key_and_wrong_dtype():
    a = records(9)
    zero = Loader.to_list(name="zero")
    pipe = Pipeline(Extractor([a, np.arange(3)]) >> Messenger(P.IdModulo(3), routes={0: zero}, name="m",
                                                             on_error="log") >> zero)
    result = pipe.run()
    assert result.status == "completed"
    np.testing.assert_array_equal(np.concatenate(result.results["zero"])["id"], [0, 3, 6])
    kinds = sorted(type(r.exception).__name__ for r in result.errors)
    # keys 1 and 2 have no route; the int array is not a chunk of records
    assert kinds == ["RoutingError", "RoutingError", "TypeError"]
    assert all("Messenger 'm'" in str(r.exception) for r in result.errors)


# --------------------------------------------------------------------------- the nogil pump

def test_pump_moves_records_between_threads_and_closes_its_output():
    total, rounds = 20000, 6
    a = records(total)
    a["x"][::13] = -1.0
    src, dst = RecordChannel(REC, 256), RecordChannel(REC, 256)
    pump = RecordPump(src, P.NewtonSqrt(rounds), dst, batch_size=64)
    got: list[np.ndarray] = []

    def produce():
        for c in chunks_of(a, 1000):
            src.push(c)
        src.close()

    def consume():
        for arr in dst:
            got.append(arr)

    threads = [start(produce, name="producer"), start(pump.run, name="pump"), start(consume, name="consumer")]
    for t in threads:
        t.finish(on_hang=lambda: (src.close(), dst.close(), pump.stop()))
        assert t.error is None, t.error
    assert threads[1].result == "end"
    ref = newton_ref(a, rounds)
    out = np.concatenate(got)
    np.testing.assert_array_equal(out["id"], ref["id"])
    np.testing.assert_allclose(out["x"], ref["x"], rtol=1e-12)
    assert (pump.received, pump.emitted, pump.filtered, pump.errors, pump.dropped) == (
        total, len(ref), total - len(ref), 0, 0)


def test_pump_filter_and_key_routing():
    a = records(3000)
    src, dst = RecordChannel(REC, 4096), RecordChannel(REC, 4096)
    src.push(a)
    src.close()
    pump = RecordPump(src, P.AtLeast(70.0), dst, batch_size=100)
    assert pump.run() == "end"
    np.testing.assert_array_equal(dst.pop(4096), a[a["x"] >= 70.0])
    assert pump.filtered == int((a["x"] < 70).sum())

    src = RecordChannel(REC, 4096)
    outs = [RecordChannel(REC, 4096) for _ in range(3)]
    src.push(a)
    src.close()
    pump = RecordPump(src, P.IdModulo(3), outs, batch_size=128)
    assert pump.run() == "end"
    for k, ch in enumerate(outs):
        np.testing.assert_array_equal(ch.pop(4096), a[a["id"] % 3 == k])
        assert ch.closed
    assert pump.emitted == 3000


def test_pump_errors_raise_skip_or_call_back():
    a = records(100)
    a["x"][[10, 60]] = np.nan
    def fresh():
        src, dst = RecordChannel(REC, 128), RecordChannel(REC, 128)
        src.push(a)
        src.close()
        return src, dst

    src, dst = fresh()
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=32)
    with pytest.raises(RecordError, match="node 'p'.*error code 1") as info:
        pump.run(name="node 'p'")
    assert info.value.code == 1 and np.frombuffer(info.value.record, REC)["id"][0] == 10
    with pytest.raises(RecordError):  # run again: it goes on after the failing record
        pump.run()
    assert pump.run() == "end"
    assert (pump.received, pump.emitted, pump.errors) == (100, 98, 2)

    src, dst = fresh()
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=32)
    assert pump.run(on_error="skip") == "end" and pump.errors == 2 and pump.emitted == 98

    src, dst = fresh()
    seen = []
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=32)
    assert pump.run(on_error=lambda rec, code: seen.append((np.frombuffer(rec, REC)["id"][0], code))) == "end"
    assert seen == [(10, 1), (60, 1)]

    src = RecordChannel(REC, 128)
    src.push(a[:5])
    src.close()
    outs = [RecordChannel(REC, 128) for _ in range(2)]
    pump = RecordPump(src, P.IdModulo(3), outs)  # key 2 has no output
    assert pump.run(on_error="skip") == "end"
    assert pump.errors == 1 and pump.error_code == T.ERR_ROUTE and pump.emitted == 4


def test_pump_stop_from_another_thread_and_closed_output_account_for_every_record():
    # stopped while waiting for input
    src, dst = RecordChannel(REC, 64), RecordChannel(REC, 64)
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=16, slice=0.01)
    src.push(records(40))
    w = start(pump.run, name="pump")
    wait_until(lambda: pump.emitted == 40, "the pump to move the records")
    time.sleep(0.05)  # several wait slices: it keeps waiting for more input
    assert w.is_alive()
    pump.stop()
    w.finish(on_hang=lambda: (src.close(), dst.close()))
    assert w.result == "stopped"
    assert (pump.received, pump.emitted, pump.dropped) == (40, 40, 0)
    assert not dst.closed  # a stop is not an end of stream

    # stopped while waiting for room: the batch it holds is dropped, and counted
    src, dst = RecordChannel(REC, 64), RecordChannel(REC, 16)
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=16, slice=0.01)
    src.push(records(64))
    w = start(pump.run, name="pump")
    wait_until(lambda: pump.received == 32 and pump.emitted == 16, "the output to fill")
    time.sleep(0.05)
    assert w.is_alive()
    pump.stop()
    w.finish(on_hang=lambda: (src.close(), dst.close()))
    assert w.result == "stopped"
    assert (pump.received, pump.emitted, pump.dropped) == (32, 16, 16)

    src, dst = RecordChannel(REC, 256), RecordChannel(REC, 16)
    src.push(records(200))
    src.close()
    pump = RecordPump(src, P.NewtonSqrt(), dst, batch_size=50, slice=0.01)
    w = start(pump.run, name="pump")
    wait_until(lambda: len(dst) == 16, "the output to fill")
    dst.close()  # the consumer goes away
    w.finish()
    assert w.result == "closed"
    assert pump.emitted == 16
    assert pump.received == pump.emitted + pump.dropped and pump.dropped > 0


def test_pump_refuses_bad_setups():
    src = RecordChannel(REC, 8)
    with pytest.raises(TypeError, match="not a reflux plug-in"):
        RecordPump(src, len, RecordChannel(REC, 8))
    with pytest.raises(TypeError, match="src holds 8-byte"):
        RecordPump(RecordChannel(np.int64, 8), P.NewtonSqrt(), RecordChannel(REC, 8))
    with pytest.raises(TypeError, match="output holds 8-byte"):
        RecordPump(src, P.NewtonSqrt(), RecordChannel(np.int64, 8))
    with pytest.raises(ValueError, match="only a key plug-in"):
        RecordPump(src, P.NewtonSqrt(), [RecordChannel(REC, 8), RecordChannel(REC, 8)])
    with pytest.raises(ValueError, match="batch_size"):
        RecordPump(src, P.NewtonSqrt(), RecordChannel(REC, 8), batch_size=0)


# --------------------------------------------------------------------------- GIL freedom

class GilHold:
    """Hold the GIL in the calling thread for ``seconds`` of pure Python
    (no call that releases it); a Python watcher thread proves the hold is real."""

    def __init__(self) -> None:
        self.ticks = 0
        self._stop = False
        self.watcher = threading.Thread(target=self._watch, name="gil-watcher", daemon=True)

    def _watch(self) -> None:
        while not self._stop:
            self.ticks += 1
            time.sleep(0.001)

    def __enter__(self) -> GilHold:
        self.old = sys.getswitchinterval()
        self.watcher.start()
        wait_until(lambda: self.ticks > 3, "the watcher to run")
        return self

    def hold(self, seconds: float, probe) -> tuple[int, int, int]:
        """Spin ``seconds`` holding the GIL; return (probe before, probe after, watcher ticks during)."""
        sys.setswitchinterval(1000.0)  # nobody can take the GIL from this thread now...
        # ...once a thread that began waiting for it under the old interval
        # (it would still ask for it after ~5 ms) has had its turn
        time.sleep(0.02)
        try:
            t0 = time.perf_counter()
            before, ticks0 = probe(), self.ticks
            x = 0
            while time.perf_counter() - t0 < seconds:
                x += 1  # pure Python: the GIL is never released here
            after, ticks1 = probe(), self.ticks
        finally:
            sys.setswitchinterval(self.old)
        return before, after, ticks1 - ticks0

    def __exit__(self, *exc) -> None:
        sys.setswitchinterval(self.old)
        self._stop = True
        self.watcher.join(10)


def test_pump_runs_while_the_main_thread_holds_the_gil():
    """The whole pump (pop, plug-in, push, across many batches) needs no GIL:
    it keeps moving records while this thread never lets the GIL go.  A
    thread that needed the GIL could not move at all, so this cannot pass by
    accident however loaded the machine is."""
    src, dst = RecordChannel(REC, 1 << 16), RecordChannel(REC, 1 << 16)
    plugin = P.Progress(rounds=200)
    src.push(records(1 << 16))
    src.close()
    pump = RecordPump(src, plugin, dst, batch_size=32)
    with GilHold() as g:
        w = start(pump.run, name="pump")
        wait_until(lambda: plugin.progress() > 0, "the pump to start")
        (p0, r0), (p1, r1), ticks = g.hold(0.5, lambda: (plugin.progress(), pump.received))
        w.finish(on_hang=pump.stop)
    assert ticks == 0, "the GIL hold was not real: a Python thread ran during it"
    assert p1 > p0, "the plug-in made no progress while the GIL was held elsewhere"
    if p0 < (1 << 16) - 64:
        assert r1 > r0 or p1 - p0 < 64, "the pump took no new batch while the GIL was held"
    assert w.result == "end" and pump.emitted == 1 << 16


def test_transformer_plugin_runs_while_the_main_thread_holds_the_gil():
    """A Transformer given a plug-in releases the GIL around each chunk."""
    plugin = P.Progress(rounds=2000)
    n = 200_000  # one chunk: seconds of work, a fraction of it is enough
    sink = Loader.to_list()
    pipe = Pipeline(Extractor([records(n)]) >> Transformer(plugin, name="heavy") >> sink)
    with GilHold() as g:
        pipe.start()
        try:
            wait_until(lambda: plugin.progress() > 0, "the plug-in to start")
            (p0, _), (p1, _), ticks = g.hold(0.3, lambda: (plugin.progress(), 0))
        finally:
            result = pipe.join(timeout=120)
    assert ticks == 0, "the GIL hold was not real: a Python thread ran during it"
    if p0 < n:
        assert p1 > p0, "the Transformer's plug-in made no progress while the GIL was held elsewhere"
    assert result.status == "completed" and plugin.progress() == n


@needs_posix_signals
def test_ctrl_c_reaches_a_pump_run_from_the_main_thread(tmp_path):
    """run() takes the GIL about once per slice to run signal handlers, so
    Ctrl-C interrupts a pump waiting on an input that never ends."""
    code = r"""
import os, signal, threading, time
import numpy as np
from reflux_core import _testplugins as P
from reflux_core.channel import RecordChannel
from reflux_core.transform import RecordPump
signal.signal(signal.SIGINT, signal.default_int_handler)
src, dst = RecordChannel(P.RECORD, 64), RecordChannel(P.RECORD, 64)
pump = RecordPump(src, P.NewtonSqrt(), dst, slice=0.02)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
t0 = time.monotonic()
try:
    pump.run()
except KeyboardInterrupt:
    print("INTERRUPTED", round(time.monotonic() - t0, 2))
"""
    # cwd: not the checkout, whose uncompiled reflux_core/ would shadow the installed one
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    assert "INTERRUPTED" in proc.stdout


def test_two_plugin_nodes_joined_by_a_record_channel_run_without_the_gil():
    """The record edge a runtime builds between two plug-in nodes (pump_for):
    records flow source -> Transformer -> Filter -> sink through record
    channels while this thread holds the GIL without a break."""
    from reflux.describe.plugins import record_dtypes
    from reflux.logic.plugins import pump_for

    t, f = Transformer(P.NewtonSqrt(40), name="t"), Filter(P.AtLeast(3.0), name="f")
    assert record_dtypes(t) == (REC, REC) and record_dtypes(f) == (REC, REC)
    assert record_dtypes(Transformer(abs)) is None
    n = 1 << 17
    a = records(n)
    src, mid, dst = (RecordChannel(REC, 1 << 17) for _ in range(3))
    src.push(a)
    src.close()
    p1, p2 = pump_for(t, src, [mid], batch_size=64), pump_for(f, mid, [dst], batch_size=64)
    with GilHold() as g:
        w1, w2 = start(p1.run, name="pump-t"), start(p2.run, name="pump-f")
        wait_until(lambda: p2.received > 0, "records to reach the second node")
        (e1, r2), (e1b, r2b), ticks = g.hold(0.5, lambda: (p1.emitted, p2.received))
        for w in (w1, w2):
            w.finish(on_hang=lambda: (p1.stop(), p2.stop()))
    assert ticks == 0, "the GIL hold was not real"
    if e1 < n:
        assert e1b > e1, "the first node made no progress while the GIL was held"
    if r2 < n:
        assert r2b > r2, "no record crossed the record edge while the GIL was held"
    ref = newton_ref(a, 40)
    np.testing.assert_array_equal(dst.pop(n)["id"], ref[ref["x"] >= 3.0]["id"])


def test_pump_for_a_messenger_routes_by_port():
    from reflux.logic.plugins import pump_for

    zero, one = Loader.to_list(name="zero"), Loader.to_list(name="one")
    m = Messenger(P.IdModulo(3), routes={0: zero, 1: one}, default=one, name="m")
    task = Pipeline(Extractor([]) >> m >> [zero, one]).compile().task("m")  # the Messenger's port table
    outs = [RecordChannel(REC, 64) for _ in range(2)]
    src = RecordChannel(REC, 64)
    src.push(records(9))
    src.close()
    with pytest.raises(Exception, match="Messenger 'm': a record pump for a Messenger needs ports="):
        pump_for(m, src, outs)
    pump = pump_for(m, src, outs, ports=task.ports, default_port=task.default_port)
    assert pump.run() == "end"
    assert task.ports is not None
    zero_port = task.ports[0]
    np.testing.assert_array_equal(outs[zero_port].pop(64)["id"], [0, 3, 6])
    np.testing.assert_array_equal(outs[1 - zero_port].pop(64)["id"], [1, 2, 4, 5, 7, 8])
    with pytest.raises(Exception, match="Transformer 'plain': not made with a compiled plug-in"):
        pump_for(Transformer(abs, name="plain"), src, outs[:1])


def test_pump_runs_in_one_thread_at_a_time():
    src, dst = RecordChannel(REC, 64), RecordChannel(REC, 64)
    pump = RecordPump(src, P.NewtonSqrt(), dst, slice=0.01)
    src.push(records(1))
    w = start(pump.run, name="pump")
    wait_until(lambda: pump.received == 1, "the pump thread to be inside run()")
    with pytest.raises(RuntimeError, match="already running"):
        pump.run()
    src.close()
    w.finish()
    assert w.result == "end"


def test_plain_python_nodes_do_not_load_the_plugin_layer():
    """A pipeline of Python functions never imports the plug-in modules (nor numpy): no start-up cost."""
    code = ("import sys\nfrom reflux import Filter, Messenger, Transformer\n"
            "Transformer(abs); Filter(bool); Messenger(len)\n"
            "assert not {'reflux.describe.plugins', 'reflux.logic.plugins', 'numpy'} & set(sys.modules), "
            "sorted(sys.modules)\n")
    # cwd: not the checkout, whose uncompiled reflux_core/ would shadow the installed one
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("ordered", [False, True])
def test_plugin_replicas_on_the_pool(ordered):
    """parallel=N replicas share one plug-in object (its method must be reentrant)."""
    a = records(20000)
    chunks = chunks_of(a, 500)
    sink = Loader.to_list()
    # one output chunk per input chunk: without record edges (see tests/test_record_edges.py)
    result = Pipeline(Extractor(chunks) >> Transformer(P.NewtonSqrt(16), name="t", parallel=2, ordered=ordered)
                      >> Filter(P.AtLeast(2.0), name="f") >> sink, record_edges=False).run()
    assert result.status == "completed"
    got = result.results[sink.name]
    assert len(got) == len(chunks)
    ref = newton_ref(a, 16)
    ref = ref[ref["x"] >= 2.0]
    out = np.concatenate(got)
    if not ordered:
        out = np.sort(out, order="id")
    np.testing.assert_array_equal(out["id"], ref["id"])
    np.testing.assert_allclose(out["x"], ref["x"], rtol=1e-12)


def test_plugin_nodes_take_one_chunk_per_batch_by_default():
    assert Transformer(P.NewtonSqrt()).batch_size == 1
    assert Filter(P.AtLeast(1.0)).batch_size == 1
    assert Messenger(P.IdModulo(2)).batch_size == 1
    assert Transformer(P.NewtonSqrt(), batch_size=8).batch_size == 8
    assert Transformer(abs).batch_size is None
