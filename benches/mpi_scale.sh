#!/usr/bin/env bash
# Data-parallel scaling on this machine: tokens/s of one process against 2 MPI ranks with one
# thread each, the same global batch (batch 4 x --grad-accum 2), alternating, and the time the
# ranks spent combining gradients (`comm_seconds` of `pretrain --json`).
# Needs an ember-train built with `--features mpi` (default target/release/ember-train) and
# $EMBER_DATA. Usage: bash benches/mpi_scale.sh [PAIRS]
set -euo pipefail
B="${EMBER_TRAIN:-target/release/ember-train}"
D="${EMBER_DATA:?set EMBER_DATA}/the-verdict.txt"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
A=(--data "$D" --layers 6 --heads 6 --dim 384 --context 128 --batch 4 --grad-accum 2 --steps 12
   --eval-every 100 --threads 1 --sample-tokens 1 --json)
show() { python3 -c "import json,sys; d=json.load(sys.stdin); print('$1', round(d['tokens_per_s'],1), 'tok/s; train', round(d['train_seconds'],2), 's; comm', round(d['comm_seconds'],2), 's')"; }
for _ in $(seq "${1:-3}"); do
    rm -rf "$W"/s1 "$W"/s2
    "$B" pretrain "${A[@]}" --out "$W/s1" 2>/dev/null | show "1 process"
    mpirun -np 2 "$B" pretrain "${A[@]}" --out "$W/s2" 2>/dev/null | show "2 ranks  "
done
