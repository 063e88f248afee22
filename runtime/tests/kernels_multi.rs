//! The multi-vector decode products ([`Kernels::matvec_multi_rows`]) of every implementation the
//! host runs ([`Kernels::available`]) against their single-vector twins of the same set, bit for
//! bit, for every weight dtype (f32, f16, int8 × int8, int8 × f32, int4 × int8, int4 × f32), on
//! odd shapes: row ranges not a multiple of any row block, B = 1..=17 vectors, columns
//! with tails. Batched decode relies on this to give each sequence a lone session's tokens.
//! The outputs are also checked against an independent f64 computation, and bad shapes panic.

use emberlm_formats::quant::{self, Q4_BLOCK_BYTES, Q6_BLOCK_BYTES, Q8_BLOCK};
use emberlm_runtime::kernels::{
    Kernels, Mat, Q4Matrix, Q6Matrix, Q8Matrix, Vectors, multi_scratch_len,
};
use half::f16;

/// |multi − exact| ≤ this · Σ|w·x| + 1e-6 (the single kernels' own bound, MATVEC_REL_TOL).
const MATVEC_REL_TOL: f64 = 1e-5;

/// splitmix64 (no rand dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// (R, C) shapes: tails of every kind, whole quads of 128 columns and not, octs of 256 with and
/// without a quad after them.
fn shapes() -> Vec<(usize, usize)> {
    vec![
        (1, 1),
        (5, 7),
        (9, 31),
        (6, 32),
        (11, 33),
        (7, 95),
        (13, 128),
        (10, 129),
        (21, 200),
        (19, 256),
        (23, 300),
        (17, 384),
        (6, 640),
        (37, 768),
        (9, 1025),
    ]
}

/// Row ranges of an R-row matrix to ask for: all, a middle part, and a short tail.
fn ranges(r: usize) -> Vec<(usize, usize)> {
    let mut v = vec![(0, r)];
    if r > 3 {
        v.push((1, r - 2));
        v.push((r - 3, 3));
    }
    v
}

/// One weight matrix in every stored form, with its exact values per form.
struct Weights {
    r: usize,
    c: usize,
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    q8: (Vec<i8>, Vec<f16>),
    q4: (Vec<u8>, Vec<f16>),
    q6: (Vec<u8>, Vec<f16>),
}

impl Weights {
    fn new(rng: &mut Rng, r: usize, c: usize) -> Self {
        let f32s = rng.vec(r * c, 0.5);
        let f16s = f32s.iter().map(|&v| f16::from_f32(v)).collect();
        let nb = c.div_ceil(Q8_BLOCK);
        // Every i8 value, −128 included.
        let q = (0..r * c).map(|_| rng.next_u64() as i8).collect();
        let d = (0..r * nb)
            .map(|_| f16::from_f32(rng.f().abs() * 0.02))
            .collect();
        let n4 = quant::q4_blocks_per_row(c);
        let mut q4 = vec![0u8; r * n4 * Q4_BLOCK_BYTES];
        let mut s4 = vec![f16::ZERO; r * n4];
        quant::quantize_q4(&f32s, c, &mut q4, &mut s4).unwrap();
        let n6 = quant::q6_blocks_per_row(c);
        let mut q6 = vec![0u8; r * n6 * Q6_BLOCK_BYTES];
        let mut s6 = vec![f16::ZERO; r * n6];
        quant::quantize_q6(&f32s, c, &mut q6, &mut s6).unwrap();
        Weights {
            r,
            c,
            f32s,
            f16s,
            q8: (q, d),
            q4: (q4, s4),
            q6: (q6, s6),
        }
    }

    fn mats(&self) -> Vec<(&'static str, Mat<'_>)> {
        vec![
            ("f32", Mat::F32(&self.f32s)),
            ("f16", Mat::F16(&self.f16s)),
            (
                "q8",
                Mat::Q8(Q8Matrix::new(&self.q8.0, &self.q8.1, self.r, self.c).unwrap()),
            ),
            (
                "q4",
                Mat::Q4(Q4Matrix::new(&self.q4.0, &self.q4.1, self.r, self.c).unwrap()),
            ),
            (
                "q6",
                Mat::Q6(Q6Matrix::new(&self.q6.0, &self.q6.1, self.r, self.c).unwrap()),
            ),
        ]
    }
}

/// B input vectors: f32 (B, C), and quantized (B, C), (B, NB): for odd v by `quantize_q8`, for
/// even v random quants over `quantize_q8`'s whole range (−127..=127) with random scales.
struct Inputs {
    x: Vec<f32>,
    xq: Vec<i8>,
    xd: Vec<f32>,
}

fn inputs(rng: &mut Rng, k: &Kernels, b: usize, c: usize) -> Inputs {
    let nb = c.div_ceil(Q8_BLOCK);
    let x = rng.vec(b * c, 2.0);
    let (mut xq, mut xd) = (vec![0i8; b * c], vec![0f32; b * nb]);
    for v in 0..b {
        let (q, d) = (&mut xq[v * c..][..c], &mut xd[v * nb..][..nb]);
        if v % 2 == 1 {
            k.quantize_q8(&x[v * c..][..c], q, d);
        } else {
            q.iter_mut()
                .for_each(|q| *q = ((rng.next_u64() % 255) as i32 - 127) as i8);
            d.iter_mut().for_each(|d| *d = rng.f().abs() * 0.05);
        }
    }
    Inputs { x, xq, xd }
}

