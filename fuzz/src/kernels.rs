//! The runtime's fast kernels (AVX2 + FMA + F16C here; whatever `Kernels::detect` picks) against
//! their reference twins, on arbitrary small shapes (tails of every width), slices that start at
//! arbitrary element offsets (so never 32-byte aligned by luck), Q8 views built by
//! `Q8Matrix::new` from arbitrary lengths, and arbitrary row ranges. Under miri with
//! `-C target-feature=+avx2,+fma,+f16c` (`.ci/miri.sh`), the replayed seeds check the SIMD code
//! for out-of-bounds and misaligned accesses.
//!
//! Letters as in `emberlm_runtime::kernels`: R rows, C columns, N tokens, L vector length.
//!
//! Values are small (|v| < 4), so the bounds below are meaningful; every output of a fast kernel
//! must be within its twin's bound (the accuracy contract of `emberlm_runtime::kernels`).

use super::input::Input;
use emberlm_runtime::kernels::geometry::packed_len;
use emberlm_runtime::kernels::{Epilogue, Kernels, Mat, Q8_BLOCK, Q8Matrix};
use half::f16;

/// Matrix-vector, matmul and dot: |fast - reference| ≤ this · Σ|w·x| (+ [`ABS_FLOOR`]).
const MATVEC_REL_TOL: f32 = 1e-5;
/// axpy: |fast - reference| ≤ this · (|alpha·x| + |y|) (+ [`ABS_FLOOR`]).
const AXPY_REL_TOL: f32 = 1e-6;
/// LayerNorm: |fast - reference| ≤ this · (|scale| · |normalised| + |shift| + 1).
const LAYERNORM_TOL: f32 = 1e-4;
/// GELU: |fast - reference| ≤ this · max(1, |x|).
const GELU_ABS_TOL: f32 = 2e-6;
/// Softmax: |fast - reference| ≤ this · reference + [`ABS_FLOOR`].
const SOFTMAX_REL_TOL: f32 = 2e-5;
/// Absolute slack for sums that cancel to (nearly) zero.
const ABS_FLOOR: f32 = 1e-6;

/// Longest C (and L) drawn: more than two 32-column Q8 blocks and several 8-lane tails.
const MAX_C: usize = 80;
/// Most rows drawn.
const MAX_R: usize = 20;

/// `n` values in [-4, 4) from the input, stored from element `off` of a fresh buffer.
fn floats(input: &mut Input<'_>, n: usize, off: usize) -> Vec<f32> {
    let mut v = vec![0.0; off];
    v.extend((0..n).map(|_| f32::from(input.u8() as i8) / 32.0));
    v
}

fn halves(input: &mut Input<'_>, n: usize, off: usize) -> Vec<f16> {
    floats(input, n, off)
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect()
}

fn assert_close(what: &str, i: usize, fast: f32, reference: f32, bound: f32) {
    let err = (fast - reference).abs();
    assert!(
        err <= bound,
        "{what}[{i}]: fast {fast} reference {reference} |err| {err:e} > {bound:e}"
    );
}

/// Σ|w·x| for row `r` of W (R, C) given as a function of the column.
fn abs_dot(c: usize, w: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    (0..c).map(|j| (w(j) * x[j]).abs()).sum()
}

