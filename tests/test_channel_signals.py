"""Blocking behaviour seen from outside: Ctrl-C, wake-up on push, CPU use while parked.

Latencies are measured and printed (run with -s to see them), never asserted
tightly: the machine is shared and noisy.  Only generous bounds (seconds) are
asserted, as hang guards.
"""
from __future__ import annotations

import select
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from reflux_core.channel import (
    ChannelClosed,
    Empty,
    Full,
    MPMCChannel,
    RecordChannel,
    SPSCChannel,
)

from support import free_threaded  # noqa: E402

try:
    import resource
except ImportError:  # not POSIX
    resource = None

WATCHDOG = 30.0
EXIT_BOUND = 10.0  # seconds for a child to react to SIGINT: generous (the goal is ~100 ms)
CPU_BOUND = 0.2  # CPU seconds a thread may use while parked for ~1 s

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# ---------------------------------------------------------------- Ctrl-C in a child process

_CHILD = """
import faulthandler, signal, sys, threading, time
faulthandler.dump_traceback_later(60, exit=True)   # never outlive the test
# a background process starts with SIGINT ignored: restore Python's handler
signal.signal(signal.SIGINT, signal.default_int_handler)
import numpy as np
from reflux_core.channel import SPSCChannel, MPMCChannel, RecordChannel

{setup}

def announce():
    # the blocked call counts its wait before parking; give it time to park
    while getattr(ch.stats, "{waits}") < 1:
        time.sleep(0.001)
    time.sleep(0.1)
    print("READY", flush=True)

threading.Thread(target=announce, daemon=True).start()
try:
    {call}
except KeyboardInterrupt:
    print("INTERRUPTED", repr(time.monotonic()), flush=True)
    sys.exit(0)
except BaseException as exc:
    print("OTHER", type(exc).__name__, flush=True)
    sys.exit(3)
print("RETURNED", flush=True)
sys.exit(4)
"""

_CTRL_C_CASES = {
    # name: (setup, call, waits)
    "spsc-pop": ("ch = SPSCChannel(4)", "ch.pop()", "empty_waits"),
    "mpmc-pop": ("ch = MPMCChannel(4)", "ch.pop()", "empty_waits"),
    "spsc-pop-timeout": ("ch = SPSCChannel(4)", "ch.pop(timeout=120)", "empty_waits"),
    "spsc-pop_many": ("ch = SPSCChannel(4)", "ch.pop_many(8)", "empty_waits"),
    "mpmc-pop_many": ("ch = MPMCChannel(4)", "ch.pop_many(8)", "empty_waits"),
    "mpmc-iterate": ("ch = MPMCChannel(4)", "list(ch)", "empty_waits"),
    "spsc-push-full": ("ch = SPSCChannel(1); ch.push(0)", "ch.push(1)", "full_waits"),
    "mpmc-push-full": ("ch = MPMCChannel(2); ch.push_many([0, 1])", "ch.push(2)", "full_waits"),
    "spsc-push_many-full": ("ch = SPSCChannel(2)", "ch.push_many(list(range(10)))",
                            "full_waits"),
    "mpmc-push-timeout": ("ch = MPMCChannel(2); ch.push_many([0, 1])",
                          "ch.push(2, timeout=120)", "full_waits"),
    "record-push-full": ("ch = RecordChannel('<u8', 2); ch.push(np.arange(2, dtype='<u8'))",
                         "ch.push(np.arange(3, dtype='<u8'))", "full_waits"),
}
_RECORD_POP_CASES = {
    "record-pop": ("ch = RecordChannel('<u8', 4)", "ch.pop()", "empty_waits"),
    "record-iterate": ("ch = RecordChannel('<u8', 4, mode='mpmc')", "list(ch)", "empty_waits"),
}


def _read_line(proc, timeout):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        return None
    return proc.stdout.readline()


def interrupt_child(code, record_property=None):
    """Start the child, wait until it is parked, send SIGINT; returns (stdout, stderr,
    returncode, latency or None)."""
    proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        line = _read_line(proc, WATCHDOG)
        if line is None or line.strip() != "READY":
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"child never blocked: {line!r} {out!r} {err[-2000:]!r}")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=EXIT_BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"child still blocked {EXIT_BOUND} s after SIGINT: {err[-2000:]!r}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    latency = None
    if out.startswith("INTERRUPTED"):
        latency = float(out.split()[1]) - sent  # both CLOCK_MONOTONIC
        print(f"KeyboardInterrupt {latency * 1000:.1f} ms after SIGINT")
        if record_property is not None:
            record_property("ctrl_c_latency_s", latency)
    return out, err, proc.returncode, latency


