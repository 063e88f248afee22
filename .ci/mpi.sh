#!/usr/bin/env bash
# Data-parallel pretraining on MPI (trainer/src/dist.rs), as users start it: Open MPI from the
# system's packages, `mpirun`, an ember-train built with `--features mpi`.
#  1. 2 ranks (`mpirun --oversubscribe -np 2`) write the same checkpoint, bit for bit, as one
#     process with the same global batch;
#  2. rank 1 is killed mid-run: the job ends, the last checkpoint is intact, and a resume on ONE
#     process continues to the same checkpoint as an uninterrupted run.
set -eEuo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${EMBER_DATA:-$ROOT/../shared/data}/the-verdict.txt"
if [ ! -f "$DATA" ]; then
    echo "!! $DATA missing: the MPI check needs the book's data"; exit 1
fi
if ! command -v mpirun >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    echo "installing Open MPI and libclang (the mpi crate's bindings are generated at build time)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || true
    apt-get install -y -q openmpi-bin libopenmpi-dev libclang-dev >/dev/null
fi
mpirun --version | head -1
# CI runs as root; Open MPI refuses that unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build -q --release -p emberlm-trainer --features mpi
W="$(mktemp -d)"
trap 'rm -rf "$W"' EXIT
# The runs' progress goes to one log, printed when something fails.
trap 'echo "!! failed; the runs said:"; tail -40 "$W/log"' ERR
cp target/release/ember-train "$W/ember-train"
B="$W/ember-train"

same_checkpoint() { # dir dir: model and optimizer state equal bit for bit, and the position
    cmp "$1/model.safetensors" "$2/model.safetensors"
    cmp "$1/optimizer.safetensors" "$2/optimizer.safetensors"
    python3 - "$1/trainer.json" "$2/trainer.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for k in ("train_seconds",):  # wall time differs
    a.pop(k, None); b.pop(k, None)
assert a == b, [k for k in a if a.get(k) != b.get(k)]
PY
}

echo "-- 1. two ranks against one process (global batch 2 x 2 micro-batches, 8 steps)"
SMALL=(--data "$DATA" --layers 2 --heads 2 --dim 64 --context 32 --batch 2 --grad-accum 2
       --steps 8 --eval-every 4 --dropout 0.1 --threads 1)
"$B" pretrain "${SMALL[@]}" --out "$W/one" --json > "$W/one.json" 2>> "$W/log"
mpirun --oversubscribe -np 2 "$B" pretrain "${SMALL[@]}" --out "$W/two" --json > "$W/two.json" 2>> "$W/log"
same_checkpoint "$W/one/checkpoints/step-00000008" "$W/two/checkpoints/step-00000008"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['ranks']==2, d; print('2 ranks: comm %.2f s of %.2f s' % (d['comm_seconds'], d['train_seconds']))" "$W/two.json"
echo "   same checkpoint, bit for bit"

echo "-- 2. kill rank 1 mid-run, resume on one process"
BIG=(--data "$DATA" --layers 4 --heads 4 --dim 128 --context 64 --batch 4 --grad-accum 2
     --steps 40 --eval-every 10 --checkpoint-every 4 --threads 1)
"$B" pretrain "${BIG[@]}" --out "$W/ref" --json > "$W/ref.json" 2>> "$W/log"
mpirun --oversubscribe -np 2 "$B" pretrain "${BIG[@]}" --out "$W/cut" > "$W/cut.log" 2>&1 &
RUN=$!
victim=""
for _ in $(seq 1 600); do
    if [ -f "$W/cut/checkpoints/latest" ] && [ "$(cat "$W/cut/checkpoints/latest")" \> "step-00000007" ]; then
        for p in $(pgrep -f "$B pretrain" || true); do
            if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$p; fi
        done
        [ -n "$victim" ] && break
    fi
    sleep 0.1
done
[ -n "$victim" ] || { echo "!! never saw rank 1 after step 8"; cat "$W/cut.log"; exit 1; }
kill -9 "$victim"
if wait "$RUN"; then echo "!! mpirun succeeded although rank 1 was killed"; exit 1; fi
latest="$(cat "$W/cut/checkpoints/latest")"
echo "   killed rank 1 (pid $victim); mpirun failed as it must; last checkpoint: $latest"
grep -E "rank|signal|exited" "$W/cut.log" | head -3 | sed 's/^/   mpirun: /'
[ "$latest" \< "step-00000040" ] || { echo "!! the run finished before the kill"; exit 1; }
"$B" pretrain --resume "$W/cut" --threads 1 --json > "$W/resumed.json" 2>> "$W/log"
same_checkpoint "$W/ref/checkpoints/step-00000040" "$W/cut/checkpoints/step-00000040"
echo "   resumed on 1 process from $latest: step 40 equals the uninterrupted run, bit for bit"