/// Vector v's single-vector product through the set's `_rows` kernel, as decode calls it.
fn single(
    k: &Kernels,
    w: Mat<'_>,
    inp: &Inputs,
    (c, v, quantized): (usize, usize, bool),
    y: &mut [f32],
    start: usize,
) {
    let nb = c.div_ceil(Q8_BLOCK);
    let x = &inp.x[v * c..][..c];
    let (xq, xd) = (&inp.xq[v * c..][..c], &inp.xd[v * nb..][..nb]);
    match (w, quantized) {
        (Mat::F32(w), _) => k.matvec_f32_rows(w, x, y, start),
        (Mat::F16(w), _) => k.matvec_f16_rows(w, x, y, start),
        (Mat::Q8(w), true) => k.matvec_q8q8_rows(w, xq, xd, y, start),
        (Mat::Q8(w), false) => k.matvec_q8_rows(w, x, y, start),
        (Mat::Q4(w), true) => k.matvec_q4q8_rows(w, xq, xd, y, start),
        (Mat::Q4(w), false) => k.matvec_q4_rows(w, x, y, start),
        (Mat::Q6(w), true) => k.matvec_q6q8_rows(w, xq, xd, y, start),
        (Mat::Q6(w), false) => k.matvec_q6_rows(w, x, y, start),
    }
}

/// Row r of W and vector v as exact f64 values (the weights dequantized; the activations
/// quantized when `quantized`).
fn exact_row(
    w: Mat<'_>,
    inp: &Inputs,
    (c, v, quantized): (usize, usize, bool),
    r: usize,
) -> (f64, f64) {
    let nb = c.div_ceil(Q8_BLOCK);
    let mut wr = vec![0f32; c];
    match w {
        Mat::F32(w) => wr.copy_from_slice(&w[r * c..][..c]),
        Mat::F16(w) => wr
            .iter_mut()
            .zip(&w[r * c..][..c])
            .for_each(|(o, h)| *o = h.to_f32()),
        Mat::Q8(w) => w.dequantize_row(r, &mut wr),
        Mat::Q4(w) => w.dequantize_row(r, &mut wr),
        Mat::Q6(w) => w.dequantize_row(r, &mut wr),
    }
    let x: Vec<f64> = if quantized && matches!(w, Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_)) {
        (0..c)
            .map(|j| f64::from(inp.xq[v * c + j]) * f64::from(inp.xd[v * nb + j / Q8_BLOCK]))
            .collect()
    } else {
        inp.x[v * c..][..c].iter().map(|&x| f64::from(x)).collect()
    };
    let sum = wr.iter().zip(&x).map(|(&w, x)| f64::from(w) * x).sum();
    let abs = wr
        .iter()
        .zip(&x)
        .map(|(&w, x)| (f64::from(w) * x).abs())
        .sum();
    (sum, abs)
}

/// Every implementation this host runs; names the ones it skips on stderr.
fn implementations() -> Vec<Kernels> {
    let all = Kernels::available();
    let tested: Vec<&str> = all.iter().map(Kernels::name).collect();
    let skipped: Vec<&str> = (Kernels::NAMES.iter())
        .filter(|n| !tested.contains(n))
        .copied()
        .collect();
    eprintln!(
        "kernels_multi: testing {}; this host skips {}",
        tested.join(", "),
        if skipped.is_empty() {
            "none".to_string()
        } else {
            skipped.join(", ")
        }
    );
    all
}