def _check_interrupted(out, err, returncode, latency):
    assert out.startswith("INTERRUPTED"), (out, err[-2000:])
    assert "Exception ignored" not in err, err[-2000:]
    assert returncode == 0
    assert latency is not None and latency < EXIT_BOUND


@pytest.mark.parametrize("case", list(_CTRL_C_CASES))
def test_ctrl_c_interrupts_a_blocked_call(case, record_property):
    setup, call, waits = _CTRL_C_CASES[case]
    code = _CHILD.format(setup=setup, call=call, waits=waits)
    _check_interrupted(*interrupt_child(code, record_property))


@pytest.mark.parametrize("case", list(_RECORD_POP_CASES))
def test_ctrl_c_interrupts_a_blocked_record_pop(case, record_property):
    setup, call, waits = _RECORD_POP_CASES[case]
    code = _CHILD.format(setup=setup, call=call, waits=waits)
    _check_interrupted(*interrupt_child(code, record_property))


def test_ctrl_c_harness_with_a_stdlib_queue(record_property):
    # control: the same harness around queue.Queue.get(), to show the child
    # set-up really delivers KeyboardInterrupt to a blocked call
    code = textwrap.dedent("""
        import signal, sys, time, queue
        signal.signal(signal.SIGINT, signal.default_int_handler)
        q = queue.Queue()
        print("READY", flush=True)
        try:
            q.get()
        except KeyboardInterrupt:
            print("INTERRUPTED", repr(time.monotonic()), flush=True)
            sys.exit(0)
        sys.exit(4)
    """)
    proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert (_read_line(proc, WATCHDOG) or "").strip() == "READY"
        time.sleep(0.3)  # no stats to poll here: let it block in get()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=EXIT_BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.startswith("INTERRUPTED"), (out, err)
    assert proc.returncode == 0
    print(f"queue.Queue.get: KeyboardInterrupt {(float(out.split()[1]) - sent) * 1000:.1f} ms "
          "after SIGINT")


# ---------------------------------------------------------------- wake-up of a parked thread


@pytest.mark.parametrize("kind", ["SPSCChannel", "MPMCChannel", "RecordChannel"])
def test_parked_consumer_wakes_on_push(kind):
    rounds = 10
    if kind == "RecordChannel":
        ch = RecordChannel("<u8", 4)

        def pop():
            return int(ch.pop(1)[0])

        def push(i):
            ch.push(np.array([i], dtype="<u8"))
    else:
        ch = {"SPSCChannel": SPSCChannel, "MPMCChannel": MPMCChannel}[kind](4)
        pop, push = ch.pop, ch.push
    woke = []
    got = []

    def consumer():
        for _ in range(rounds):
            got.append(pop())
            woke.append(time.monotonic())

    t = threading.Thread(target=consumer, daemon=True)
    t.start()
    pushed = []
    try:
        for i in range(rounds):
            deadline = time.monotonic() + WATCHDOG
            while ch.stats.empty_waits < i + 1:  # the consumer is blocked again
                assert time.monotonic() < deadline, "consumer never blocked"
                time.sleep(0.001)
            time.sleep(0.02)  # ... and parked
            pushed.append(time.monotonic())
            push(i)
            deadline = time.monotonic() + WATCHDOG
            while len(woke) < i + 1:
                assert time.monotonic() < deadline, f"parked consumer not woken by push {i}"
                time.sleep(0.0005)
    finally:
        ch.close()
        t.join(WATCHDOG)
    assert not t.is_alive()
    assert got == list(range(rounds))
    lat = [w - p for w, p in zip(woke, pushed)]
    print(f"{kind}: wake-up after push: median {statistics.median(lat) * 1e6:.0f} us, "
          f"max {max(lat) * 1e6:.0f} us")
    assert max(lat) < 5.0  # generous: a lost wake-up would show as ~seconds or a hang


# ---------------------------------------------------------------- CPU use while parked


def _cpu_while_blocked(fn):
    """Run fn in a new thread; return (cpu seconds of that thread, wall seconds)."""
    result = {}

    def body():
        c0, w0 = time.thread_time(), time.monotonic()
        try:
            fn()
        except (Empty, Full):
            pass
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc
        result["cpu"] = time.thread_time() - c0
        result["wall"] = time.monotonic() - w0

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(WATCHDOG)
    assert not t.is_alive(), "the parked call never returned"
    assert "error" not in result, result.get("error")
    return result["cpu"], result["wall"]


@pytest.mark.parametrize("what", ["spsc-pop", "mpmc-pop", "spsc-push", "mpmc-pop_many",
                                  "record-pop", "record-push"])
