#!/usr/bin/env python3
"""Check the contents and metadata of a pyreflux wheel and sdist.

    python tools/check_dist.py --source DIR [--wheel WHEEL] [--sdist SDIST]

DIR is the clean source tree both were built from; what must be shipped is
derived from it (every reflux/*.py module, every public .pxd, every header,
one extension module per reflux_core/*.pyx), and the metadata is compared
with its pyproject.toml and README.md.  Prints one line per check and exits
non-zero if any failed.  Used by tools/check_wheels.sh.
"""
from __future__ import annotations

import argparse
import base64
import csv
import email.parser
import fnmatch
import hashlib
import io
import re
import struct
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# never in a wheel: generated C, objects, caches, build and test leftovers
WHEEL_FORBIDDEN = ["*.c", "*.cpp", "*.o", "*.obj", "*.pyx", "*.html", "*.pyc", "*.pyo",
                   "*/__pycache__/*", "*.egg-info/*", "build/*", "*/build/*", "tests/*",
                   "benchmarks/*", "examples/*", "*/.hypothesis/*", "*/.pytest_cache/*", "*reflux-build-mode*",
                   "*.lib", "*.exp", "*.pdb"]
# never in the sdist: generated C of the core, compiled objects, caches, build outputs
SDIST_FORBIDDEN = ["reflux_core/*.c", "reflux_core/*.cpp", "*.so", "*.pyd", "*.dylib", "*.o",
                   "*.obj", "*.pyc", "*.pyo", "*/__pycache__/*", "build/*", "dist/*",
                   "wheelhouse/*", "*/.hypothesis/*", "*/.pytest_cache/*", ".git/*",
                   "*reflux-build-mode*", ".venv*", "docs/_build/*", "docs/_generated/*"]


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            self.failed += 1
        return ok


def matches(name: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if fnmatch.fnmatch(name, p) or fnmatch.fnmatch("/" + name, p)]


def expected_package_files(source: Path) -> tuple[set[str], list[str]]:
    """(files the wheel must hold, names of the extension modules)."""
    want = {f"reflux/{p.relative_to(source / 'src' / 'reflux').as_posix()}"
            for p in (source / "src" / "reflux").rglob("*.py")}
    want |= {"reflux/py.typed", "reflux_core/py.typed"}
    want |= {f"reflux_core/{p.name}" for p in (source / "reflux_core").glob("*.py")}
    want |= {f"reflux_core/{p.name}" for p in (source / "reflux_core").glob("*.pxd")}
    want |= {f"reflux_core/{p.name}" for p in (source / "reflux_core").glob("*.pyi")}
    want |= {f"reflux_core/{p.relative_to(source / 'reflux_core').as_posix()}"
             for p in (source / "reflux_core" / "include").rglob("*.h")}
    modules = sorted(p.stem for p in (source / "reflux_core").glob("*.pyx"))
    return want, modules


