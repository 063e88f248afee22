"""Chooses emberlm's 4-bit scheme by measurement (run by hand; see README "4-bit weights").

    python3 formats/tools/q4_schemes.py HF_DIR [HELDOUT_TOKENS.json]

HF_DIR: a GPT-2 directory written by `ember-train export-safetensors` (model.safetensors).
1. Fits a 16-level codebook (Lloyd's algorithm) to the matrices' blocks of 32, each block scaled
   so that its largest-magnitude element is -1 (the sign flipped where needed), with the level -1
   pinned: the non-linear codebook of the NL scheme, printed as int8 levels (x 127).
2. Prints, over a fixed sample of 100k blocks of the 2-D matrices, the relative RMS error of each candidate scheme at
   blocks of 32: Q4_0-style (levels -8..7, f16 scale), Q4_1-style (levels 0..15, f16 scale and
   f16 minimum: 5 bits a weight), NL (the fitted codebook, f16 scale, 4.5 bits a weight), each
   with the same scale search as formats/src/quant.rs.
Written for emberlm from the schemes' descriptions; no other project's code.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file

BLOCK = 32


def blocks_of(w):
    r, c = w.shape
    c32 = c - c % BLOCK
    return w[:, :c32].reshape(-1, BLOCK).astype(np.float64)


def fit_codebook(b, iters=60):
    # Normalise: the largest |x| of each block becomes -1.
    idx = np.abs(b).argmax(axis=1)
    m = b[np.arange(len(b)), idx]
    m[m == 0] = 1.0
    v = (b / -m[:, None]).ravel()
    v = v[np.abs(v + 1.0) > 1e-9]  # the pinned extremes themselves
    levels = np.quantile(v, (np.arange(16) + 0.5) / 16)
    levels[0] = -1.0
    for _ in range(iters):
        edges = (levels[1:] + levels[:-1]) / 2
        a = np.searchsorted(edges, v)
        for k in range(1, 16):
            sel = v[a == k]
            if len(sel):
                levels[k] = sel.mean()
        levels.sort()
        levels[0] = -1.0
    return levels


def nearest(v, levels):
    edges = (levels[1:] + levels[:-1]) / 2
    return np.searchsorted(edges, v)


def f16(x):
    return x.astype(np.float16).astype(np.float64)


def quant_codebook(b, levels, steps=6):
    """Best of scale candidates: max-|x| element onto the lowest or the highest level, each times
    (1 + k/32), k in -steps..steps; then one least-squares rescale (as quant.rs)."""
    idx = np.abs(b).argmax(axis=1)
    m = b[np.arange(len(b)), idx]
    best = np.full(len(b), np.inf)
    out = np.zeros_like(b)
    for ext in (levels[0], levels[-1]):
        for k in range(-steps, steps + 1):
            d = f16(m / (ext * (1 + k / 32)))
            dd = np.where(d == 0, 1, d)
            q = levels[nearest(b / dd[:, None], levels)] * d[:, None]
            err = ((b - q) ** 2).sum(axis=1)
            better = err < best
            best[better], out[better] = err[better], q[better]
    return out


def quant_q4_1(b):
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = f16((hi - lo) / 15)
    mn = f16(lo)
    dd = np.where(d == 0, 1, d)
    q = np.clip(np.round((b - mn[:, None]) / dd[:, None]), 0, 15)
    return q * d[:, None] + mn[:, None]


def rel_rms(b, q):
    return float(np.sqrt(((b - q) ** 2).sum() / (b ** 2).sum()))


def main():
    tensors = load_file(sys.argv[1] + "/model.safetensors")
    mats = [blocks_of(v) for k, v in sorted(tensors.items()) if v.ndim == 2 and "wpe" not in k]
    b = np.concatenate(mats)
    # A fixed random sample of 100k blocks keeps this to seconds.
    b = b[np.random.default_rng(0).choice(len(b), size=min(len(b), 100_000), replace=False)]
    levels = fit_codebook(b)
    cb = np.round(levels * 127).astype(int)
    print("fitted codebook (x127):", cb.tolist())
    cbf = cb.astype(np.float64)
    linear = np.arange(-8, 8, dtype=np.float64)
    res = {
        "q4_0 (levels -8..7), 4.5 bits": rel_rms(b, quant_codebook(b, linear)),
        "q4_1 (0..15 + min), 5.0 bits": rel_rms(b, quant_q4_1(b)),
        "nl (fitted codebook), 4.5 bits": rel_rms(b, quant_codebook(b, cbf)),
    }
    for k, v in res.items():
        print(f"{k:34s} relative RMS error {v:.5f}")
    print(json.dumps({"codebook": cb.tolist(), "rel_rms": res}))


if __name__ == "__main__":
    main()