def test_parked_thread_uses_little_cpu(what):
    if what == "spsc-pop":
        ch = SPSCChannel(4)
        fn = lambda: ch.pop(timeout=1.0)  # noqa: E731
    elif what == "mpmc-pop":
        ch = MPMCChannel(4)
        fn = lambda: ch.pop(timeout=1.0)  # noqa: E731
    elif what == "spsc-push":
        ch = SPSCChannel(1)
        ch.push(0)
        fn = lambda: ch.push(1, timeout=1.0)  # noqa: E731
    elif what == "mpmc-pop_many":
        ch = MPMCChannel(4)
        fn = lambda: ch.pop_many(4, timeout=1.0)  # noqa: E731
    elif what == "record-pop":
        ch = RecordChannel("<u8", 4)
        fn = lambda: ch.pop(timeout=1.0)  # noqa: E731
    else:
        ch = RecordChannel("<u8", 1)
        ch.push(np.array([0], dtype="<u8"))
        fn = lambda: ch.push(np.array([1], dtype="<u8"), timeout=1.0)  # noqa: E731
    cpu, wall = _cpu_while_blocked(fn)
    print(f"{what}: parked {wall:.2f} s using {cpu * 1000:.1f} ms CPU")
    assert wall >= 1.0 - 0.002  # it really waited the whole timeout
    assert cpu < CPU_BOUND


def test_thread_parked_without_timeout_uses_little_cpu_until_closed():
    ch = SPSCChannel(4)

    def fn():
        with pytest.raises(ChannelClosed):
            ch.pop()

    result = {}
    t = threading.Thread(target=lambda: result.update(zip(("cpu", "wall"),
                                                          _cpu_while_blocked(fn))),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + WATCHDOG
    while ch.stats.empty_waits < 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(1.0)
    ch.close()
    t.join(WATCHDOG)
    assert not t.is_alive()
    print(f"pop() parked {result['wall']:.2f} s using {result['cpu'] * 1000:.1f} ms CPU")
    assert result["wall"] >= 0.9 and result["cpu"] < CPU_BOUND


@pytest.mark.skipif(not hasattr(resource, "RUSAGE_THREAD"), reason="needs RUSAGE_THREAD")
def test_parked_main_thread_uses_little_cpu_rusage():
    # the main thread also runs the signal checks between park slices
    assert threading.current_thread() is threading.main_thread()
    ch = MPMCChannel(4)
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    w0 = time.monotonic()
    with pytest.raises(Empty):
        ch.pop(timeout=1.0)
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    wall = time.monotonic() - w0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"main thread parked {wall:.2f} s using {cpu * 1000:.1f} ms CPU "
          f"({r1.ru_nvcsw - r0.ru_nvcsw} voluntary context switches)")
    assert wall >= 1.0 - 0.002
    assert cpu < CPU_BOUND


def test_wait_policy_defaults_and_validation():
    from reflux_core.channel import _usable_cpus, set_wait_policy

    old = set_wait_policy()
    try:
        if _usable_cpus() >= 2:
            # free-threaded builds: Python waiters spin as nogil ones do
            assert old == ((50000 if free_threaded() else 5000), 50000)
        else:
            assert old == (0, 0)  # one CPU: nothing spins
        assert set_wait_policy(python_ns=0) == old
        assert set_wait_policy(nogil_ns=7) == (0, old[1])
        assert set_wait_policy() == (0, 7)
        for bad in (-1, 1.5, True, "5"):
            with pytest.raises((ValueError, TypeError)):
                set_wait_policy(python_ns=bad)
        assert set_wait_policy() == (0, 7)  # a rejected call changes nothing
    finally:
        set_wait_policy(*old)


@pytest.mark.parametrize("python_ns", [0, 5000, 1_000_000])
def test_many_python_waiters_hand_over_items_under_any_spin_budget(python_ns):
    # More blocked Python threads than CPUs, each woken over and over: every
    # item arrives exactly once whatever the spin budget, and with a 1 ms
    # budget (only CPUs - 1 waiters may spin at once) the run still ends.
    from reflux_core.channel import set_wait_policy

    old = set_wait_policy(python_ns=python_ns)
    try:
        pairs = 4
        n = 3000
        chans = [SPSCChannel(2) for _ in range(pairs)]
        sums = [0] * pairs

        def produce(ch):
            for i in range(n):
                ch.push(i)
            ch.close()

        def consume(k):
            for x in chans[k]:
                sums[k] += x

        threads = [threading.Thread(target=produce, args=(ch,), daemon=True) for ch in chans]
        threads += [threading.Thread(target=consume, args=(k,), daemon=True) for k in range(pairs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WATCHDOG)
            assert not t.is_alive(), "a producer or consumer hung"
        assert sums == [n * (n - 1) // 2] * pairs
    finally:
        set_wait_policy(*old)