#[test]
fn multi_equals_single_bit_for_bit_and_f64() {
    let mut rng = Rng(20);
    let mut checked = 0usize;
    for k in implementations() {
        for (r, c) in shapes() {
            let weights = Weights::new(&mut rng, r, c);
            for b in 1..=17 {
                let inp = inputs(&mut rng, &k, b, c);
                let nb = c.div_ceil(Q8_BLOCK);
                for (name, w) in weights.mats() {
                    for quantized in [true, false] {
                        if !quantized && matches!(w, Mat::F32(_) | Mat::F16(_)) {
                            continue;
                        }
                        let x = Vectors {
                            b,
                            c,
                            x: &inp.x,
                            q: quantized.then_some((&inp.xq[..], &inp.xd[..b * nb])),
                        };
                        for (start, p) in ranges(r) {
                            // NaN-filled, so an output the kernel fails to write shows.
                            let mut y = vec![f32::NAN; b * p];
                            let mut scratch = vec![0u8; multi_scratch_len(b, c)];
                            k.matvec_multi_rows(w, x, &mut y, start, &mut scratch);
                            for v in 0..b {
                                let mut want = vec![f32::NAN; p];
                                single(&k, w, &inp, (c, v, quantized), &mut want, start);
                                for i in 0..p {
                                    let got = y[v * p + i];
                                    let what = || {
                                        format!(
                                            "{} {name} q={quantized} {r}x{c} B={b} rows \
                                             {start}+{p}: vector {v} row {}",
                                            k.name(),
                                            start + i
                                        )
                                    };
                                    assert!(
                                        got.to_bits() == want[i].to_bits(),
                                        "{}: {got} != single {}",
                                        what(),
                                        want[i]
                                    );
                                    let (exact, abs) =
                                        exact_row(w, &inp, (c, v, quantized), start + i);
                                    let tol = MATVEC_REL_TOL * abs + 1e-6;
                                    assert!(
                                        (f64::from(got) - exact).abs() <= tol,
                                        "{}: {got} vs exact {exact} (tolerance {tol})",
                                        what()
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100_000, "only {checked} outputs checked");
}

/// Every weight dtype's multi product of rows `start .. start + p`, for each (start, p) of
/// `ranges`, against the single kernel vector by vector, bit for bit (B vectors of C).
fn check_row_ranges(
    k: &Kernels,
    weights: &Weights,
    inp: &Inputs,
    (b, c): (usize, usize),
    ranges: &[(usize, usize)],
) {
    for (_, w) in weights.mats() {
        let quantized = matches!(w, Mat::Q8(_) | Mat::Q4(_) | Mat::Q6(_));
        let x = Vectors {
            b,
            c,
            x: &inp.x,
            q: quantized.then_some((&inp.xq[..], &inp.xd[..])),
        };
        // Scratch of exactly the documented length at a different offset from a cache line
        // for each range (the kernels realign it).
        let len = multi_scratch_len(b, c);
        let mut big = vec![0u8; len + 64];
        for (n, &(start, p)) in ranges.iter().enumerate() {
            let off = (17 * n + big.as_ptr().align_offset(64)) % 64;
            let scratch = &mut big[off..off + len];
            let mut y = vec![0f32; b * p];
            k.matvec_multi_rows(w, x, &mut y, start, scratch);
            for v in 0..b {
                let mut want = vec![0f32; p];
                single(k, w, inp, (c, v, quantized), &mut want, start);
                let got: Vec<u32> = y[v * p..][..p].iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{} B={b} rows {start}+{p} vector {v}", k.name());
            }
        }
    }
}

/// The batch's own use: one call per chunk of a product, as `Chunks` cuts a matrix (4-row
/// groups and leftovers inside each chunk), on a 768-column int8 matrix of 1000 rows.
#[test]
fn multi_equals_single_on_chunked_rows() {
    let mut rng = Rng(7);
    let (r, c, b) = (1000, 768, 8);
    let weights = Weights::new(&mut rng, r, c);
    for k in implementations() {
        let inp = inputs(&mut rng, &k, b, c);
        let ranges = [(0, 208), (208, 208), (416, 304), (720, 77), (797, 203)];
        check_row_ranges(&k, &weights, &inp, (b, c), &ranges);
    }
}

/// Wide products, as a head's (the GPT-2 head has 50,257 rows): more rows than the int8 kernel's
/// output block (1,024 rows, or 8,192 / B for B > 8), so its blocks and their copies into the
/// (B, P) output are exercised at B = 8 (whole pairs), 16 (two groups of 8, blocks of 512 rows)
/// and 17 (a half pair, blocks of 481 rows), bit for bit against the single kernel.
#[test]
fn multi_equals_single_on_wide_products() {
    let mut rng = Rng(11);
    let (r, c) = (2600, 384);
    let weights = Weights::new(&mut rng, r, c);
    for k in implementations() {
        for b in [8, 16, 17] {
            let inp = inputs(&mut rng, &k, b, c);
            check_row_ranges(&k, &weights, &inp, (b, c), &[(0, r), (3, 2201)]);
        }
    }
}

#[test]
fn multi_rejects_bad_shapes() {
    let w = vec![0f32; 6 * 4];
    let x = vec![0f32; 2 * 4];
    for k in implementations() {
        let call = |b: usize, xs: &[f32], y: usize, start: usize, scratch: usize| {
            let (xs, w) = (xs.to_vec(), w.clone());
            std::panic::catch_unwind(move || {
                let mut y = vec![0f32; y];
                let mut s = vec![0u8; scratch];
                let v = Vectors {
                    b,
                    c: 4,
                    x: &xs,
                    q: None,
                };
                k.matvec_multi_rows(Mat::F32(&w), v, &mut y, start, &mut s);
            })
            .map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            })
        };
        let n = multi_scratch_len(2, 4);
        assert!(call(2, &x, 6, 0, n).is_ok());
        let err = |r: Result<(), String>, want: &str| {
            let e = r.expect_err(want);
            assert!(e.contains(want), "{}: {e:?} lacks {want:?}", k.name());
        };
        err(call(0, &[], 0, 0, n), "B must be at least 1");
        err(call(3, &x, 6, 0, 12), "x must be (B, C)");
        err(call(2, &x, 5, 0, n), "y must be (B, P)");
        err(call(2, &x, 8, 3, n), "exceed R = 6");
        err(call(2, &x, 6, 0, n - 1), "scratch");
    }
}
