#!/usr/bin/env bash
# Bounded fuzzing of the cargo-fuzz targets in fuzz/, on stable Rust (libFuzzer without a
# sanitizer, with debug assertions and overflow checks: cargo-fuzz's default build).
#
# Usage: bash .ci/fuzz.sh TARGET SECONDS     one target, e.g. bash .ci/fuzz.sh session 300
#        bash .ci/fuzz.sh all SECONDS        every target (fuzz/fuzz_targets/*.rs), one after
#                                            another, SECONDS each, then one summary table
#
# - Installs cargo-fuzz when missing. If that install, or the download of the fuzz crate's
#   dependencies, fails, the step is a LOUD skip (exit 0): CI must not fail because a mirror is down.
# - Builds every requested target once, then runs each from its committed seeds
#   (fuzz/seeds/TARGET), its saved regressions (fuzz/regressions/TARGET) and its local corpus
#   (fuzz/corpus/TARGET, gitignored), with fuzz/TARGET.dict when present.
# - A build failure exits 1. A crash (panic, abort, timeout, out-of-memory) in any target exits 1
#   after the other targets ran, naming the input saved in fuzz/artifacts/TARGET/: replay it with
#   `cd fuzz && cargo fuzz run -s none TARGET artifacts/TARGET/<file>`, fix the bug, and keep the
#   input in fuzz/regressions/TARGET/ (tests/tests/fuzz_regressions.rs replays it in `cargo test`).
# - Prints, per target: seconds, total executions, executions per second, new corpus units, peak
#   RSS, coverage, result.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHAT="${1:?usage: .ci/fuzz.sh TARGET|all SECONDS}"
SECS="${2:?usage: .ci/fuzz.sh TARGET|all SECONDS}"
T0=$(date +%s)

skip() {
    echo "################################################################" >&2
    echo "## fuzz $WHAT: SKIPPED: $*" >&2
    echo "## (NOTHING was fuzzed on this run)" >&2
    echo "################################################################" >&2
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (a few minutes)..."
    LOG="$(mktemp)"
    if ! cargo install cargo-fuzz --locked >"$LOG" 2>&1; then
        tail -n 20 "$LOG" >&2
        skip "cargo install cargo-fuzz failed (see above)"
    fi
fi

cd "$ROOT/fuzz" || exit 1
if [ "$WHAT" = all ]; then
    TARGETS=()
    for f in fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
    BUILD_ARGS=()
else
    [ -f "fuzz_targets/$WHAT.rs" ] || { echo "fuzz: no target fuzz/fuzz_targets/$WHAT.rs" >&2; exit 1; }
    TARGETS=("$WHAT")
    BUILD_ARGS=("$WHAT")
fi
cargo fetch >/dev/null 2>&1 || skip "could not fetch the fuzz crate's dependencies (offline?)"

echo "fuzz: building ${TARGETS[*]}"
B0=$(date +%s)
if ! cargo fuzz build -s none "${BUILD_ARGS[@]}"; then
    echo "fuzz: the build FAILED" >&2
    exit 1
fi
BUILD_SECS=$(( $(date +%s) - B0 ))

# Targets write scratch files under TMPDIR (in memory when /dev/shm exists: the importer fsyncs
# what it writes); libFuzzer exits without running destructors, so the directory is removed here.
SCRATCH="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

ROWS=()
FAILED=()
for T in "${TARGETS[@]}"; do
    mkdir -p "corpus/$T"
    ARGS=(-max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
    [ -f "$T.dict" ] && ARGS+=(-dict="$T.dict")
    DIRS=("corpus/$T")
    [ -d "seeds/$T" ] && DIRS+=("seeds/$T")
    [ -d "regressions/$T" ] && DIRS+=("regressions/$T")

    echo
    echo "fuzz: running $T for ${SECS}s"
    LOG="$SCRATCH/$T.log"
    R0=$(date +%s)
    TMPDIR="$SCRATCH" cargo fuzz run -s none "$T" "${DIRS[@]}" -- "${ARGS[@]}" >"$LOG" 2>&1
    STATUS=$?
    RUN_SECS=$(( $(date +%s) - R0 ))
    grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|stat::|panicked|ERROR|SUMMARY|Test unit written" "$LOG"

    stat() { grep -E "^stat::$1:" "$LOG" | tail -n 1 | awk '{print $2}'; }
    EXECS="$(stat number_of_executed_units)"
    RATE="$(stat average_exec_per_sec)"
    NEW="$(stat new_units_added)"
    RSS="$(stat peak_rss_mb)"
    # Without final stats (a crash), the last status line: "#N ... cov: C ... exec/s: R".
    LAST="$(grep -E "^#[0-9]+" "$LOG" | tail -n 1)"
    [ -n "$EXECS" ] || EXECS="$(sed -E 's/^#([0-9]+).*/\1/' <<<"$LAST")"
    [ -n "$RATE" ] || RATE="$(grep -oE "exec/s: [0-9]+" <<<"$LAST" | awk '{print $2}')"
    COV="$(grep -oE "cov: [0-9]+" <<<"$LAST" | awk '{print $2}')"

    if [ "$STATUS" = 0 ]; then
        RESULT="ok"
    else
        RESULT="CRASH"
        FAILED+=("$T")
        echo "################################################################" >&2
        echo "## fuzz $T: CRASH (exit status $STATUS)" >&2
        grep -E "panicked|Test unit written|SUMMARY|deadly signal|timeout|out-of-memory" "$LOG" >&2
        echo "## inputs: $(ls "artifacts/$T" 2>/dev/null | tr '\n' ' ')" >&2
        echo "################################################################" >&2
    fi
    ROWS+=("$(printf '%-20s %6s %12s %9s %7s %8s %6s  %s' "$T" "$RUN_SECS" "${EXECS:-?}" \
        "${RATE:-?}" "${NEW:-?}" "${RSS:-?}" "${COV:-?}" "$RESULT")")
done

echo
echo "fuzz summary (build ${BUILD_SECS}s, total $(( $(date +%s) - T0 ))s, ${SECS}s per target)"
printf '%-20s %6s %12s %9s %7s %8s %6s  %s\n' target secs execs exec/s new rss_mb cov result
for r in "${ROWS[@]}"; do echo "$r"; done
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "fuzz: CRASHES in: ${FAILED[*]}" >&2
    exit 1
fi
echo "fuzz: no crash"
