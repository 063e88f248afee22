#!/usr/bin/env bash
# Bounded fuzzing of one cargo-fuzz target, on stable Rust (libFuzzer without a sanitizer, with
# debug assertions and overflow checks: cargo-fuzz's default build).
#
# Usage: bash .ci/fuzz.sh TARGET SECONDS      e.g. bash .ci/fuzz.sh ember_reader 60
#
# - Installs cargo-fuzz when missing. If that install, or the download of the fuzz crate's
#   dependencies, fails, the step is a LOUD skip (exit 0): CI must not fail because a mirror is down.
# - A build failure exits 1. A crash (panic, abort, timeout, out-of-memory) exits 1 and names the
#   input saved in fuzz/artifacts/TARGET/: replay it with
#   `cd fuzz && cargo fuzz run -s none TARGET artifacts/TARGET/<file>`, fix the bug, and keep the
#   input as a regression case in tests/fixtures/ember-crashes/.
# - New inputs accumulate in fuzz/corpus/TARGET (gitignored); fuzz/seeds/ holds the committed seeds.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${1:?usage: .ci/fuzz.sh TARGET SECONDS}"
SECS="${2:?usage: .ci/fuzz.sh TARGET SECONDS}"

skip() {
    echo "################################################################" >&2
    echo "## fuzz $TARGET: SKIPPED: $*" >&2
    echo "## (the .ember reader was NOT fuzzed on this run)" >&2
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
[ -f "fuzz_targets/$TARGET.rs" ] || { echo "fuzz: no target fuzz/fuzz_targets/$TARGET.rs" >&2; exit 1; }
cargo fetch >/dev/null 2>&1 || skip "could not fetch the fuzz crate's dependencies (offline?)"

echo "fuzz: building $TARGET"
if ! cargo fuzz build -s none "$TARGET"; then
    echo "fuzz: the build of $TARGET FAILED" >&2
    exit 1
fi

mkdir -p "corpus/$TARGET"
ARGS=(-max_total_time="$SECS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
[ -f "$TARGET.dict" ] && ARGS+=(-dict="$TARGET.dict")
SEEDS=()
[ -d seeds ] && SEEDS+=(seeds)

echo "fuzz: running $TARGET for ${SECS}s"
LOG="$(mktemp)"
cargo fuzz run -s none "$TARGET" "corpus/$TARGET" "${SEEDS[@]}" -- "${ARGS[@]}" 2>&1 | tee "$LOG" \
    | grep -E "^#[0-9]+[[:space:]]+(INITED|DONE|pulse)|stat::|Done |panicked|ERROR|SUMMARY|artifact"
STATUS=${PIPESTATUS[0]}
if [ "$STATUS" != 0 ]; then
    echo "################################################################" >&2
    echo "## fuzz $TARGET: CRASH (exit status $STATUS)" >&2
    grep -E "panicked|Test unit written|SUMMARY" "$LOG" >&2
    echo "## inputs: $(ls "artifacts/$TARGET" 2>/dev/null | tr '\n' ' ')" >&2
    echo "################################################################" >&2
    exit 1
fi
echo "fuzz: $TARGET: no crash in ${SECS}s"
