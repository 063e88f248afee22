#!/usr/bin/env bash
# Decode and prefill speed of emberlm and llama.cpp on the same weights, in one window, with runs
# alternating (ember, llama.cpp, ember, ...) so that a noisy neighbour hurts both alike.
#
#   bash benches/peers/compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]
#
# HF_DIR: a Hugging Face model directory (benches/peers/make_random_hf.py writes random ones at
# published shapes). LLAMA_CPP_DIR: a llama.cpp checkout built with cmake (build/bin/llama-bench,
# build/bin/llama-quantize), whose convert_hf_to_gguf.py makes its GGUF files. Each pair runs
#   ember bench M.ember --prompt-tokens 128 --gen-tokens 128 --threads T --json   (decode)
#   ember bench M.ember --prompt-tokens 512 --gen-tokens 1 --threads T --json     (prefill)
#   llama-bench -m M.gguf -p 0 -n 128 -t T / -p 512 -n 0 -t T, with -mmp 0 and 2 MiB pages
# for int8 vs Q8_0 and f16 vs F16, and prints every figure and the medians of the per-pair ratios.
# llama.cpp is given its faster setting here (MACHINE.md): weights read into memory (-mmp 0)
# with transparent huge pages via GLIBC_TUNABLES=glibc.malloc.hugetlb=1.
set -euo pipefail
HF="${1:?usage: compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]}"
LCPP="${2:?usage: compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]}"
PAIRS="${3:-3}"
shift 3 2>/dev/null || shift $#
THREADS=("${@:-1 2}")
[ ${#THREADS[@]} -eq 1 ] && read -r -a THREADS <<< "${THREADS[0]}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${WORK:-$(mktemp -d -t emberlm-peers.XXXX)}"
NAME="$(basename "$HF")"
EMBER="$ROOT/target/release/ember"
TRAIN="$ROOT/target/release/ember-train"
(cd "$ROOT" && cargo build --release -q -p emberlm-runtime -p emberlm-trainer)

for dt in int8 f16; do
    [ -f "$WORK/$NAME-$dt.ember" ] || "$TRAIN" export "$HF" --dtype "$dt" --out "$WORK/$NAME-$dt.ember" >&2
done
if [ ! -f "$WORK/$NAME-f16.gguf" ]; then
    python3 "$LCPP/convert_hf_to_gguf.py" "$HF" --outtype f16 --outfile "$WORK/$NAME-f16.gguf" >&2
fi
[ -f "$WORK/$NAME-q8_0.gguf" ] || "$LCPP/build/bin/llama-quantize" "$WORK/$NAME-f16.gguf" "$WORK/$NAME-q8_0.gguf" q8_0 >&2

ember_run() { # model threads prompt gen -> tokens/s of decode (gen>1) or prefill
    local j
    j=$("$EMBER" bench "$1" --threads "$2" --prompt-tokens "$3" --gen-tokens "$4" --json)
    if [ "$4" -gt 1 ]; then
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["decode_tokens_per_s"], j.get("decode_round_bandwidth_fraction", ""))' "$j"
    else
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["prefill_tokens_per_s"], "")' "$j"
    fi
}
llama_run() { # model threads prompt gen -> tokens/s
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$LCPP/build/bin/llama-bench" -m "$1" -t "$2" -p "$3" -n "$4" \
        -mmp 0 -r 1 -o json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}

printf '%-8s %-5s %-8s %-4s %12s %12s %8s %10s\n' model kind threads pair ember llama.cpp ratio ember_bw
for t in "${THREADS[@]}"; do
    for pair in int8:q8_0 f16:f16; do
        e="${pair%%:*}"; l="${pair##*:}"
        for kind in decode prefill; do
            if [ $kind = decode ]; then p=128; n=128; lp=0; ln=128; else p=512; n=1; lp=512; ln=0; fi
            ratios=()
            for i in $(seq 1 "$PAIRS"); do
                read -r es bw < <(ember_run "$WORK/$NAME-$e.ember" "$t" $p $n)
                ls=$(llama_run "$WORK/$NAME-$l.gguf" "$t" $lp $ln)
                r=$(python3 -c "print(f'{$es/$ls:.3f}')")
                ratios+=("$r")
                printf '%-8s %-5s %-8s %-4s %12.1f %12.1f %8s %10s\n' "$e/$l" $kind "$t" "$i" "$es" "$ls" "$r" "$bw"
            done
            med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
            echo "== $NAME $e vs $l $kind threads=$t: median ember/llama.cpp ratio $med over $PAIRS pairs"
        done
    done
done
echo "files kept in $WORK"
