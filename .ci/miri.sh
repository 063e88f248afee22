#!/usr/bin/env bash
# miri (nightly) over the code that turns untrusted bytes into views and the SIMD kernels'
# boundaries: undefined behaviour, out-of-bounds or misaligned accesses, invalid values.
#
# Usage: bash .ci/miri.sh          (about 5 minutes on the 2-core CI machine, most of it building)
#
# - Skips LOUDLY (exit 0) when the nightly toolchain or its miri component is missing and
#   `rustup +nightly component add miri rust-src` cannot add it (offline CI).
# - miri reports no CPU feature at run time, so `Kernels::detect()` picks the reference twins:
#   the SIMD kernels themselves are not interpreted (compiling with
#   `-C target-feature=+avx2,+fma,+f16c` does not help: miri has no F16C intrinsics, which the
#   x86-64 kernels and the `half` crate need). They are checked natively by the `kernels` fuzz
#   target and runtime/tests/kernels.rs instead.
# - The runtime runs without its `parallel` feature where it can (no rayon threads), under
#   miri's default Stacked Borrows. The fuzz replays go through the tests crate, which enables
#   rayon; crossbeam-epoch (under rayon) is known not to satisfy Stacked Borrows but to satisfy
#   Tree Borrows (crossbeam-rs/crossbeam#545, #996), so that step runs with -Zmiri-tree-borrows
#   (and -Zmiri-ignore-leaks: rayon's global pool threads never exit).
# - What runs (big-shape and proptest-heavy tests are left to the native `cargo test`):
#   1. emberlm-formats unit tests of the reader (`ember::`) and the quantizer's edge cases;
#   2. the runtime's kernel tests that use small shapes (runtime/tests/kernels.rs, by name) and
#      the gemm wrapper's unit tests (runtime/src/gemm.rs, an `unsafe` file: row views);
#   3. the fuzz targets' seeds and regressions (tests/tests/fuzz_regressions.rs) for the `.ember`
#      reader (malformed files, tensor views), the kernels (Q8 views built from arbitrary
#      lengths, slices at odd element offsets, tails) and the session (tiny random models with
#      f32/f16/int8 weights, f16 KV cache, every session call).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
T0=$(date +%s)

skip() {
    echo "################################################################" >&2
    echo "## miri: SKIPPED: $*" >&2
    echo "## (NOTHING was checked under miri on this run)" >&2
    echo "################################################################" >&2
    exit 0
}

command -v rustup >/dev/null 2>&1 || skip "rustup is not installed"
rustup run nightly rustc --version >/dev/null 2>&1 || skip "no nightly toolchain (rustup toolchain install nightly)"
if ! cargo +nightly miri --version >/dev/null 2>&1; then
    echo "miri: adding the miri component to nightly..."
    rustup +nightly component add miri rust-src >/dev/null 2>&1 \
        || skip "rustup +nightly component add miri rust-src failed (offline?)"
    cargo +nightly miri --version >/dev/null 2>&1 || skip "cargo miri still does not run"
fi
echo "miri: $(cargo +nightly miri --version 2>/dev/null)"
cargo +nightly miri setup >/dev/null 2>&1 || skip "cargo miri setup failed (could not build the sysroot)"

# Isolation off: the reader tests and the fuzz replays read files and write scratch files.
BASE_MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-disable-isolation"
export MIRIFLAGS="$BASE_MIRIFLAGS"

FAILED=()
run() {
    local name="$1"
    shift
    echo
    echo "==== miri: $name"
    local s0
    s0=$(date +%s)
    if cargo +nightly miri test "$@"; then
        echo "==== miri: $name: ok ($(( $(date +%s) - s0 ))s)"
    else
        echo "==== miri: $name: FAILED ($(( $(date +%s) - s0 ))s)" >&2
        FAILED+=("$name")
    fi
}

run "formats: reader and quantizer unit tests" \
    -p emberlm-formats --lib -- \
    ember:: quant::tests::zero_blocks_and_tails quant::tests::errors_name_the_element

run "runtime: kernel tests on small shapes" \
    -p emberlm-runtime --no-default-features --test kernels -- \
    zero_width_and_empty_matvec q8_matrix_validates_lengths q8_dequantize_row_matches_the_formula \
    matmul_q8_empty_shapes layernorm_known_values kernel_names_and_threads \
    reference_twins_are_the_documented_functions

run "runtime: gemm wrapper unit tests" \
    -p emberlm-runtime --no-default-features --lib -- \
    gemm::tests::row_ranges_view_the_right_rows gemm::tests::overwrite_ignores_nan_in_destination

export MIRIFLAGS="$BASE_MIRIFLAGS -Zmiri-tree-borrows -Zmiri-ignore-leaks"
run "fuzz seeds and regressions: ember_reader, kernels, session" \
    -p emberlm-tests --test fuzz_regressions -- \
    ember_reader:: kernels:: session::

echo
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "miri: FAILED: ${FAILED[*]} ($(( $(date +%s) - T0 ))s)" >&2
    exit 1
fi
echo "miri: all ok ($(( $(date +%s) - T0 ))s)"
