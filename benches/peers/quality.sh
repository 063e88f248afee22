#!/usr/bin/env bash
# Quality of emberlm's export dtypes side by side with llama.cpp's quantizations, on the same
# weights and the same held-out text: file size, perplexity, loss, KL(f32 || format) mean and 99th
# percentile, and top-1 agreement with f32 (what `llama-perplexity --kl-divergence` reports).
#
#   bash benches/peers/quality.sh CHECKPOINT HELDOUT.txt LLAMA_CPP_DIR [CONTEXT]
#
# CHECKPOINT: an ember-train checkpoint (a Llama-style or GPT-2 model with the GPT-2 tokenizer),
# HELDOUT.txt: text it was not trained on (at least 2 × CONTEXT tokens), LLAMA_CPP_DIR: a
# llama.cpp checkout built with cmake (build/bin/llama-quantize, build/bin/llama-perplexity;
# convert_hf_to_gguf.py with its gguf-py, transformers and torch importable). CONTEXT: 256.
# Environment: WORK (a directory kept for reruns: finished files are not redone), THREADS (2),
# NO_BUILD=1 (use target/release as it is).
#
# 1. `ember-train export-safetensors CKPT --out WORK/hf` (f32, lossless): llama.cpp's copy of
#    the checkpoint's weights.
# 2. ember: `ember-train export CKPT --dtype D` for f32, f16, int8, int4 (embedding and head at
#    int8), int4 with the embedding at int4 (`--keep-int8 HEAD`, when the head is not tied), int4
#    everywhere (`--keep-int8 none`); then `ember perplexity M --file HELDOUT --context C --kl-base F32
#    --json`.
# 3. llama.cpp: `convert_hf_to_gguf.py WORK/hf --outtype f32`, `llama-quantize` to F16, Q8_0,
#    Q4_0, Q4_K_M, IQ4_NL; `llama-perplexity -m F32.gguf -f HELDOUT -c C --kl-divergence-base
#    base.kld`, then `llama-perplexity -m Q.gguf -c C --kl-divergence-base base.kld
#    --kl-divergence` (its KL base stores log-probabilities in 16 bits: a floor near 1e-5).
# Both tools score the same tokens by the same rule (windows of C, the second half scored); the
# script checks that the scored-token counts match and that the f32 perplexities agree to 0.1 %,
# and prints a markdown table (also WORK/quality.jsonl).
set -euo pipefail
USAGE="usage: quality.sh CHECKPOINT HELDOUT.txt LLAMA_CPP_DIR [CONTEXT]"
CKPT="${1:?$USAGE}"
TEXT="$(realpath "${2:?$USAGE}")"
LCPP="$(realpath "${3:?$USAGE}")"
CTX="${4:-256}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${WORK:-$(mktemp -d -t emberlm-quality.XXXX)}"
mkdir -p "$WORK"
EMBER="$ROOT/target/release/ember"
TRAIN="$ROOT/target/release/ember-train"
QUANT="$LCPP/build/bin/llama-quantize"
PPL="$LCPP/build/bin/llama-perplexity"
[ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -q -p emberlm-runtime -p emberlm-trainer)
for f in "$EMBER" "$TRAIN" "$QUANT" "$PPL" "$LCPP/convert_hf_to_gguf.py"; do
    [ -e "$f" ] || { echo "quality.sh: $f is missing" >&2; exit 1; }
done
OUT="$WORK/quality.jsonl"
: > "$OUT"

# 1. The checkpoint as a Hugging Face directory, for llama.cpp's converter.
HF="$WORK/hf"
[ -f "$HF/config.json" ] || "$TRAIN" export-safetensors "$CKPT" --out "$HF" >&2
# transformers 5.x writes the rotary base as rope_parameters.rope_theta; llama.cpp's converter
# of early 2025 reads rope_theta (and would silently use 10000): give it both.
python3 - "$HF/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
r = c.get("rope_parameters") or {}
if "rope_theta" in r and "rope_theta" not in c:
    if r.get("rope_type", "default") != "default":
        sys.exit(f"{p}: rope_type {r['rope_type']}: not passed to llama.cpp by this script")
    c["rope_theta"] = r["rope_theta"]
    json.dump(c, open(p, "w"), indent=2)
EOF
read -r MODEL_TYPE TIED < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))
print(c["model_type"], int(bool(c.get("tie_word_embeddings"))))' "$HF/config.json")
if [ "$MODEL_TYPE" = gpt2 ]; then HEAD=out_head.weight; else HEAD=head.weight; fi

