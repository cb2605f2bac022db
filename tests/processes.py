"""Helpers of the process-worker tests: the children of this process, on every platform (psutil)."""
from __future__ import annotations

import multiprocessing
import os
import time

import psutil
import pytest


def child_pids(parent: int | None = None) -> set[int]:
    """Pids of the live (or unreaped) children of ``parent`` (default: this process)."""
    try:
        children = psutil.Process(os.getpid() if parent is None else parent).children()
    except psutil.NoSuchProcess:
        return set()
    return {c.pid for c in children}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it counts as ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def check_no_process_left(before: set[int], timeout: float = 10.0) -> None:
    """Fail the test if children started since ``before`` are still there after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = child_pids() - before
        if not left:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"worker processes left behind: {sorted(left)}")
        time.sleep(0.02)
    assert not multiprocessing.active_children()
