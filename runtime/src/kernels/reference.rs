//! Plain reference twins of every kernel: scalar Rust, no `unsafe`, always compiled.
//!
//! They define what each fast kernel computes; the architecture kernels are tested against them.
//! Letters as in [`super`]: R rows (outputs), C columns (inputs), NB = ceil(C / 32) Q8 blocks per
//! row, N tokens, L the length of a plain vector.
//!
//! Sums run in f32 in index order (block by block for Q8), so the fast kernels differ from these only
//! by the order of f32 additions (and, for `gelu_tanh` / `softmax`, by their polynomial `exp`).

#![forbid(unsafe_code)]

use super::Q8Matrix;
use emberlm_formats::quant::Q8_BLOCK;
use half::f16;

/// y (R) = W (R, C) · x (C) for rows `row_start .. row_start + y.len()` of `w`.
pub fn matvec_f32_rows(w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    for (i, out) in y.iter_mut().enumerate() {
        let row = &w[(row_start + i) * c..(row_start + i + 1) * c];
        *out = dot_f32(row, x);
    }
}

/// f16 twin of [`matvec_f32_rows`]: each weight converts exactly to f32.
pub fn matvec_f16_rows(w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
    let c = x.len();
    for (i, out) in y.iter_mut().enumerate() {
        let row = &w[(row_start + i) * c..(row_start + i + 1) * c];
        *out = dot_f32_f16(x, row);
    }
}

/// out (L) = x (L) converted exactly from f16.
pub fn f16_to_f32(x: &[f16], out: &mut [f32]) {
    for (o, h) in out.iter_mut().zip(x) {
        *o = h.to_f32();
    }
}

/// Q8 twin of [`matvec_f32_rows`]: `y[r] = Σ_b d[r,b] · Σ_{c in block b} q[r,c] · x[c]`, in f32,
/// with the activations `x` used exactly (not quantized).
pub fn matvec_q8_rows(w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
    for (i, out) in y.iter_mut().enumerate() {
        *out = dot_q8_row(w, row_start + i, x);
    }
}

/// One output of the Q8 product: row `r` of `w` against `x` (C).
fn dot_q8_row(w: Q8Matrix<'_>, r: usize, x: &[f32]) -> f32 {
    let c = w.cols();
    let nb = w.blocks_per_row();
    let q = &w.quants()[r * c..(r + 1) * c];
    let d = &w.scales()[r * nb..(r + 1) * nb];
    let mut acc = 0f32;
    for ((qb, xb), db) in q.chunks(Q8_BLOCK).zip(x.chunks(Q8_BLOCK)).zip(d) {
        let s: f32 = qb.iter().zip(xb).map(|(&q, &x)| f32::from(q) * x).sum();
        acc += s * db.to_f32();
    }
    acc
}

/// Attention scores of a group of `heads` (Hg) heads: s (Hg, P) with
/// `s[j·P + t] = k[t, j, :] · q[j, :]`, keys k (P, Hg, D), queries q (Hg, D).
pub fn group_scores(k: &[f32], q: &[f32], s: &mut [f32], heads: usize) {
    let (p, d) = (s.len() / heads, q.len() / heads);
    for (i, st) in s.iter_mut().enumerate() {
        let (j, t) = (i / p, i % p);
        *st = dot_f32(&q[j * d..(j + 1) * d], &k[(t * heads + j) * d..][..d]);
    }
}

/// [`group_scores`] with keys in f16 (an f16 KV cache).
pub fn group_scores_f16(k: &[f16], q: &[f32], s: &mut [f32], heads: usize) {
    let (p, d) = (s.len() / heads, q.len() / heads);
    for (i, st) in s.iter_mut().enumerate() {
        let (j, t) = (i / p, i % p);
        *st = dot_f32_f16(&q[j * d..(j + 1) * d], &k[(t * heads + j) * d..][..d]);
    }
}

/// Attention's weighted sum of values for a group of `heads` (Hg) heads: out (Hg, D) with
/// `out[j, :] = Σ_t w[j·P + t] · v[t, j, :]`, values v (P, Hg, D), weights w (Hg, P);
/// accumulated position after position in f32.
pub fn group_weighted(w: &[f32], v: &[f32], out: &mut [f32], heads: usize) {
    let (p, d) = (w.len() / heads, out.len() / heads);
    out.fill(0.0);
    for (j, oj) in out.chunks_exact_mut(d.max(1)).enumerate().take(heads) {
        for t in 0..p {
            axpy(w[j * p + t], &v[(t * heads + j) * d..][..d], oj);
        }
    }
}

