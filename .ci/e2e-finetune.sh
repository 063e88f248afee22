#!/usr/bin/env bash
# End-to-end fine-tuning on the book's data (release binaries). Needs $EMBER_DATA; without it
# every step SKIPS LOUDLY (exit 0).
#   instruct: a tiny model pretrained for a few seconds on $EMBER_DATA/the-verdict.txt (GPT-2
#   tokenizer), then `ember-train finetune instruct` on $EMBER_DATA/instruction-data.json (the
#   book's 1,100 entries, one epoch), checking the --json result, loss.csv/loss.svg, model.ember
#   and responses.json (the 110 test entries with the four keys); then `ember chat` on the model.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR=never
if [ -z "${EMBER_DATA:-}" ] || [ ! -d "$EMBER_DATA" ]; then
    echo "!!!!!!!! SKIPPED e2e-finetune: EMBER_DATA is not set (or not a directory)"
    exit 0
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/emberlm-e2e-finetune.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export EMBER_CACHE="$WORK/cache"
T0=$(date +%s)
secs() { echo "$(( $(date +%s) - T0 ))s"; }

echo "== build (release)"
cargo build --release -p emberlm-trainer --bin ember-train
TRAIN="$TARGET/release/ember-train"

# ---- instruct -------------------------------------------------------------------------------
if [ ! -f "$EMBER_DATA/instruction-data.json" ] || [ ! -f "$EMBER_DATA/the-verdict.txt" ]; then
    echo "!!!!!!!! SKIPPED instruct: $EMBER_DATA/instruction-data.json or the-verdict.txt is missing"
else
    echo "== [$(secs)] pretrain a tiny model (1 block, dim 32, context 128; GPT-2 tokenizer)"
    "$TRAIN" pretrain --data "$EMBER_DATA/the-verdict.txt" --layers 1 --heads 2 --dim 32 \
        --context 128 --batch 4 --steps 20 --eval-every 10 --eval-batches 1 --sample-tokens 5 \
        --lr 5e-3 --init-scheme gpt2 --dropout 0 --out "$WORK/pre" --json > "$WORK/pre.json"
    echo "== [$(secs)] finetune instruct on $EMBER_DATA/instruction-data.json (1 epoch)"
    "$TRAIN" finetune instruct --init "$WORK/pre" --data "$EMBER_DATA/instruction-data.json" \
        --out "$WORK/instruct" --epochs 1 --lr 1e-3 --eval-every 20 --eval-batches 2 \
        --max-new-tokens 24 --json > "$WORK/instruct.json"
    cat "$WORK/instruct.json"
    test -s "$WORK/instruct/loss.csv" && test -s "$WORK/instruct/loss.svg"
    test -s "$WORK/instruct/model.ember"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$WORK/instruct.json" "$WORK/instruct/responses.json" "$EMBER_DATA/instruction-data.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for k in ["train_loss", "val_loss", "test_loss", "steps", "trainable_params", "tokens_per_s", "model", "responses"]:
    assert k in j, k
assert j["steps"] == 116, j["steps"]                 # 935 // 8, one epoch
assert j["train_loss"] < j["initial_train_loss"], j  # fine-tuning lowers the loss
r = json.load(open(sys.argv[2]))
data = json.load(open(sys.argv[3]))
assert len(r) == 110, len(r)                         # the book's test split: entries 935..1045
for got, want in zip(r, data[935:1045]):
    assert sorted(got) == ["input", "instruction", "model_response", "output"], sorted(got)
    assert got["instruction"] == want["instruction"] and got["output"] == want["output"]
print("instruct ok: train %.3f -> %.3f, val %.3f -> %.3f, test %.3f; %d responses" % (
    j["initial_train_loss"], j["train_loss"], j["initial_val_loss"], j["val_loss"], j["test_loss"], len(r)))
PY
    else
        grep -q '"test_loss"' "$WORK/instruct.json"
        grep -q '"model_response"' "$WORK/instruct/responses.json"
    fi
    EMBER="$TARGET/release/ember"
    if cargo build --release -p emberlm-runtime --bin ember && "$EMBER" chat --help >/dev/null 2>&1; then
        echo "== [$(secs)] ember chat on the exported model (the template comes from the file)"
        printf 'Name the author of Pride and Prejudice.\n' | "$EMBER" chat "$WORK/instruct/model.ember" --max-tokens 16
    else
        echo "!! no 'ember chat' in this build: the chat check is skipped"
    fi
fi
echo "== e2e-finetune ok in $(secs)"
