#!/usr/bin/env python3
"""Decode speed of two kernel sets of one `ember` binary on one host, in alternating runs.

    python3 benches/peers/kernels_ab.py [--ember target/release/ember] [--pairs 3]
        [--kernels avx2,avx512] [--dtypes int8,f16,f32] [--threads 1,2] [--size 124m]

Each pair runs `EMBER_KERNELS=K ember bench --random SIZE --dtype D --threads T --json` once per
kernel set K, alternating (A, B, A, B, ...) so that a noisy neighbour hurts both alike, and
prints every run, then per case the median decode tokens/s of each set, the median of the
per-pair ratios (B / A) and the median `decode_round_bandwidth_fraction` (decode's weight
traffic over the same-run 1 GiB read probe).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def run(ember, kernels, size, dtype, threads):
    env = dict(os.environ, EMBER_KERNELS=kernels)
    out = subprocess.run(
        [ember, "bench", "--random", size, "--dtype", dtype, "--threads", str(threads), "--json"],
        env=env, check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["decode_tokens_per_s"], j["decode_round_bandwidth_fraction"], j["kernels"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ember", default="target/release/ember")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--kernels", default="avx2,avx512")
    p.add_argument("--dtypes", default="int8,f16,f32")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--size", default="124m")
    a = p.parse_args()
    sets = a.kernels.split(",")
    if len(sets) != 2:
        sys.exit("--kernels takes two comma-separated names (A,B)")
    # A set the host cannot run (no AVX-512 VNNI, say) is named and skipped, not an error.
    for k in sets:
        probe = subprocess.run([a.ember, "bench", "--random", a.size, "--prompt-tokens", "1",
                                "--gen-tokens", "1", "--json"],
                               env=dict(os.environ, EMBER_KERNELS=k), capture_output=True, text=True)
        if probe.returncode != 0:
            print(f"SKIPPED: this host cannot run the kernel set {k!r}: {probe.stderr.strip()}")
            return
    rows = []
    for t in [int(x) for x in a.threads.split(",")]:
        for d in a.dtypes.split(","):
            runs = {k: [] for k in sets}
            for i in range(a.pairs):
                for k in sets:
                    tps, frac, name = run(a.ember, k, a.size, d, t)
                    runs[k].append((tps, frac))
                    print(f"{d:5} t{t} pair {i + 1} {name:22} {tps:8.1f} tok/s  bw fraction {frac:.2f}",
                          flush=True)
            ratios = [b[0] / a_[0] for a_, b in zip(runs[sets[0]], runs[sets[1]])]
            rows.append((d, t, *(statistics.median(r[0] for r in runs[k]) for k in sets),
                         statistics.median(ratios),
                         *(statistics.median(r[1] for r in runs[k]) for k in sets)))
    print(f"\n{'dtype':5} {'thr':>3} {sets[0]:>10} {sets[1]:>10} {'ratio':>6} "
          f"{'bw ' + sets[0]:>10} {'bw ' + sets[1]:>10}   (medians of {a.pairs} alternating pairs)")
    for d, t, ta, tb, r, fa, fb in rows:
        print(f"{d:5} {t:>3} {ta:10.1f} {tb:10.1f} {r:6.2f} {fa:10.2f} {fb:10.2f}")


if __name__ == "__main__":
    main()