/// [`group_weighted`] with values in f16 (an f16 KV cache).
pub fn group_weighted_f16(w: &[f32], v: &[f16], out: &mut [f32], heads: usize) {
    let (p, d) = (w.len() / heads, out.len() / heads);
    out.fill(0.0);
    for (j, oj) in out.chunks_exact_mut(d.max(1)).enumerate().take(heads) {
        for t in 0..p {
            axpy_f16(w[j * p + t], &v[(t * heads + j) * d..][..d], oj);
        }
    }
}

/// Σ_b (ad[b] · bd[b]) · Σ_{i in block b} a[i] · b[i] for two rows quantized in blocks of 32
/// (the last may be short): each block's sum in exact integers, the blocks added in f32 in
/// order. The score of an int8 KV cache's key row and a quantized query.
pub fn dot_q8q8(a: (&[i8], &[f32]), b: (&[i8], &[f32])) -> f32 {
    let mut acc = 0f32;
    for (((qa, qb), &da), &db) in (a.0.chunks(Q8_BLOCK).zip(b.0.chunks(Q8_BLOCK)))
        .zip(a.1)
        .zip(b.1)
    {
        let s: i32 = qa
            .iter()
            .zip(qb)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum();
        acc += (da * db) * s as f32;
    }
    acc
}

/// Attention scores against an int8 KV cache: [`group_scores`] with keys k (P, Hg, D) held as
/// quants (P·Hg·D) and one scale per block of 32 of each row of D (P·Hg·NBD, NBD = ⌈D/32⌉), and
/// queries q (Hg, D) quantized by [`quantize_q8`] row by row (quants (Hg·D), scales
/// (Hg·NBD)): `s[j·P + t] =` [`dot_q8q8`] of query j and key row (t, j).
pub fn group_scores_q8(k: (&[i8], &[f32]), q: (&[i8], &[f32]), s: &mut [f32], heads: usize) {
    let (p, d) = (s.len() / heads, q.0.len() / heads);
    let nbd = d.div_ceil(Q8_BLOCK);
    for (i, st) in s.iter_mut().enumerate() {
        let (j, t) = (i / p, i % p);
        let r = t * heads + j;
        *st = dot_q8q8(
            (&q.0[j * d..][..d], &q.1[j * nbd..][..nbd]),
            (&k.0[r * d..][..d], &k.1[r * nbd..][..nbd]),
        );
    }
}

/// Attention's weighted sum against an int8 KV cache: [`group_weighted`] with values v laid out
/// as the keys of [`group_scores_q8`]. For each position t in order, each element of
/// `out[j, :]` becomes `fma(w[j·P + t] · vd[t, j, b], vq[t, j, i], out)` (b the element's
/// block): one rounding per position, as the SIMD kernels' fused multiply-add.
pub fn group_weighted_q8(w: &[f32], v: (&[i8], &[f32]), out: &mut [f32], heads: usize) {
    let (p, d) = (w.len() / heads, out.len() / heads);
    let nbd = d.div_ceil(Q8_BLOCK);
    out.fill(0.0);
    for (j, oj) in out.chunks_exact_mut(d.max(1)).enumerate().take(heads) {
        for t in 0..p {
            let r = t * heads + j;
            let wt = w[j * p + t];
            let rows = oj
                .chunks_mut(Q8_BLOCK)
                .zip(v.0[r * d..][..d].chunks(Q8_BLOCK));
            for ((ob, qb), &db) in rows.zip(&v.1[r * nbd..][..nbd]) {
                let c = wt * db;
                for (o, &q) in ob.iter_mut().zip(qb) {
                    *o = c.mul_add(f32::from(q), *o);
                }
            }
        }
    }
}

/// Activation quantization for the Q8×Q8 decode: for each block of 32 elements of x (C) (the
/// last may be short), `d[b] = max|x| / 127` and `q = round(x / d)` (half away from zero, within
/// ±127); a block of zeros gets d = 0 and q = 0. So |x - q·d| ≤ d/2 per element.
///
/// # Panics
/// If `q.len() != x.len()` or `d.len() != ceil(C / 32)`.
pub fn quantize_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    assert_eq!(q.len(), x.len(), "quantize_q8: q length must be C");
    assert_eq!(
        d.len(),
        x.len().div_ceil(Q8_BLOCK),
        "quantize_q8: d length must be ceil(C / 32)"
    );
    for ((xb, qb), db) in x.chunks(Q8_BLOCK).zip(q.chunks_mut(Q8_BLOCK)).zip(d) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        *db = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &x) in qb.iter_mut().zip(xb) {
            let r = x * inv;
            // Round half away from zero by truncating |r| + 0.5; `as` saturates.
            let v = ((r.abs() + 0.5) as i32).min(127) as i8;
            *q = if r < 0.0 { -v } else { v };
        }
    }
}

