#!/usr/bin/env bash
# End-to-end `ember serve` with the official `openai` Python client: a tiny model (pretrained a
# few steps on the built-in corpus, with its own tokenizer) served on a free loopback port,
# runtime/tests/python/serve_openai.py run against it, then SIGTERM: the server must exit 0.
# Skips LOUDLY (exit 0) when python3 or its `openai` package is missing (.ci/run installs it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

skip() {
    echo "################################################################" >&2
    echo "## serve: SKIPPED: $*" >&2
    echo "## (the openai-client checks of ember serve did NOT run)" >&2
    echo "################################################################" >&2
    exit 0
}
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
python3 -c "import openai" 2>/dev/null || skip "the python package openai is not installed (pip install openai)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/emberlm-serve.XXXXXX")"
export EMBER_CACHE="$WORK/cache"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cargo build --release -q -p emberlm-trainer --bin ember-train
cargo build --release -q -p emberlm-runtime --bin ember
"$TARGET/release/ember-train" pretrain --vocab 512 --layers 1 --heads 2 --dim 32 --context 128 \
    --batch 4 --steps 10 --out "$WORK/run" > /dev/null
"$TARGET/release/ember-train" export "$WORK/run" --dtype f32 --out "$WORK/tiny.ember" > /dev/null

KEY="ci-$RANDOM"
"$TARGET/release/ember" serve "$WORK/tiny.ember" --port 0 --parallel 2 --api-key "$KEY" \
    > "$WORK/serve.out" &
PID=$!
for _ in $(seq 100); do
    grep -q "^listening on " "$WORK/serve.out" 2>/dev/null && break
    sleep 0.1
done
URL="$(sed -n 's/^listening on \(http:[^ ]*\)$/\1/p' "$WORK/serve.out")"
[ -n "$URL" ] || { echo "ember serve did not start"; exit 1; }
echo "== ember serve at $URL"
python3 runtime/tests/python/serve_openai.py "$URL/v1" "$KEY"
kill -TERM "$PID"
if wait "$PID"; then
    echo "== ember serve stopped cleanly on SIGTERM"
    PID=""
else
    echo "ember serve exited with $? after SIGTERM"; PID=""; exit 1
fi
