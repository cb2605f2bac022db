"""Packaging of reflux_core / reflux: headers, .pxd files, ABI version, build info, re-exports."""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.resources
import os
import shutil
import subprocess
import sys

import pytest

import reflux
import reflux_core
import reflux_core.channel as rc

HEADERS = ["abi.h", "atomics.h", "park.h", "rings.h"]
CHANNEL_NAMES = ["EMPTY", "Channel", "ChannelClosed", "ChannelStats", "Empty", "Full",
                 "MPMCChannel", "RecordChannel", "SPSCChannel"]


def test_get_include_points_at_the_headers():
    inc = reflux_core.get_include()
    assert isinstance(inc, str) and os.path.isabs(inc)
    assert os.path.isdir(inc)
    for name in HEADERS:
        path = os.path.join(inc, "reflux_core", name)
        assert os.path.isfile(path), path
        with open(path, encoding="utf-8") as f:
            text = f.read()
        guard = "REFLUX_CORE_" + name.upper().replace(".", "_")
        assert f"#ifndef {guard}" in text, f"{name} has no include guard"


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
@pytest.mark.parametrize("header", HEADERS)
def test_headers_compile_on_their_own(tmp_path, header):
    # what a C or Cython extension does with include_dirs=[reflux_core.get_include()]
    # (the compiler's default GNU dialect, as for any extension; included twice to
    # check the include guards)
    src = tmp_path / "use.c"
    src.write_text(f'#include "reflux_core/{header}"\n#include "reflux_core/{header}"\n'
                   "int main(void) { return 0; }\n")
    cc = os.environ.get("CC", "cc")
    proc = subprocess.run([cc, "-fsyntax-only", "-Wall", "-Werror", "-Wno-unused-function",
                           "-I", reflux_core.get_include(), str(src)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_package_ships_its_pxd_files():
    pkg = importlib.resources.files("reflux_core")
    channel_pxd = pkg / "channel.pxd"
    init_pxd = pkg / "__init__.pxd"
    assert channel_pxd.is_file() and init_pxd.is_file()
    text = channel_pxd.read_text(encoding="utf-8")
    for decl in ("cdef class Channel", "cdef class SPSCChannel", "cdef class MPMCChannel",
                 "cdef class RecordChannel", "push_records", "pop_records",
                 "try_push_records", "try_pop_records", "close_nogil"):
        assert decl in text, decl
    assert "noexcept nogil" in text
    # the curated surface re-exports the channel classes for `from reflux_core cimport ...`
    init_text = init_pxd.read_text(encoding="utf-8")
    assert "from reflux_core.channel cimport" in init_text
    assert "RecordChannel" in init_text
    assert (pkg / "transform.pxd").is_file() and "CTransform" in init_text
    # the .pxd sits next to the compiled module Cython users cimport
    assert os.path.dirname(os.path.abspath(rc.__file__)) == os.path.dirname(
        os.path.abspath(reflux_core.__file__))


def test_abi_version_is_an_int():
    assert type(reflux_core.ABI_VERSION) is int
    assert reflux_core.ABI_VERSION >= 1
    assert "ABI_VERSION" in reflux_core.__all__


def test_build_info():
    info = reflux_core.build_info()
    assert isinstance(info, dict)
    assert {"abi_version", "debug", "park_backend"} <= set(info)
    assert info["abi_version"] == reflux_core.ABI_VERSION
    assert type(info["debug"]) is bool
    assert info["park_backend"] in ("futex", "waitonaddress", "condvar")
    assert info["park_backend"] == rc.park_backend()
    for name in ("get_include", "build_info"):
        assert name in reflux_core.__all__


def test_reflux_reexports_the_channel_core():
    for name in CHANNEL_NAMES:
        assert getattr(reflux, name) is getattr(rc, name), name
        assert name in reflux.__all__, name
    for name in reflux.__all__:
        assert hasattr(reflux, name), name


def test_distribution_metadata():
    dist = importlib.metadata.distribution("pyreflux")
    assert dist.version == reflux.__version__
    requires = dist.requires or []
    assert any(r.startswith("numpy") for r in requires)


def test_compiled_modules_are_extensions():
    from reflux_core import _batch, _demo, _sched, _stress, _testplugins, transform

    for mod in (rc, transform, _stress, _testplugins, _batch, _sched, _demo):
        assert os.path.splitext(mod.__file__)[1] in (".so", ".pyd"), mod.__file__


def test_an_unbuilt_source_folder_says_what_to_do(tmp_path):
    """Python started in a checkout finds its reflux_core/ sources first: the import
    fails with a message saying so and what to do, not a bare 'No module named ...'."""
    fake = tmp_path / "reflux_core"
    fake.mkdir()
    shutil.copy2(reflux_core.__file__, fake / "__init__.py")  # the installed package's own check
    (fake / "channel.pyx").write_text("# the sources, never compiled here\n")
    proc = subprocess.run([sys.executable, "-c", "import reflux"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: reflux_core is being imported from its source folder")
    assert str(fake) in last and "Run it from another folder" in last and "pip install -e ." in last
    assert "No module named" not in proc.stderr
    # built in place (an editable install): no complaint from the check
    (fake / ("channel" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    proc = subprocess.run([sys.executable, "-c", "import reflux_core; print(reflux_core.ABI_VERSION)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(reflux_core.ABI_VERSION), proc.stderr