# 2. ember.
ember_row() { # label file json -> one JSON line
    python3 - "$1" "$2" "$3" >> "$OUT" <<'EOF'
import json, os, sys
label, path, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(json.dumps({"tool": "ember", "format": label, "bytes": os.path.getsize(path),
    "perplexity": j["perplexity"], "loss": j["loss"], "tokens": j["tokens"],
    "kl_mean": j.get("kl_mean", 0.0), "kl_p99": j.get("kl_p99", 0.0),
    "top1": j.get("top1_agreement", 1.0)}))
EOF
}
EMBER_FORMATS=("f32|--dtype f32" "f16|--dtype f16" "int8|--dtype int8" "int4|--dtype int4")
# With an untied head, also the embedding at int4 (the head at int8); with a tied one the
# embedding is the head.
[ "$TIED" = 1 ] || EMBER_FORMATS+=("int4-emb4|--dtype int4 --keep-int8 $HEAD")
EMBER_FORMATS+=("int4-all|--dtype int4 --keep-int8 none")
F32="$WORK/ember-f32.ember"
for entry in "${EMBER_FORMATS[@]}"; do
    label="${entry%%|*}"
    read -r -a args <<< "${entry#*|}"
    m="$WORK/ember-$label.ember"
    [ -f "$m" ] || "$TRAIN" export "$CKPT" "${args[@]}" --out "$m" >&2
    if [ "$label" = f32 ]; then
        j=$("$EMBER" perplexity "$m" --file "$TEXT" --context "$CTX" --threads "$THREADS" --json)
    else
        j=$("$EMBER" perplexity "$m" --file "$TEXT" --context "$CTX" --threads "$THREADS" \
            --kl-base "$F32" --json)
    fi
    echo "ember $label: $j" >&2
    ember_row "$label" "$m" "$j"
done

# 3. llama.cpp.
BASE="$WORK/llama-F32.gguf"
[ -f "$BASE" ] || python3 "$LCPP/convert_hf_to_gguf.py" "$HF" --outtype f32 --outfile "$BASE" >&2
KLD="$WORK/base.kld"
"$PPL" -m "$BASE" -f "$TEXT" -c "$CTX" -t "$THREADS" --kl-divergence-base "$KLD" \
    > "$WORK/llama-F32.log" 2>&1
python3 - "$BASE" "$WORK/llama-F32.log" "$CTX" >> "$OUT" <<'EOF'
import json, math, os, re, sys
path, log, ctx = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3])
ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
print(json.dumps({"tool": "llama.cpp", "format": "F32", "bytes": os.path.getsize(path),
    "perplexity": ppl, "loss": math.log(ppl), "tokens": chunks * (ctx - 1 - ctx // 2),
    "kl_mean": 0.0, "kl_p99": 0.0, "top1": 1.0}))
EOF
for q in F16 Q8_0 Q4_0 Q4_K_M IQ4_NL; do
    m="$WORK/llama-$q.gguf"
    [ -f "$m" ] || "$QUANT" "$BASE" "$m" "$q" > "$WORK/quantize-$q.log" 2>&1
    "$PPL" -m "$m" -c "$CTX" -t "$THREADS" --kl-divergence-base "$KLD" --kl-divergence \
        > "$WORK/llama-$q.log" 2>&1
    python3 - "$q" "$m" "$WORK/llama-$q.log" "$OUT" >> "$OUT" <<'EOF'
import json, math, os, re, sys
q, path, log = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
base = [json.loads(l) for l in open(sys.argv[4]) if '"F32"' in l][0]
num = lambda pat: float(re.search(pat, log).group(1))
ppl = num(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)")
print(json.dumps({"tool": "llama.cpp", "format": q, "bytes": os.path.getsize(path),
    "perplexity": ppl, "loss": math.log(ppl), "tokens": base["tokens"],
    "kl_mean": num(r"Mean\s+KLD:\s*([-0-9.e]+)"), "kl_p99": num(r"99\.0%\s+KLD:\s*([-0-9.e]+)"),
    "top1": num(r"Same top p:\s*([0-9.]+)") / 100}))
EOF
done

# The table, after the check that both tools measured the same thing: the same token ids (the
# KL base file holds llama.cpp's), the same scored count, the same f32 perplexity within 0.1 %.
"$EMBER" tokenize "$F32" --file "$TEXT" --json > "$WORK/ember-tokens.json"
python3 - "$OUT" "$KLD" "$WORK/ember-tokens.json" <<'EOF'
import json, struct, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "rb") as f:
    magic, n_ctx, n_vocab, n_chunk = struct.unpack("<8s3i", f.read(20))
    lcpp_ids = list(struct.unpack(f"<{n_ctx * n_chunk}i", f.read(4 * n_ctx * n_chunk)))
ember_ids = json.load(open(sys.argv[3]))["tokens"][: n_ctx * n_chunk]
e = next(r for r in rows if r["tool"] == "ember" and r["format"] == "f32")
l = next(r for r in rows if r["tool"] == "llama.cpp" and r["format"] == "F32")
same = (magic == b"_logits_" and ember_ids == lcpp_ids and e["tokens"] == l["tokens"]
        and abs(e["perplexity"] / l["perplexity"] - 1) < 1e-3)
print(f"f32 check: token ids {'equal' if ember_ids == lcpp_ids else 'DIFFERENT'} "
      f"({n_chunk} windows of {n_ctx}); ember {e['tokens']} scored tokens, perplexity "
      f"{e['perplexity']:.4f}; llama.cpp {l['tokens']}, {l['perplexity']:.4f}: "
      + ("the same tokens and model" if same else "MISMATCH: the rows below do not compare"))
print("| tool | format | file | perplexity | loss | KL mean | KL p99 | top-1 vs f32 |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    kl = lambda v: "0" if v == 0 else f"{v:.2e}"
    print(f"| {r['tool']} | {r['format']} | {r['bytes'] / 1e6:.2f} MB | {r['perplexity']:.3f} | "
          f"{r['loss']:.4f} | {kl(r['kl_mean'])} | {kl(r['kl_p99'])} | {100 * r['top1']:.2f} % |")
sys.exit(0 if same else 1)
EOF
echo "files kept in $WORK" >&2