/// The target's body.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let fast = Kernels::detect().with_threads(1);
    let refk = Kernels::reference().with_threads(1);
    let op = input.u8() % 9;
    let off = input.u8() as usize % 8;
    let r = input.u8() as usize % (MAX_R + 1);
    let c = input.u8() as usize % (MAX_C + 1);
    let row_start = if r == 0 { 0 } else { input.u8() as usize % r };
    let rows = r - row_start;
    match op {
        0 | 1 => {
            let x = floats(&mut input, c, off);
            let x = &x[off..];
            let (mut y1, mut y2) = (vec![0.0; rows + off], vec![0.0; rows + off]);
            let w32;
            let w16;
            let wf: Box<dyn Fn(usize, usize) -> f32 + '_> = if op == 0 {
                w32 = floats(&mut input, r * c, off);
                let w = &w32[off..];
                fast.matvec_f32_rows(w, x, &mut y1[off..], row_start);
                refk.matvec_f32_rows(w, x, &mut y2[off..], row_start);
                Box::new(move |i, j| w[i * c + j])
            } else {
                w16 = halves(&mut input, r * c, off);
                let w = &w16[off..];
                fast.matvec_f16_rows(w, x, &mut y1[off..], row_start);
                refk.matvec_f16_rows(w, x, &mut y2[off..], row_start);
                Box::new(move |i, j| w[i * c + j].to_f32())
            };
            for i in 0..rows {
                let bound = MATVEC_REL_TOL * abs_dot(c, |j| wf(row_start + i, j), x) + ABS_FLOOR;
                assert_close("matvec", i, y1[off + i], y2[off + i], bound);
            }
        }
        2 | 3 => {
            let nb = c.div_ceil(Q8_BLOCK);
            let mut q = vec![0i8; off];
            q.extend(input.bytes(r * c).iter().map(|&b| b as i8));
            q.resize(off + r * c, 0);
            let d: Vec<f16> = (0..off + r * nb)
                .map(|_| f16::from_f32(f32::from(input.u8()) / 4096.0))
                .collect();
            // A wrong length must be an error, never a view.
            let short = r * c > 0 && input.bool();
            let qs = if short { &q[off + 1..] } else { &q[off..] };
            let Ok(w) = Q8Matrix::new(qs, &d[off..], r, c) else {
                assert!(short, "Q8Matrix::new rejected consistent lengths");
                return;
            };
            assert!(!short, "Q8Matrix::new accepted a short quants slice");
            let wf = |i: usize, j: usize| {
                f32::from(q[off + i * c + j]) * d[off + i * nb + j / Q8_BLOCK].to_f32()
            };
            if op == 2 {
                let x = floats(&mut input, c, off);
                let x = &x[off..];
                let (mut y1, mut y2) = (vec![0.0; rows], vec![0.0; rows]);
                fast.matvec_q8_rows(w, x, &mut y1, row_start);
                refk.matvec_q8_rows(w, x, &mut y2, row_start);
                for i in 0..rows {
                    let bound =
                        MATVEC_REL_TOL * abs_dot(c, |j| wf(row_start + i, j), x) + ABS_FLOOR;
                    assert_close("matvec_q8", i, y1[i], y2[i], bound);
                }
            } else if c > 0 {
                // The prefill product (C = 0 is a caller error there, like a mismatched shape).
                let n = input.u8() as usize % 40;
                let x = floats(&mut input, n * c, off);
                let x = &x[off..];
                let (mut y1, mut y2) = (vec![0.0; n * r], vec![0.0; n * r]);
                let mut xp = vec![f32::NAN; packed_len(n, c)];
                let mut scratch = vec![f32::NAN; n * r];
                let w = Mat::Q8(w);
                fast.matmul(w, c, x, &mut y1, &mut xp, &mut scratch, Epilogue::default());
                refk.matmul(w, c, x, &mut y2, &mut xp, &mut scratch, Epilogue::default());
                for t in 0..n {
                    for i in 0..r {
                        let xt = &x[t * c..(t + 1) * c];
                        let bound = MATVEC_REL_TOL * abs_dot(c, |j| wf(i, j), xt) + ABS_FLOOR;
                        assert_close("matmul", t * r + i, y1[t * r + i], y2[t * r + i], bound);
                    }
                }
            }
        }
        4 => {
            let a = floats(&mut input, c, off);
            let b = floats(&mut input, c, off);
            let h = halves(&mut input, c, off);
            let (a, b, h) = (&a[off..], &b[off..], &h[off..]);
            let bound = MATVEC_REL_TOL * abs_dot(c, |j| b[j], a) + ABS_FLOOR;
            assert_close("dot_f32", 0, fast.dot_f32(a, b), refk.dot_f32(a, b), bound);
            let bound = MATVEC_REL_TOL * abs_dot(c, |j| h[j].to_f32(), a) + ABS_FLOOR;
            assert_close(
                "dot_f32_f16",
                0,
                fast.dot_f32_f16(a, h),
                refk.dot_f32_f16(a, h),
                bound,
            );
        }
        5 => {
            let alpha = f32::from(input.u8() as i8) / 16.0;
            let x = floats(&mut input, c, off);
            let h = halves(&mut input, c, off);
            let y = floats(&mut input, c, off);
            let (x, h, y0) = (&x[off..], &h[off..], &y[off..]);
            let (mut y1, mut y2) = (y0.to_vec(), y0.to_vec());
            fast.axpy(alpha, x, &mut y1);
            refk.axpy(alpha, x, &mut y2);
            for i in 0..c {
                let bound = AXPY_REL_TOL * ((alpha * x[i]).abs() + y0[i].abs()) + ABS_FLOOR;
                assert_close("axpy", i, y1[i], y2[i], bound);
            }
            let (mut y1, mut y2) = (y0.to_vec(), y0.to_vec());
            fast.axpy_f16(alpha, h, &mut y1);
            refk.axpy_f16(alpha, h, &mut y2);
            for i in 0..c {
                let bound =
                    AXPY_REL_TOL * ((alpha * h[i].to_f32()).abs() + y0[i].abs()) + ABS_FLOOR;
                assert_close("axpy_f16", i, y1[i], y2[i], bound);
            }
        }
        6 => {
            let l = c.max(1);
            let x = floats(&mut input, l, off);
            let scale = floats(&mut input, l, off);
            let shift = floats(&mut input, l, off);
            let (x, scale, shift) = (&x[off..], &scale[off..], &shift[off..]);
            let (mut o1, mut o2) = (vec![0.0; l + off], vec![0.0; l + off]);
            fast.layernorm(x, scale, shift, &mut o1[off..], 1e-5);
            refk.layernorm(x, scale, shift, &mut o2[off..], 1e-5);
            for i in 0..l {
                let norm = if scale[i] == 0.0 {
                    0.0
                } else {
                    (o2[off + i] - shift[i]) / scale[i]
                };
                let bound = LAYERNORM_TOL * (scale[i].abs() * norm.abs() + shift[i].abs() + 1.0);
                assert_close("layernorm", i, o1[off + i], o2[off + i], bound);
            }
        }
        7 => {
            let x = floats(&mut input, c, off);
            let (mut g1, mut g2) = (x.clone(), x.clone());
            fast.gelu_tanh(&mut g1[off..]);
            refk.gelu_tanh(&mut g2[off..]);
            for i in off..off + c {
                assert_close(
                    "gelu_tanh",
                    i - off,
                    g1[i],
                    g2[i],
                    GELU_ABS_TOL * x[i].abs().max(1.0),
                );
            }
            let y = floats(&mut input, c, off);
            let (mut a1, mut a2) = (x.clone(), x);
            fast.add(&mut a1[off..], &y[off..]);
            refk.add(&mut a2[off..], &y[off..]);
            assert!(a1 == a2, "add differs from its reference");
        }
        _ => {
            // Softmax with some entries masked to -inf (at least one finite).
            let l = c.max(1);
            let mut x = floats(&mut input, l, off);
            for v in &mut x[off + 1..] {
                if input.u8() < 0x20 {
                    *v = f32::NEG_INFINITY;
                }
            }
            let (mut s1, mut s2) = (x.clone(), x.clone());
            fast.softmax(&mut s1[off..]);
            refk.softmax(&mut s2[off..]);
            for i in off..off + l {
                if x[i] == f32::NEG_INFINITY {
                    assert_eq!(
                        (s1[i], s2[i]),
                        (0.0, 0.0),
                        "a masked entry is not exactly 0"
                    );
                }
                assert_close(
                    "softmax",
                    i - off,
                    s1[i],
                    s2[i],
                    SOFTMAX_REL_TOL * s2[i] + ABS_FLOOR,
                );
            }
        }
    }
}
