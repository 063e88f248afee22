#!/usr/bin/env bash
# Decode and prefill speed of emberlm and llama.cpp on the same weights, in one window, with runs
# alternating (ember, llama.cpp, ember, ...) so that a noisy neighbour hurts both alike.
#
#   bash benches/peers/compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]
#
# HF_DIR: a Hugging Face model directory (benches/peers/make_random_hf.py writes random ones at
# published shapes, GPT-2 124M included). LLAMA_CPP_DIR: a llama.cpp checkout built with cmake
# (build/bin/llama-bench, build/bin/llama-quantize), whose convert_hf_to_gguf.py makes its GGUF
# files. Environment:
#   DTYPES  ember:llama.cpp pairs to compare (default "int8:q8_0 f16:f16"; also f32:f32,
#           int4:q4_0, int4:q4_k_m)
#   KINDS   "decode prefill" (default both)
#   WORK    where the converted files are kept (default a new temporary directory)
# Each pair runs, for every thread count T:
#   decode:  ember bench M.ember --prompt-tokens 1 --gen-tokens 128 --threads T --json
#            llama-bench -m M.gguf -p 0 -n 128 -t T
#            (both decode 128 tokens attending to 1..128 positions: the same depth)
#   prefill: ember bench M.ember --prompt-tokens 512 --gen-tokens 1 --threads T --json
#            llama-bench -m M.gguf -p 512 -n 0 -t T
# llama.cpp runs twice per pair, with its weights mapped (-mmp 1) and read into memory with
# transparent huge pages (-mmp 0, GLIBC_TUNABLES=glibc.malloc.hugetlb=1); the faster of the two is
# its figure (its best setting, which differs by thread count on this machine: MACHINE.md). The
# script prints every figure, ember's decode fraction of the same-run bandwidth probe, and the
# median of the per-pair ratios.
set -euo pipefail
HF="${1:?usage: compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]}"
LCPP="${2:?usage: compare.sh HF_DIR LLAMA_CPP_DIR [PAIRS] [THREADS...]}"
PAIRS="${3:-3}"
shift 3 2>/dev/null || shift $#
THREADS=("${@:-1 2}")
[ ${#THREADS[@]} -eq 1 ] && read -r -a THREADS <<< "${THREADS[0]}"
read -r -a DTYPE_PAIRS <<< "${DTYPES:-int8:q8_0 f16:f16}"
read -r -a KIND_LIST <<< "${KINDS:-decode prefill}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${WORK:-$(mktemp -d -t emberlm-peers.XXXX)}"
NAME="$(basename "$HF")"
EMBER="$ROOT/target/release/ember"
TRAIN="$ROOT/target/release/ember-train"
(cd "$ROOT" && cargo build --release -q -p emberlm-runtime -p emberlm-trainer)

for pair in "${DTYPE_PAIRS[@]}"; do
    e="${pair%%:*}"; l="${pair##*:}"
    [ -f "$WORK/$NAME-$e.ember" ] || "$TRAIN" export "$HF" --dtype "$e" --out "$WORK/$NAME-$e.ember" >&2
    if [ ! -f "$WORK/$NAME-$l.gguf" ]; then
        case "$l" in
            f32 | f16) python3 "$LCPP/convert_hf_to_gguf.py" "$HF" --outtype "$l" --outfile "$WORK/$NAME-$l.gguf" >&2 ;;
            *)
                [ -f "$WORK/$NAME-f16.gguf" ] ||
                    python3 "$LCPP/convert_hf_to_gguf.py" "$HF" --outtype f16 --outfile "$WORK/$NAME-f16.gguf" >&2
                "$LCPP/build/bin/llama-quantize" "$WORK/$NAME-f16.gguf" "$WORK/$NAME-$l.gguf" "$l" >&2
                ;;
        esac
    fi
done

ember_run() { # model threads prompt gen -> tokens/s of decode (gen>1) or prefill, probe fraction
    local j
    j=$("$EMBER" bench "$1" --threads "$2" --prompt-tokens "$3" --gen-tokens "$4" --json)
    if [ "$4" -gt 1 ]; then
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["decode_tokens_per_s"], j.get("decode_round_bandwidth_fraction", "-"))' "$j"
    else
        python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j["prefill_tokens_per_s"], "-")' "$j"
    fi
}
# llama-bench's switch between mapped and read-in weights: `-mmp 1|0` until 2025, `-lm mmap|none`
# in newer builds (which reject -mmp).
if "$LCPP/build/bin/llama-bench" --help 2>&1 | grep -q -- "--load-mode"; then
    MAP_FLAG=(-lm mmap); READ_FLAG=(-lm none)
else
    MAP_FLAG=(-mmp 1); READ_FLAG=(-mmp 0)
fi
llama_run() { # model threads prompt gen mmap -> tokens/s
    local env=() load=("${MAP_FLAG[@]}")
    [ "$5" = 0 ] && env=(GLIBC_TUNABLES=glibc.malloc.hugetlb=1) && load=("${READ_FLAG[@]}")
    env "${env[@]}" "$LCPP/build/bin/llama-bench" -m "$1" -t "$2" -p "$3" -n "$4" \
        "${load[@]}" -r 1 -o json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}

printf '%-11s %-7s %-3s %-4s %9s %9s %9s %7s %9s\n' pair kind T run ember lcpp-mmap lcpp-thp ratio ember_bw
for t in "${THREADS[@]}"; do
    for pair in "${DTYPE_PAIRS[@]}"; do
        e="${pair%%:*}"; l="${pair##*:}"
        for kind in "${KIND_LIST[@]}"; do
            if [ "$kind" = decode ]; then p=1; n=128; lp=0; ln=128; else p=512; n=1; lp=512; ln=0; fi
            ratios=()
            for i in $(seq 1 "$PAIRS"); do
                read -r es bw < <(ember_run "$WORK/$NAME-$e.ember" "$t" $p $n)
                lm=$(llama_run "$WORK/$NAME-$l.gguf" "$t" $lp $ln 1)
                lt=$(llama_run "$WORK/$NAME-$l.gguf" "$t" $lp $ln 0)
                r=$(python3 -c "print(f'{$es/max($lm,$lt):.3f}')")
                ratios+=("$r")
                printf '%-11s %-7s %-3s %-4s %9.1f %9.1f %9.1f %7s %9s\n' "$e/$l" "$kind" "$t" "$i" "$es" "$lm" "$lt" "$r" "$bw"
            done
            med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
            echo "== $NAME $e vs $l $kind threads=$t: median ember / best llama.cpp ratio $med over $PAIRS pairs"
        done
    done
done
echo "files kept in $WORK"