def elf_section_names(data: bytes) -> list[str] | None:
    """The section names of an ELF shared object, or ``None`` if ``data`` is not ELF."""
    if data[:4] != b"\x7fELF":
        return None
    is64, order = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(order + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(order + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)

    def section(i: int) -> tuple[int, int, int]:  # (name offset, file offset, size)
        base = shoff + i * shentsize
        if is64:
            name, = struct.unpack_from(order + "I", data, base)
            offset, size = struct.unpack_from(order + "QQ", data, base + 0x18)
        else:
            name, = struct.unpack_from(order + "I", data, base)
            offset, size = struct.unpack_from(order + "II", data, base + 0x10)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    table = data[str_off:str_off + str_size]
    names = []
    for i in range(shnum):
        start = section(i)[0]
        names.append(table[start:table.index(b"\0", start)].decode("ascii", "replace"))
    return names


def check_wheel(path: Path, source: Path, project: dict, readme: str, rep: Report) -> None:
    print(f"wheel {path.name}")
    name, version = project["name"], project["version"]
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        dist_info = f"{name}-{version}.dist-info"
        want, modules = expected_package_files(source)

        missing = sorted(want - set(names))
        rep.check(not missing, f"holds every module, .pxd, .pyi stub, header and py.typed ({len(want)} files)",
                  f"missing {missing}")
        rep.check("reflux_core/channel.pxd" in names and "reflux_core/__init__.pxd" in names,
                  "public .pxd files: reflux_core/__init__.pxd, reflux_core/channel.pxd")
        headers = sorted(n for n in names if n.startswith("reflux_core/include/") and n.endswith(".h"))
        rep.check(bool(headers), "C headers under reflux_core/include/reflux_core/: "
                  + ", ".join(PurePosixPath(h).name for h in headers))
        for mod in modules:
            exts = [n for n in names if re.fullmatch(rf"reflux_core/{re.escape(mod)}\..+\.(so|pyd)", n)]
            rep.check(len(exts) == 1, f"one compiled extension for reflux_core/{mod}.pyx",
                      f"found {exts}")
        bad = {n: matches(n, WHEEL_FORBIDDEN) for n in names}
        bad = {n: p for n, p in bad.items() if p}
        rep.check(not bad, "no generated .c, .pyx, objects, caches, tests or build leftovers",
                  f"{bad}")
        # release builds carry no debug information (setup.py: -g0, the linker strips the rest)
        ext_sizes, with_debug = 0, {}
        for n in names:
            if re.fullmatch(r"reflux_core/[^/]+\.(so|pyd)", n):
                data = zf.read(n)
                ext_sizes += len(data)
                sections = elf_section_names(data)
                debug = [s for s in sections or [] if s.startswith((".debug_", ".zdebug_"))]
                if debug:
                    with_debug[n] = debug
        rep.check(not with_debug, f"extensions stripped of debug information "
                  f"({ext_sizes / 1e6:.2f} MB unpacked; wheel {path.stat().st_size / 1e6:.2f} MB)",
                  f"debug sections in {with_debug}")
        tops = sorted({n.split("/")[0] for n in names})
        allowed = {"reflux", "reflux_core", dist_info, f"{name}.libs"}
        rep.check(set(tops) <= allowed, f"top-level entries are only {sorted(allowed - {name + '.libs'})}",
                  f"found {tops}")
        rep.check(f"{name}.libs" not in tops, "no vendored shared libraries (the core needs only libc)",
                  f"{[n for n in names if n.startswith(name + '.libs/')]}")

        # RECORD: every file listed with a matching hash
        record = list(csv.reader(io.StringIO(zf.read(f"{dist_info}/RECORD").decode())))
        listed = {row[0] for row in record}
        bad_hash = []
        for row in record:
            if row[1]:
                algo, _, digest = row[1].partition("=")
                got = base64.urlsafe_b64encode(hashlib.new(algo, zf.read(row[0])).digest()).rstrip(b"=")
                if got.decode() != digest:
                    bad_hash.append(row[0])
        rep.check(listed == set(names) and not bad_hash, "RECORD lists every file with its hash",
                  f"unlisted {sorted(set(names) - listed)}, stale {sorted(listed - set(names))}, "
                  f"bad hashes {bad_hash}")

        wheel_meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        rep.check(wheel_meta["Root-Is-Purelib"] == "false", "WHEEL: Root-Is-Purelib: false (platform wheel)")
        tags = wheel_meta.get_all("Tag") or []
        rep.check(bool(tags) and all(re.match(r"cp3\d+-cp3\d+-", t) for t in tags),
                  f"WHEEL tags: {', '.join(tags)}")

        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        rep.check(re.search(r"^reflux\s*=\s*reflux\.cli:main\s*$", entry_points, re.M) is not None,
                  "console script: reflux = reflux.cli:main")

        meta_text = zf.read(f"{dist_info}/METADATA").decode()
        check_metadata(meta_text, project, readme, rep, "wheel")
        licenses = {n.rsplit("/", 1)[-1] for n in names if n.startswith(f"{dist_info}/licenses/")}
        for lic in project.get("license-files", ["LICENSE"]):
            ok = lic in licenses and zf.read(f"{dist_info}/licenses/{lic}") == (source / lic).read_bytes()
            rep.check(ok, f"license file {lic} shipped in {dist_info}/licenses/", f"have {sorted(licenses)}")


def check_metadata(text: str, project: dict, readme: str, rep: Report, where: str) -> None:
    msg = email.parser.Parser().parsestr(text)
    rep.check(msg["Name"] == project["name"], f"{where} metadata: Name: {msg['Name']}")
    rep.check(msg["Version"] == project["version"], f"{where} metadata: Version: {msg['Version']}")
    rep.check(msg["Summary"] == project["description"], f"{where} metadata: Summary")
    lic = msg["License-Expression"] or msg["License"]
    rep.check(lic == project["license"], f"{where} metadata: License-Expression: {lic}")
    files = msg.get_all("License-File") or []
    rep.check(set(project.get("license-files", ["LICENSE"])) <= set(files),
              f"{where} metadata: License-File: {', '.join(files)}")
    rep.check(msg["Requires-Python"] == project["requires-python"],
              f"{where} metadata: Requires-Python: {msg['Requires-Python']}")
    classifiers = msg.get_all("Classifier") or []
    rep.check(sorted(classifiers) == sorted(project["classifiers"]),
              f"{where} metadata: {len(classifiers)} classifiers",
              f"differ from pyproject: {sorted(set(classifiers) ^ set(project['classifiers']))}")
    urls = dict(u.split(", ", 1) for u in msg.get_all("Project-URL") or [])
    rep.check(urls == project["urls"], f"{where} metadata: Project-URL {', '.join(urls)}",
              f"{urls} != {project['urls']}")
    requires = msg.get_all("Requires-Dist") or []
    for dep in project["dependencies"]:
        rep.check(any(r.replace(" ", "") == dep.replace(" ", "") for r in requires),
                  f"{where} metadata: Requires-Dist {dep}", f"have {requires}")
    for extra, deps in project.get("optional-dependencies", {}).items():
        rep.check(extra in (msg.get_all("Provides-Extra") or []), f"{where} metadata: Provides-Extra {extra}")
        for dep in deps:
            rep.check(any(r.startswith(dep.split(";")[0].replace(" ", "")) and f'extra == "{extra}"' in r
                          for r in requires), f"{where} metadata: Requires-Dist {dep}; extra == {extra!r}")
    rep.check(msg["Description-Content-Type"] == "text/markdown",
              f"{where} metadata: Description-Content-Type: {msg['Description-Content-Type']}")
    body = msg.get_payload()
    rep.check(body.strip() == readme.strip(), f"{where} metadata: long description is README.md "
              f"({len(body)} chars)")
    rep.check(bool(msg["Keywords"]) and bool(msg["Author"] or msg["Author-email"]),
              f"{where} metadata: Keywords and Author")


def check_sdist(path: Path, source: Path, project: dict, readme: str, rep: Report) -> None:
    print(f"sdist {path.name}")
    prefix = f"{project['name']}-{project['version']}/"
    with tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        names = [m.name[len(prefix):] for m in members if m.name.startswith(prefix)]
        rep.check(len(names) == len(members), f"every file under {prefix}")
        want = {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in", "PKG-INFO",
                *project.get("license-files", ["LICENSE"])}
        for folder, patterns in (("reflux_core", ["*.pyx", "*.pxd", "*.pyi", "*.py", "py.typed", "*.h"]),
                                 ("src/reflux", ["*.py", "py.typed"]),
                                 ("tests", ["*.py"]),
                                 ("benchmarks", ["*.py", "*.c"]),
                                 ("examples", ["*.py", "*.pyx", "*.toml"]),
                                 ("docs", ["*.md", "*.rst", "*.py", "*.css"]),
                                 ("tools", ["*.py", "*.sh"])):
            for p in (source / folder).rglob("*"):
                rel = p.relative_to(source).as_posix()
                if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns) \
                        and not matches(rel, SDIST_FORBIDDEN):
                    want.add(rel)
        missing = sorted(want - set(names))
        rep.check(not missing, f"holds the sources, .pyx/.pxd, headers, tests, benchmarks, docs, README, "
                  f"licenses ({len(want)} files)", f"missing {missing}")
        bad = {n: matches(n, SDIST_FORBIDDEN) for n in names}
        bad = {n: p for n, p in bad.items() if p}
        rep.check(not bad, "no generated reflux_core/*.c, compiled objects, caches or build outputs", f"{bad}")
        pkg_info = tf.extractfile(prefix + "PKG-INFO").read().decode()
        check_metadata(pkg_info, project, readme, rep, "sdist")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--wheel", type=Path)
    ap.add_argument("--sdist", type=Path)
    args = ap.parse_args()
    source = args.source.resolve()
    project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    readme = (source / project["readme"]).read_text(encoding="utf-8")
    rep = Report()
    if args.sdist:
        check_sdist(args.sdist, source, project, readme, rep)
    if args.wheel:
        check_wheel(args.wheel, source, project, readme, rep)
    print(f"check_dist: {'all checks passed' if not rep.failed else f'{rep.failed} check(s) FAILED'}")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