/// Q8×Q8 twin of [`matvec_q8_rows`] for activations quantized by [`quantize_q8`] (xq (C), xd
/// (NB)): `y[r] = Σ_b (d[r,b] · xd[b]) · Σ_{c in block b} q[r,c] · xq[c]`, each block's sum in
/// exact integers, the blocks accumulated in f32 in order.
pub fn matvec_q8q8_rows(w: Q8Matrix<'_>, xq: &[i8], xd: &[f32], y: &mut [f32], row_start: usize) {
    let (c, nb) = (w.cols(), w.blocks_per_row());
    for (i, out) in y.iter_mut().enumerate() {
        let r = row_start + i;
        let q = &w.quants()[r * c..(r + 1) * c];
        let d = &w.scales()[r * nb..(r + 1) * nb];
        let mut acc = 0f32;
        for (((qb, xb), db), xdb) in q.chunks(Q8_BLOCK).zip(xq.chunks(Q8_BLOCK)).zip(d).zip(xd) {
            let s: i32 = qb
                .iter()
                .zip(xb)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            acc += (db.to_f32() * xdb) * s as f32;
        }
        *out = acc;
    }
}

/// Σ a[i] · b[i] over L elements.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Σ a[i] · b[i] with `b` in f16 (a KV-cache row).
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b.to_f32()).sum()
}

/// y (L) += alpha · x (L).
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// y (L) += alpha · x (L) with `x` in f16.
pub fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x.to_f32();
    }
}

/// Σ x[i] (used by the bandwidth probe).
pub fn sum_f32(x: &[f32]) -> f32 {
    x.iter().sum()
}

/// out (L) = (x - mean) / sqrt(var + eps) · scale + shift, with the biased variance (divide by L),
/// computed in two passes (mean, then squared deviations).
pub fn layernorm(x: &[f32], scale: &[f32], shift: &[f32], out: &mut [f32], eps: f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * scale[i] + shift[i];
    }
}

/// √(2/π), the GELU tanh approximation's inner constant.
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The GELU tanh approximation's cubic coefficient.
pub const GELU_CUBIC: f32 = 0.044_715;

/// x (L) ← 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))), in place.
pub fn gelu_tanh(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = SQRT_2_OVER_PI * (*v + GELU_CUBIC * *v * *v * *v);
        *v = 0.5 * *v * (1.0 + u.tanh());
    }
}

/// x (L) ← exp(x - max x) / Σ exp(x - max x), in place. Entries equal to -∞ become 0; at least
/// one entry must be finite.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// x (L) += y (L): the residual connection.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// out (L) = x · w / √(mean(x²) + eps): RMSNorm (Llama, Qwen, Gemma; Gemma's 1 + w is stored).
/// The mean of squares accumulates in f64 (one rounding to f32), so it is the f32 value of the
/// exact mean whatever the order a fast twin would sum in.
pub fn rmsnorm(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let rstd = 1.0 / (ms as f32 + eps).sqrt();
    for ((o, &v), &s) in out.iter_mut().zip(x).zip(w) {
        *o = v * rstd * s;
    }
}

/// Rotary position embedding of one head x (D), rotate-half convention (pairs (i, i + D/2), as
/// Hugging Face's `rotate_half`): `x[i] ← x[i]·cos[i] − x[i+D/2]·sin[i]`,
/// `x[i+D/2] ← x[i+D/2]·cos[i] + x[i]·sin[i]`, with cos, sin (D/2) the position's table row.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let h = x.len() / 2;
    let (a, b) = x.split_at_mut(h);
    for i in 0..h {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

/// g (L) ← SiLU(g) · u = g / (1 + exp(−g)) · u: SwiGLU's gate applied to the up projection.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// g (L) ← GELU_tanh(g) · u: GeGLU (Gemma's `gelu_pytorch_tanh`).
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    gelu_tanh(g);
    mul(g, u);
}

/// x (L) ← x · y, elementwise.
pub fn mul(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x *= y;
    }
}
