//! Every kernel implementation the host runs ([`Kernels::available`]) == the reference twins (and
//! both == an independent f64 computation), on odd shapes, tails and big shapes, for every entry
//! point, with 1 thread and (with `parallel`) a 2-thread pool. The implementations this host cannot
//! run are named on stderr as skipped.

use emberlm_runtime::kernels::geometry::packed_len;
use emberlm_runtime::kernels::{
    Epilogue, Kernels, Mat, Q8_BLOCK, Q8Matrix, ShapeError, bandwidth, reference,
};
use half::f16;
use std::io::Write;
use std::panic::RefUnwindSafe;
use std::sync::Once;

/// Matrix-vector outputs: |fast - reference| and |reference - exact| ≤ this · Σ|w·x|.
const MATVEC_REL_TOL: f64 = 1e-5;
/// Dot products and axpy: same bound, per element, relative to Σ|a·b| (or |alpha·x| + |y|).
const DOT_REL_TOL: f64 = 1e-5;
/// GELU: |fast - reference| ≤ this · max(1, |x|) (polynomial exp vs libm tanh).
const GELU_ABS_TOL: f64 = 2e-6;
/// Softmax: |p - p_exact| ≤ this · p_exact + SOFTMAX_ABS_TOL.
const SOFTMAX_REL_TOL: f64 = 2e-5;
/// Softmax absolute floor (probabilities far below it are noise for sampling).
const SOFTMAX_ABS_TOL: f64 = 1e-9;
/// Softmax over a vocabulary: |Σp - 1| < this (the fast kernels sum in several f32 accumulators).
const VOCAB_SUM_TOL: f64 = 1e-5;
/// The same for the reference twin, which sums its V terms in order in one f32 accumulator: that
/// sum's rounding grows about as √V · 2⁻²⁴, past `VOCAB_SUM_TOL` for V = 50257.
const VOCAB_SUM_TOL_REFERENCE: f64 = 1e-4;
/// LayerNorm: |out - exact| ≤ this · (|scale| · |normalized| + |shift| + 1).
const LAYERNORM_TOL: f64 = 1e-5;

// ------------------------------------------------------------------ helpers

/// splitmix64: a tiny deterministic generator (no rand dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
    fn vec_f16(&mut self, n: usize) -> Vec<f16> {
        (0..n).map(|_| f16::from_f32(self.f())).collect()
    }
    /// Random Q8 matrix, quants over the whole i8 range (including -128).
    fn q8(&mut self, r: usize, c: usize) -> (Vec<i8>, Vec<f16>) {
        let q = (0..r * c).map(|_| self.next_u64() as i8).collect();
        let d = (0..r * c.div_ceil(Q8_BLOCK))
            .map(|_| f16::from_f32(self.f().abs() * 0.02))
            .collect();
        (q, d)
    }
}

/// Every kernel implementation this host runs ([`Kernels::available`], the reference twins
/// included), each with 1 thread. The first call names on stderr, past the test harness's output
/// capture, the implementations that this host skips, so a green run says what it did not test.
fn implementations() -> Vec<Kernels> {
    static REPORT: Once = Once::new();
    let all = Kernels::available();
    REPORT.call_once(|| {
        let tested: Vec<&str> = all.iter().map(Kernels::name).collect();
        let skipped: Vec<&str> = (Kernels::NAMES.iter())
            .filter(|n| !tested.contains(n))
            .copied()
            .collect();
        let _ = writeln!(
            std::io::stderr(),
            "kernels: testing {tested:?} against the reference; SKIPPED (not on this host): \
             {skipped:?}"
        );
    });
    all.into_iter().map(|k| k.with_threads(1)).collect()
}

/// Names the kernels under test if a check fails while it is alive.
struct Naming<'k>(&'k Kernels);

impl Drop for Naming<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "(failed with the {} kernels, {} threads)",
                self.0.name(),
                self.0.threads()
            );
        }
    }
}

/// The kernel sets under test: every implementation ([`implementations`]) with 1 thread, and
/// with 2 threads (run inside a 2-thread pool). Each closure call gets the kernels and runs inside
/// the right pool.
fn for_each_kernels(mut f: impl FnMut(&Kernels) + Send) {
    for k in implementations() {
        let _naming = Naming(&k);
        f(&k);
    }
    #[cfg(feature = "parallel")]
    {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for k in implementations() {
                let k = k.with_threads(2);
                let _naming = Naming(&k);
                f(&k);
            }
        });
    }
}

/// Asserts that `f` panics, with a message containing `expected`, for every implementation.
fn panics_for_every_implementation(expected: &str, f: impl Fn(&Kernels) + RefUnwindSafe) {
    for k in implementations() {
        let name = k.name();
        let err = std::panic::catch_unwind(|| f(&k)).expect_err(name);
        let msg = (err.downcast_ref::<String>().map(String::as_str))
            .or_else(|| err.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        assert!(msg.contains(expected), "{name}: panicked with {msg:?}");
    }
}

fn close(what: &str, got: f32, want: f32, bound: f64) {
    let err = (f64::from(got) - f64::from(want)).abs();
    assert!(
        err <= bound,
        "{what}: got {got}, want {want}, |err| {err:e} > {bound:e}"
    );
}

fn f16s(v: &[f16]) -> Vec<f32> {
    v.iter().map(|h| h.to_f32()).collect()
}

fn dequant(q: &[i8], d: &[f16], c: usize) -> Vec<f32> {
    let nb = c.div_ceil(Q8_BLOCK);
    (0..q.len())
        .map(|i| f32::from(q[i]) * d[(i / c) * nb + (i % c) / Q8_BLOCK].to_f32())
        .collect()
}

/// Checks y (R) against W (R, C) · x in f64: the exact sum and Σ|w·x| per row.
fn check_matvec(what: &str, w: &[f32], x: &[f32], y: &[f32], ref_y: &[f32], row_start: usize) {
    let c = x.len();
    for (i, (&got, &want)) in y.iter().zip(ref_y).enumerate() {
        let row = &w[(row_start + i) * c..(row_start + i + 1) * c];
        let abs: f64 = row
            .iter()
            .zip(x)
            .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
            .sum();
        let exact: f64 = row
            .iter()
            .zip(x)
            .map(|(&w, &x)| f64::from(w) * f64::from(x))
            .sum();
        let bound = MATVEC_REL_TOL * abs;
        close(
            &format!("{what} row {} (vs reference)", row_start + i),
            got,
            want,
            bound,
        );
        close(
            &format!("{what} row {} (reference vs f64)", row_start + i),
            want,
            exact as f32,
            bound,
        );
    }
}

/// Shapes: every C in 1..=130 against a spread of R in 1..=70, then big ones (threaded path).
fn shapes() -> Vec<(usize, usize)> {
    let mut s = Vec::new();
    let rs = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 70];
    for c in 1..=130 {
        s.push((rs[c % rs.len()], c));
        s.push((rs[(c * 7 + 3) % rs.len()], c));
    }
    for r in 1..=70 {
        s.push((r, 1 + (r * 37) % 130));
    }
    s.extend([
        (70, 1000),
        (1001, 130),
        (2304, 768),
        (768, 3072),
        (333, 777),
        (5003, 96),
    ]);
    s
}

// ------------------------------------------------------------------ matrix-vector

#[test]
fn matvec_f32_matches_reference_and_f64() {
    let mut rng = Rng(1);
    let shapes = shapes();
    let cases: Vec<_> = shapes
        .iter()
        .map(|&(r, c)| (rng.vec(r * c, 1.0), rng.vec(c, 2.0)))
        .collect();
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        for (&(r, c), (w, x)) in shapes.iter().zip(&cases) {
            let (mut y, mut want) = (vec![0f32; r], vec![0f32; r]);
            rk.matvec_f32(w, x, &mut want);
            k.matvec_f32(w, x, &mut y);
            check_matvec(
                &format!("matvec_f32 {r}x{c} {} t{}", k.name(), k.threads()),
                w,
                x,
                &y,
                &want,
                0,
            );
            // A row range in the middle.
            let (rs, n) = (r / 3, r - r / 3 - r / 4);
            let mut yr = vec![0f32; n];
            k.matvec_f32_rows(w, x, &mut yr, rs);
            check_matvec("matvec_f32_rows", w, x, &yr, &want[rs..rs + n], rs);
        }
    });
}

#[test]
fn matvec_f16_matches_reference_and_f64() {
    let mut rng = Rng(2);
    let shapes = shapes();
    let cases: Vec<_> = shapes
        .iter()
        .map(|&(r, c)| (rng.vec_f16(r * c), rng.vec(c, 2.0)))
        .collect();
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        for (&(r, c), (w, x)) in shapes.iter().zip(&cases) {
            let wf = f16s(w);
            let (mut y, mut want) = (vec![0f32; r], vec![0f32; r]);
            rk.matvec_f16(w, x, &mut want);
            k.matvec_f16(w, x, &mut y);
            check_matvec(
                &format!("matvec_f16 {r}x{c} {} t{}", k.name(), k.threads()),
                &wf,
                x,
                &y,
                &want,
                0,
            );
            let (rs, n) = (r / 4, r - r / 4 - r / 3);
            let mut yr = vec![0f32; n];
            k.matvec_f16_rows(w, x, &mut yr, rs);
            check_matvec("matvec_f16_rows", &wf, x, &yr, &want[rs..rs + n], rs);
        }
    });
}

#[test]
fn matvec_q8_matches_reference_and_f64() {
    let mut rng = Rng(3);
    let shapes = shapes();
    let cases: Vec<_> = shapes
        .iter()
        .map(|&(r, c)| (rng.q8(r, c), rng.vec(c, 2.0)))
        .collect();
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        for (&(r, c), ((q, d), x)) in shapes.iter().zip(&cases) {
            let w = Q8Matrix::new(q, d, r, c).unwrap();
            let wf = dequant(q, d, c);
            let (mut y, mut want) = (vec![0f32; r], vec![0f32; r]);
            rk.matvec_q8(w, x, &mut want);
            k.matvec_q8(w, x, &mut y);
            check_matvec(
                &format!("matvec_q8 {r}x{c} {} t{}", k.name(), k.threads()),
                &wf,
                x,
                &y,
                &want,
                0,
            );
            let (rs, n) = (r / 2, r - r / 2);
            let mut yr = vec![0f32; n];
            k.matvec_q8_rows(w, x, &mut yr, rs);
            check_matvec("matvec_q8_rows", &wf, x, &yr, &want[rs..rs + n], rs);
        }
    });
}

#[test]
fn quantize_q8_rounds_within_half_a_step() {
    let mut rng = Rng(31);
    for k in implementations() {
        for c in [1, 5, 31, 32, 33, 64, 100, 768, 3072] {
            let mut x = rng.vec(c, 3.0);
            if c >= 64 {
                x[32..64].fill(0.0); // an all-zero block
            }
            let mut q = vec![0i8; c];
            let mut d = vec![0f32; c.div_ceil(Q8_BLOCK)];
            k.quantize_q8(&x, &mut q, &mut d);
            for (b, xb) in x.chunks(Q8_BLOCK).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(d[b], amax / 127.0, "c={c} block {b}");
                for (j, &v) in xb.iter().enumerate() {
                    let qv = q[b * Q8_BLOCK + j];
                    assert!((-127..=127).contains(&qv));
                    let err = (f64::from(v) - f64::from(qv) * f64::from(d[b])).abs();
                    assert!(err <= 0.5001 * f64::from(d[b]), "c={c} [{b},{j}] {v} {qv}");
                }
            }
        }
    }
}

#[test]
fn matvec_q8q8_matches_reference_and_exact_integer_sums() {
    let mut rng = Rng(41);
    for k in implementations() {
        for (r, c) in shapes() {
            let (q, d) = rng.q8(r, c);
            let w = Q8Matrix::new(&q, &d, r, c).unwrap();
            let x = rng.vec(c, 2.0);
            let mut xq = vec![0i8; c];
            let mut xd = vec![0f32; c.div_ceil(Q8_BLOCK)];
            k.quantize_q8(&x, &mut xq, &mut xd);
            for row_start in [0, r / 3] {
                let n = r - row_start;
                let mut got = vec![0f32; n];
                k.matvec_q8q8_rows(w, &xq, &xd, &mut got, row_start);
                let mut want = vec![0f32; n];
                reference::matvec_q8q8_rows(w, &xq, &xd, &mut want, row_start);
                for i in 0..n {
                    // Independent: exact integer block sums, scales in f64.
                    let rr = row_start + i;
                    let (mut exact, mut mag) = (0f64, 0f64);
                    for b in 0..c.div_ceil(Q8_BLOCK) {
                        let s: i64 = (b * Q8_BLOCK..((b + 1) * Q8_BLOCK).min(c))
                            .map(|j| i64::from(q[rr * c + j]) * i64::from(xq[j]))
                            .sum();
                        let sc =
                            f64::from(d[rr * c.div_ceil(Q8_BLOCK) + b].to_f32()) * f64::from(xd[b]);
                        exact += sc * s as f64;
                        mag += (sc * s as f64).abs();
                    }
                    let bound = MATVEC_REL_TOL * mag + 1e-30;
                    for (what, v) in [("fast", got[i]), ("reference", want[i])] {
                        assert!(
                            (f64::from(v) - exact).abs() <= bound,
                            "{r}x{c} row {rr} {what}: {v} vs {exact}"
                        );
                    }
                }
            }
            // Against the f32-activation product: only the activations' rounding differs.
            let mut f = vec![0f32; r];
            k.matvec_q8_rows(w, &x, &mut f, 0);
            let mut g = vec![0f32; r];
            k.matvec_q8q8_rows(w, &xq, &xd, &mut g, 0);
            let deq = dequant(&q, &d, c);
            for i in 0..r {
                // |Σ w (x - x̂)| ≤ Σ |w| · xd/2 over each block.
                let bound: f64 = (0..c)
                    .map(|j| f64::from(deq[i * c + j]).abs() * f64::from(xd[j / Q8_BLOCK]) * 0.5)
                    .sum::<f64>()
                    * 1.001
                    + 1e-6;
                assert!(
                    (f64::from(f[i]) - f64::from(g[i])).abs() <= bound,
                    "{r}x{c} row {i}: {} vs {}",
                    f[i],
                    g[i]
                );
            }
        }
    }
}

#[test]
fn gpt2_head_shape_all_dtypes() {
    // The 768 x 50257 output layer: the threaded path with uneven chunks.
    let (r, c) = (50257, 768);
    let mut rng = Rng(4);
    let x = rng.vec(c, 1.0);
    let wf = rng.vec(r * c, 0.1);
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    let (q, d) = rng.q8(r, c);
    let w8 = Q8Matrix::new(&q, &d, r, c).unwrap();
    let rk = Kernels::reference();
    let (mut want32, mut want16, mut want8) = (vec![0f32; r], vec![0f32; r], vec![0f32; r]);
    rk.matvec_f32(&wf, &x, &mut want32);
    rk.matvec_f16(&wh, &x, &mut want16);
    rk.matvec_q8(w8, &x, &mut want8);
    let (whf, w8f) = (f16s(&wh), dequant(&q, &d, c));
    for_each_kernels(|k| {
        let mut y = vec![0f32; r];
        k.matvec_f32(&wf, &x, &mut y);
        check_matvec("head f32", &wf, &x, &y, &want32, 0);
        k.matvec_f16(&wh, &x, &mut y);
        check_matvec("head f16", &whf, &x, &y, &want16, 0);
        k.matvec_q8(w8, &x, &mut y);
        check_matvec("head q8", &w8f, &x, &y, &want8, 0);
    });
}

#[test]
fn threaded_results_are_bitwise_identical_to_one_thread() {
    let (r, c) = (3001, 200);
    let mut rng = Rng(5);
    let (w, x) = (rng.vec(r * c, 1.0), rng.vec(c, 1.0));
    let (q, d) = rng.q8(r, c);
    let w8 = Q8Matrix::new(&q, &d, r, c).unwrap();
    let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let mut first = Vec::new();
    for_each_kernels(|k| {
        let (mut a, mut b) = (vec![0f32; r], vec![0f32; r]);
        k.matvec_f32(&w, &x, &mut a);
        k.matvec_q8(w8, &x, &mut b);
        a.extend(b);
        let mut h = vec![0f32; r];
        k.matvec_f16(&wh, &x, &mut h);
        a.extend(h);
        same_bits_as_first(&mut first, k, a, "matvec_f32, matvec_q8 and matvec_f16");
    });
    // Every implementation ran with 1 thread and (with `parallel`) 2.
    assert_eq!(first.len(), implementations().len());
}

#[test]
fn zero_width_and_empty_matvec() {
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        for k in [k, &rk] {
            let mut y = vec![1f32; 5];
            k.matvec_f32(&[], &[], &mut y);
            assert_eq!(y, [0.0; 5]);
            k.matvec_f16(&[], &[], &mut y);
            assert_eq!(y, [0.0; 5]);
            let w = Q8Matrix::new(&[], &[], 5, 0).unwrap();
            y.fill(1.0);
            k.matvec_q8(w, &[], &mut y);
            assert_eq!(y, [0.0; 5]);
            k.matvec_f32(&[], &[1.0, 2.0], &mut []);
        }
    });
}

#[test]
fn matvec_shape_mismatch_panics_before_touching_memory() {
    panics_for_every_implementation("matvec_f32: w must be (R, C)", |k| {
        k.matvec_f32(&[0.0; 11], &[0.0; 4], &mut [0.0; 3])
    });
}

#[test]
fn rows_past_the_end_panic() {
    panics_for_every_implementation("matvec_f16_rows: rows 2..+2 exceed R = 3", |k| {
        k.matvec_f16_rows(&[f16::ZERO; 12], &[0.0; 4], &mut [0.0; 2], 2)
    });
}

#[test]
fn q8_matrix_validates_lengths() {
    let q = [0i8; 70];
    let d = [f16::ONE; 6];
    assert!(Q8Matrix::new(&q, &d, 2, 35).is_err()); // NB = 2, needs 4 scales
    assert_eq!(
        Q8Matrix::new(&q, &d[..4], 2, 36).unwrap_err(),
        ShapeError {
            what: "q8 quants",
            expected: 72,
            found: 70
        }
    );
    assert_eq!(
        Q8Matrix::new(&q, &d, 2, 35).unwrap_err(),
        ShapeError {
            what: "q8 scales",
            expected: 4,
            found: 6
        }
    );
    assert_eq!(
        Q8Matrix::new(&q, &d, usize::MAX, 2).unwrap_err(),
        ShapeError {
            what: "q8 quants",
            expected: usize::MAX,
            found: 70
        }
    );
    let w = Q8Matrix::new(&q, &d[..4], 2, 35).unwrap();
    assert_eq!((w.rows(), w.cols(), w.blocks_per_row()), (2, 35, 2));
}

#[test]
fn q8_dequantize_row_matches_the_formula() {
    let mut rng = Rng(6);
    let (r, c) = (3, 70);
    let (q, d) = rng.q8(r, c);
    let w = Q8Matrix::new(&q, &d, r, c).unwrap();
    let mut out = vec![0f32; c];
    w.dequantize_row(2, &mut out);
    for (j, &o) in out.iter().enumerate() {
        assert_eq!(o, f32::from(q[2 * c + j]) * d[2 * 3 + j / 32].to_f32());
    }
}

// ------------------------------------------------------------------ prefill

/// The packed prefill product (`pack_tokens` + `matmul_packed_rows`) for f32, f16 and Q8 weights,
/// on odd shapes (token tails, row tails, columns across several panels), for row ranges that
/// start anywhere: every output against the reference kernels' result and the f64 sum, and the
/// bits of an output do not depend on the row range it was computed in.
#[test]
fn matmul_packed_rows_matches_reference_and_f64_for_every_dtype() {
    let mut rng = Rng(11);
    let rk = Kernels::reference();
    for fk in implementations() {
        let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
        for n in [1, 2, 5, 15, 16, 17, 31, 33] {
            shapes.push((n, 1 + rng.below(40), 1 + rng.below(700)));
        }
        shapes.extend([
            (64, 36, 768),
            (7, 13, 1025),
            (20, 6, 32),
            (3, 100, 1),
            (48, 24, 1536),
        ]);
        for &(n, r, c) in &shapes {
            let x = rng.vec(n * c, 2.0);
            let mut xp = vec![f32::NAN; packed_len(n, c)];
            fk.pack_tokens(&x, c, &mut xp);
            let weights = ThreeDtypes::new(&mut rng, r, c);
            for (name, w, wf) in weights.cases() {
                let mut want = vec![f32::NAN; r * n];
                rk.matmul_packed_rows(w, c, &xp, n, 0..r, &mut want);
                let mut got = vec![f32::NAN; r * n];
                fk.matmul_packed_rows(w, c, &xp, n, 0..r, &mut got);
                for t in 0..n {
                    let xt = &x[t * c..(t + 1) * c];
                    let row = |v: &[f32]| v[t * r..(t + 1) * r].to_vec();
                    let what = format!("packed {name} n{n} {r}x{c} token {t}");
                    check_matvec(&what, &wf, xt, &row(&got), &row(&want), 0);
                }
                // A sub-range starting at an odd row gives the same bits as the whole.
                let start = r / 3;
                let p = r - start;
                let mut part = vec![f32::NAN; p * n];
                fk.matmul_packed_rows(w, c, &xp, n, start..r, &mut part);
                for t in 0..n {
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&part[t * p..(t + 1) * p]),
                        bits(&got[t * r + start..(t + 1) * r]),
                        "packed {name} n{n} {r}x{c} token {t}: rows {start}.. differ from the whole"
                    );
                }
            }
        }
    }
}

/// One random weight matrix in each dtype, with its f32 values (what the kernels must multiply by).
struct ThreeDtypes {
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    q: Vec<i8>,
    d: Vec<f16>,
    r: usize,
    c: usize,
}

impl ThreeDtypes {
    fn new(rng: &mut Rng, r: usize, c: usize) -> Self {
        let (q, d) = rng.q8(r, c);
        ThreeDtypes {
            f32s: rng.vec(r * c, 1.0),
            f16s: rng.vec_f16(r * c),
            q,
            d,
            r,
            c,
        }
    }

    fn cases(&self) -> [(&'static str, Mat<'_>, Vec<f32>); 3] {
        let q8 = Q8Matrix::new(&self.q, &self.d, self.r, self.c).unwrap();
        [
            ("f32", Mat::F32(&self.f32s), self.f32s.clone()),
            ("f16", Mat::F16(&self.f16s), f16s(&self.f16s)),
            ("q8", Mat::Q8(q8), dequant(&self.q, &self.d, self.c)),
        ]
    }
}

/// Keeps each implementation's first result and asserts that its later ones have the same bits
/// (results of one computation with different thread counts).
fn same_bits_as_first(
    first: &mut Vec<(&'static str, Vec<f32>)>,
    k: &Kernels,
    y: Vec<f32>,
    what: &str,
) {
    match first.iter().find(|(name, _)| *name == k.name()) {
        None => first.push((k.name(), y)),
        Some((name, f)) => assert!(
            f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: {name} bits differ between thread counts"
        ),
    }
}

/// `Kernels::matmul` (the threaded prefill product) for every dtype, 1 and 2 threads: each token's
/// outputs against the reference kernels and the f64 sum, and the same bits for any thread count.
#[test]
fn matmul_matches_reference_and_f64_for_every_dtype_and_thread_count() {
    let mut rng = Rng(7);
    let rk = Kernels::reference();
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    for n in 1..=13 {
        shapes.push((n, 1 + rng.below(120), 1 + rng.below(600)));
    }
    shapes.extend([
        (128, 70, 130),
        (9, 33, 256),
        (17, 16, 257),
        (64, 2304, 96),
        (40, 200, 768),
        (20, 97, 1100),
    ]);
    for &(n, r, c) in &shapes {
        let w = ThreeDtypes::new(&mut rng, r, c);
        let x = rng.vec(n * c, 2.0);
        let mut xp = vec![f32::NAN; packed_len(n, c)];
        let mut scratch = vec![f32::NAN; n * r];
        for (name, pw, wf) in w.cases() {
            let mut want = vec![f32::NAN; n * r];
            rk.matmul(
                pw,
                c,
                &x,
                &mut want,
                &mut xp,
                &mut scratch,
                Epilogue::default(),
            );
            let mut first = Vec::new();
            for_each_kernels(|k| {
                let mut y = vec![f32::NAN; n * r];
                k.matmul(
                    pw,
                    c,
                    &x,
                    &mut y,
                    &mut xp,
                    &mut scratch,
                    Epilogue::default(),
                );
                for t in 0..n {
                    let xt = &x[t * c..(t + 1) * c];
                    let what = format!(
                        "matmul {name} n{n} {r}x{c} token {t} {} t{}",
                        k.name(),
                        k.threads()
                    );
                    let row = |v: &[f32]| v[t * r..(t + 1) * r].to_vec();
                    check_matvec(&what, &wf, xt, &row(&y), &row(&want), 0);
                }
                same_bits_as_first(&mut first, k, y, &format!("matmul {name} n{n} {r}x{c}"));
            });
        }
    }
}

/// The epilogue (bias, then GELU) inside `Kernels::matmul`: against the plain product plus the
/// bias and GELU's tanh formula in f64, and the same bits for 1 and 2 threads.
#[test]
fn matmul_epilogue_adds_the_bias_then_gelu() {
    let (n, r, c) = (21, 150, 200);
    let mut rng = Rng(9);
    let w = ThreeDtypes::new(&mut rng, r, c);
    let x = rng.vec(n * c, 1.0);
    let bias = rng.vec(r, 1.0);
    let mut xp = vec![0f32; packed_len(n, c)];
    let mut scratch = vec![0f32; n * r];
    let gelu = |v: f64| {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
    };
    for (name, pw, _) in w.cases() {
        let mut plain = vec![0f32; n * r];
        let rk = Kernels::reference();
        rk.matmul(
            pw,
            c,
            &x,
            &mut plain,
            &mut xp,
            &mut scratch,
            Epilogue::default(),
        );
        let mut first = Vec::new();
        for_each_kernels(|k| {
            for use_gelu in [false, true] {
                let mut y = vec![f32::NAN; n * r];
                let ep = Epilogue {
                    bias: Some(&bias),
                    gelu: use_gelu,
                };
                k.matmul(pw, c, &x, &mut y, &mut xp, &mut scratch, ep);
                for (i, (&got, &p)) in y.iter().zip(&plain).enumerate() {
                    let pre = f64::from(p) + f64::from(bias[i % r]);
                    let want = if use_gelu { gelu(pre) } else { pre };
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{name} gelu {use_gelu} t{}: [{i}] {got} vs {want}",
                        k.threads()
                    );
                }
                if use_gelu {
                    same_bits_as_first(&mut first, k, y, name);
                }
            }
        });
    }
}

#[test]
fn matmul_rows_do_not_depend_on_batch_size() {
    let (r, c) = (37, 300);
    let mut rng = Rng(8);
    let w = ThreeDtypes::new(&mut rng, r, c);
    let x = rng.vec(20 * c, 1.0);
    for k in implementations() {
        let mut xp = vec![0f32; packed_len(20, c)];
        let mut scratch = vec![0f32; 20 * r];
        for (name, pw, _) in w.cases() {
            let mut all = vec![0f32; 20 * r];
            k.matmul(
                pw,
                c,
                &x,
                &mut all,
                &mut xp,
                &mut scratch,
                Epilogue::default(),
            );
            for n in [1, 2, 3, 7, 16, 17, 19] {
                let mut part = vec![0f32; n * r];
                k.matmul(
                    pw,
                    c,
                    &x[..n * c],
                    &mut part,
                    &mut xp,
                    &mut scratch,
                    Epilogue::default(),
                );
                assert_eq!(part, all[..n * r], "{name}: first {n} tokens");
            }
        }
    }
}

#[test]
fn matmul_empty_shapes() {
    for k in implementations() {
        let (mut xp, mut scratch) = (vec![0f32; 80], vec![0f32; 64]);
        // No rows: nothing to write.
        let q8 = Q8Matrix::new(&[], &[], 0, 5).unwrap();
        for w in [Mat::Q8(q8), Mat::F32(&[])] {
            let (x, ep) = (&[1.0; 10], Epilogue::default());
            k.matmul(w, 5, x, &mut [], &mut xp, &mut scratch, ep);
        }
        // No tokens.
        k.matmul(
            Mat::F16(&[f16::ONE; 15]),
            5,
            &[],
            &mut [],
            &mut xp,
            &mut scratch,
            Epilogue::default(),
        );
    }
}

#[test]
fn matmul_with_a_mismatched_weight_panics() {
    panics_for_every_implementation("rows of C", |k| {
        let (mut xp, mut scratch) = (vec![0f32; 80], vec![0f32; 64]);
        let mut y = [0f32; 4];
        k.matmul(
            Mat::F32(&[1.0; 15]),
            5,
            &[1.0; 10],
            &mut y,
            &mut xp,
            &mut scratch,
            Epilogue::default(),
        );
    });
}

// ------------------------------------------------------------------ small ops

fn lengths() -> impl Iterator<Item = usize> {
    (0..=130).chain([255, 256, 257, 768, 1023, 3072, 50257])
}

#[test]
fn dot_and_axpy_match_reference_and_f64() {
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        // The same cases for every implementation.
        let mut rng = Rng(9);
        for n in lengths() {
            let (a, b) = (rng.vec(n, 1.0), rng.vec(n, 3.0));
            let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
            let bhf = f16s(&bh);
            for (what, got, want, bb) in [
                ("dot_f32", k.dot_f32(&a, &b), rk.dot_f32(&a, &b), &b),
                (
                    "dot_f32_f16",
                    k.dot_f32_f16(&a, &bh),
                    rk.dot_f32_f16(&a, &bh),
                    &bhf,
                ),
            ] {
                let abs: f64 = a
                    .iter()
                    .zip(bb.iter())
                    .map(|(&a, &b)| f64::from(a * b).abs())
                    .sum();
                let exact: f64 = a
                    .iter()
                    .zip(bb.iter())
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                close(&format!("{what} n{n}"), got, want, DOT_REL_TOL * abs);
                close(
                    &format!("{what} n{n} reference"),
                    want,
                    exact as f32,
                    DOT_REL_TOL * abs,
                );
            }
            let alpha = rng.f();
            let y0 = rng.vec(n, 1.0);
            for (what, xs) in [("axpy", &b), ("axpy_f16", &bhf)] {
                let (mut y, mut yr) = (y0.clone(), y0.clone());
                if what == "axpy" {
                    k.axpy(alpha, &b, &mut y);
                    rk.axpy(alpha, &b, &mut yr);
                } else {
                    k.axpy_f16(alpha, &bh, &mut y);
                    rk.axpy_f16(alpha, &bh, &mut yr);
                }
                for i in 0..n {
                    let exact = f64::from(y0[i]) + f64::from(alpha) * f64::from(xs[i]);
                    let bound =
                        DOT_REL_TOL * (f64::from(alpha * xs[i]).abs() + f64::from(y0[i]).abs());
                    close(&format!("{what} n{n} [{i}]"), y[i], yr[i], bound);
                    close(
                        &format!("{what} n{n} [{i}] reference"),
                        yr[i],
                        exact as f32,
                        bound,
                    );
                }
            }
        }
    });
}

#[test]
fn f16_to_f32_is_exact() {
    let mut rng = Rng(77);
    for k in implementations() {
        for n in lengths() {
            let mut x = rng.vec_f16(n);
            if n > 3 {
                // Specials and subnormals convert exactly too.
                x[0] = f16::INFINITY;
                x[1] = f16::NEG_INFINITY;
                x[2] = f16::from_bits(1); // smallest subnormal
                x[3] = f16::from_bits(0x8000); // -0
            }
            let mut got = vec![0f32; n];
            k.f16_to_f32(&x, &mut got);
            let mut want = vec![0f32; n];
            reference::f16_to_f32(&x, &mut want);
            for i in 0..n {
                // Independent: f16 bits → f64 by the formula.
                let b = x[i].to_bits();
                let (sign, exp, man) =
                    ((b >> 15) as i32, ((b >> 10) & 31) as i32, (b & 1023) as f64);
                let mag = match exp {
                    0 => man * 2f64.powi(-24),
                    31 => f64::INFINITY,
                    e => (1.0 + man / 1024.0) * 2f64.powi(e - 15),
                };
                let exact = if sign == 1 { -mag } else { mag };
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "n={n} i={i}");
                assert_eq!(f64::from(want[i]), exact, "n={n} i={i}");
            }
        }
    }
}

#[test]
fn group_attention_kernels_match_reference_and_f64() {
    // (P positions, Hg heads, D): odd P (the four-stream kernels' scalar tail), D not a multiple
    // of 8 (the column tail), P = 0, GPT-2's D = 64 with 4 heads at long contexts.
    let mut rng = Rng(55);
    let kernels = implementations();
    for (p, hg, d) in [
        (0, 2, 8),
        (1, 1, 1),
        (3, 2, 7),
        (5, 4, 8),
        (17, 4, 64),
        (40, 3, 65),
        (9, 2, 130),
        (300, 4, 64),
        (2, 1, 200),
        (8, 5, 16),
    ] {
        let q = rng.vec(hg * d, 1.0);
        let w = rng.vec(hg * p, 1.0);
        let kv = rng.vec(p * hg * d, 2.0);
        let kvh = rng.vec_f16(p * hg * d);
        let kvhf = f16s(&kvh);
        for k in &kernels {
            // Scores: f32 and f16 keys, the kernel and the reference twin.
            let mut got = [vec![f32::NAN; hg * p], vec![f32::NAN; hg * p]];
            let mut want = [vec![f32::NAN; hg * p], vec![f32::NAN; hg * p]];
            k.group_scores(&kv, &q, &mut got[0], hg);
            k.group_scores_f16(&kvh, &q, &mut got[1], hg);
            reference::group_scores(&kv, &q, &mut want[0], hg);
            reference::group_scores_f16(&kvh, &q, &mut want[1], hg);
            for (vals, got, want) in [(&kv, &got[0], &want[0]), (&kvhf, &got[1], &want[1])] {
                for j in 0..hg {
                    for t in 0..p {
                        let terms = (0..d).map(|c| {
                            f64::from(q[j * d + c]) * f64::from(vals[(t * hg + j) * d + c])
                        });
                        let exact: f64 = terms.clone().sum();
                        let mag: f64 = terms.map(f64::abs).sum();
                        for (what, x) in [("fast", got[j * p + t]), ("reference", want[j * p + t])]
                        {
                            assert!(
                                (f64::from(x) - exact).abs() <= DOT_REL_TOL * mag + 1e-30,
                                "{} scores p={p} hg={hg} d={d} [{j},{t}] {what}: {x} vs {exact}",
                                k.name()
                            );
                        }
                    }
                }
            }
            // Weighted sums: the kernels overwrite, never accumulate into, out.
            let mut got = [vec![f32::NAN; hg * d], vec![f32::NAN; hg * d]];
            let mut want = [vec![f32::NAN; hg * d], vec![f32::NAN; hg * d]];
            k.group_weighted(&w, &kv, &mut got[0], hg);
            k.group_weighted_f16(&w, &kvh, &mut got[1], hg);
            reference::group_weighted(&w, &kv, &mut want[0], hg);
            reference::group_weighted_f16(&w, &kvh, &mut want[1], hg);
            for (vals, got, want) in [(&kv, &got[0], &want[0]), (&kvhf, &got[1], &want[1])] {
                for j in 0..hg {
                    for c in 0..d {
                        let terms = (0..p).map(|t| {
                            f64::from(w[j * p + t]) * f64::from(vals[(t * hg + j) * d + c])
                        });
                        let exact: f64 = terms.clone().sum();
                        let mag: f64 = terms.map(f64::abs).sum();
                        for (what, x) in [("fast", got[j * d + c]), ("reference", want[j * d + c])]
                        {
                            assert!(
                                (f64::from(x) - exact).abs() <= DOT_REL_TOL * mag + 1e-30,
                                "{} weighted p={p} hg={hg} d={d} [{j},{c}] {what}: {x} vs {exact}",
                                k.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn int8_kv_kernels_match_reference_bits_and_f64() {
    // (P, Hg, D): P around the eight- and four-position groups, D = 32, GPT-2's 64, 128 and
    // 256 (Gemma 3), and D = 48 (Qwen3 here: not a multiple of 32, the reference's path).
    let mut rng = Rng(56);
    for (p, hg, d) in [
        (0usize, 2usize, 64usize),
        (1, 1, 32),
        (7, 2, 64),
        (8, 4, 64),
        (9, 3, 128),
        (13, 2, 48),
        (33, 1, 256),
        (300, 4, 64),
    ] {
        let nbd = d.div_ceil(Q8_BLOCK);
        let k = Kernels::detect();
        // Rows quantized as the cache stores them, the queries as attention quantizes them.
        let quantize = |x: &[f32]| {
            let mut q = vec![0i8; x.len()];
            let mut s = vec![0f32; x.len() / d * nbd];
            k.quantize_q8_rows(x, d, &mut q, &mut s);
            (q, s)
        };
        let (kq, kd) = quantize(&rng.vec(p * hg * d, 2.0));
        let (vq, vd) = quantize(&rng.vec(p * hg * d, 2.0));
        let (qq, qd) = quantize(&rng.vec(hg * d, 1.0));
        let w = rng.vec(hg * p, 1.0);
        // Dequantized in f64: what the integer sums and scales stand for.
        let deq = |q: &[i8], s: &[f32], r: usize, c: usize| {
            f64::from(q[r * d + c]) * f64::from(s[r * nbd + c / Q8_BLOCK])
        };
        for kern in implementations() {
            let mut got = vec![f32::NAN; hg * p];
            let mut want = vec![f32::NAN; hg * p];
            kern.group_scores_q8((&kq, &kd), (&qq, &qd), &mut got, hg);
            reference::group_scores_q8((&kq, &kd), (&qq, &qd), &mut want, hg);
            assert!(
                same_bits(&got, &want),
                "{} scores p={p} hg={hg} d={d}",
                kern.name()
            );
            for j in 0..hg {
                for t in 0..p {
                    let terms = (0..d).map(|c| deq(&qq, &qd, j, c) * deq(&kq, &kd, t * hg + j, c));
                    let exact: f64 = terms.clone().sum();
                    let mag: f64 = terms.map(f64::abs).sum();
                    let x = f64::from(want[j * p + t]);
                    assert!(
                        (x - exact).abs() <= DOT_REL_TOL * mag + 1e-30,
                        "scores p={p} hg={hg} d={d} [{j},{t}]: {x} vs {exact}"
                    );
                }
            }
            let mut got = vec![f32::NAN; hg * d];
            let mut want = vec![f32::NAN; hg * d];
            kern.group_weighted_q8(&w, (&vq, &vd), &mut got, hg);
            reference::group_weighted_q8(&w, (&vq, &vd), &mut want, hg);
            assert!(
                same_bits(&got, &want),
                "{} weighted p={p} hg={hg} d={d}",
                kern.name()
            );
            for j in 0..hg {
                for c in 0..d {
                    let terms =
                        (0..p).map(|t| f64::from(w[j * p + t]) * deq(&vq, &vd, t * hg + j, c));
                    let exact: f64 = terms.clone().sum();
                    let mag: f64 = terms.map(f64::abs).sum();
                    let x = f64::from(want[j * d + c]);
                    assert!(
                        (x - exact).abs() <= DOT_REL_TOL * mag + 1e-30,
                        "weighted p={p} hg={hg} d={d} [{j},{c}]: {x} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn group_scores_with_mismatched_keys_panic() {
    panics_for_every_implementation("keys/values must be (P, Hg, D)", |k| {
        let mut s = vec![0f32; 2 * 3];
        k.group_scores(&[0.0; 2 * 3 * 4 - 1], &[0.0; 2 * 4], &mut s, 2);
    });
}

#[test]
fn add_matches_reference_exactly() {
    for_each_kernels(|k| {
        // The same cases for every implementation.
        let mut rng = Rng(10);
        for n in lengths() {
            let (x0, y) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
            let mut x = x0.clone();
            k.add(&mut x, &y);
            let want: Vec<f32> = x0.iter().zip(&y).map(|(a, b)| a + b).collect();
            assert_eq!(x, want, "add n{n}");
        }
    });
}

#[test]
fn layernorm_matches_reference_and_f64() {
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        // The same cases for every implementation.
        let mut rng = Rng(11);
        for n in lengths().filter(|&n| n > 0) {
            // An offset mean checks the two-pass variance.
            let x: Vec<f32> = rng.vec(n, 2.0).iter().map(|v| v + 3.0).collect();
            let (scale, shift) = (rng.vec(n, 1.5), rng.vec(n, 0.5));
            let (mut out, mut want) = (vec![0f32; n], vec![0f32; n]);
            k.layernorm(&x, &scale, &shift, &mut out, 1e-5);
            rk.layernorm(&x, &scale, &shift, &mut want, 1e-5);
            let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = x
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            for i in 0..n {
                let norm = (f64::from(x[i]) - mean) / (var + 1e-5).sqrt();
                let exact = norm * f64::from(scale[i]) + f64::from(shift[i]);
                let bound = LAYERNORM_TOL
                    * (f64::from(scale[i]).abs() * norm.abs() + f64::from(shift[i]).abs() + 1.0);
                close(&format!("layernorm n{n} [{i}]"), out[i], want[i], bound);
                close(
                    &format!("layernorm n{n} [{i}] reference"),
                    want[i],
                    exact as f32,
                    bound,
                );
            }
        }
    });
}

#[test]
fn layernorm_known_values() {
    // x = [1, 2, 3, 4]: mean 2.5, biased var 1.25.
    for k in implementations() {
        let mut out = [0f32; 4];
        k.layernorm(&[1.0, 2.0, 3.0, 4.0], &[1.0; 4], &[0.0; 4], &mut out, 0.0);
        let s = 1.25f32.sqrt();
        for (o, w) in out.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((o - w).abs() < 1e-6, "{} {o} vs {w}", k.name());
        }
    }
}

#[test]
fn gelu_matches_reference_and_known_values() {
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        // The same cases for every implementation.
        let mut rng = Rng(12);
        for n in lengths() {
            let x0 = rng.vec(n, 8.0);
            let (mut x, mut want) = (x0.clone(), x0.clone());
            k.gelu_tanh(&mut x);
            rk.gelu_tanh(&mut want);
            for i in 0..n {
                let bound = GELU_ABS_TOL * f64::from(x0[i].abs()).max(1.0);
                close(&format!("gelu n{n} x={}", x0[i]), x[i], want[i], bound);
            }
        }
        // Large magnitudes: identity and zero; the book's formula at a few points (computed in f64).
        let mut x = [
            -100.0f32, -20.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 20.0, 100.0,
        ];
        let x0 = x;
        k.gelu_tanh(&mut x);
        for (g, v) in x.iter().zip(x0) {
            let v64 = f64::from(v);
            let u = (2.0 / std::f64::consts::PI).sqrt() * (v64 + 0.044715 * v64.powi(3));
            let exact = 0.5 * v64 * (1.0 + u.tanh());
            close(
                &format!("gelu({v})"),
                *g,
                exact as f32,
                GELU_ABS_TOL * v64.abs().max(1.0),
            );
        }
    });
}

#[test]
fn softmax_matches_f64_and_masks() {
    let rk = Kernels::reference();
    for_each_kernels(|k| {
        // The same cases for every implementation.
        let mut rng = Rng(13);
        for n in lengths().filter(|&n| n > 0 && n <= 3072) {
            let x0 = rng.vec(n, 20.0);
            let max = x0
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let sum: f64 = x0.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            for kk in [k, &rk] {
                let mut x = x0.clone();
                kk.softmax(&mut x);
                for i in 0..n {
                    let exact = (f64::from(x0[i]) - max).exp() / sum;
                    let bound = SOFTMAX_REL_TOL * exact + SOFTMAX_ABS_TOL;
                    close(
                        &format!("softmax {} n{n} [{i}]", kk.name()),
                        x[i],
                        exact as f32,
                        bound,
                    );
                }
            }
        }
        // Masked positions (-inf) become exactly 0; large values do not overflow.
        let mut x = [
            f32::NEG_INFINITY,
            1000.0,
            f32::NEG_INFINITY,
            999.0,
            -1e30,
            1000.0,
            0.0,
            5.0,
            7.0,
        ];
        k.softmax(&mut x);
        assert_eq!([x[0], x[2], x[4], x[6], x[7], x[8]], [0.0; 6]);
        let e = (-1f64).exp();
        close("softmax big", x[1], (1.0 / (2.0 + e)) as f32, 1e-6);
        close("softmax big", x[3], (e / (2.0 + e)) as f32, 1e-6);
        let mut one = [f32::NEG_INFINITY, -3.0];
        k.softmax(&mut one);
        assert_eq!(one, [0.0, 1.0]);
        k.softmax(&mut []);
    });
}

#[test]
fn softmax_over_a_vocabulary_sums_to_one() {
    let mut rng = Rng(14);
    let x0 = rng.vec(50257, 15.0);
    for_each_kernels(|k| {
        let mut x = x0.clone();
        k.softmax(&mut x);
        let s: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let tol = if k.is_reference() {
            VOCAB_SUM_TOL_REFERENCE
        } else {
            VOCAB_SUM_TOL
        };
        assert!((s - 1.0).abs() < tol, "{}: sum {s}", k.name());
        let i = x0
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        let j = x
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(i, j);
    });
}

// ------------------------------------------------------------------ misc

#[test]
fn kernel_names_and_threads() {
    let r = Kernels::reference();
    assert!(r.is_reference());
    assert_eq!(r.name(), "reference");
    let d = Kernels::detect();
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512vnni"];
        let wide = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        // The AVX-512 set needs a compiler with its intrinsics (Rust >= 1.89, see build.rs).
        if wide && Kernels::available().len() == 3 {
            assert_eq!(d.name(), "x86_64-avx512-vnni", "{avx512:?}");
        } else {
            assert_eq!(d.name(), "x86_64-avx2-fma-f16c");
        }
    }
    #[cfg(target_arch = "aarch64")]
    assert_eq!(d.name(), "aarch64-neon");
    assert_eq!(d.with_threads(0).threads(), 1);
    let want = if cfg!(feature = "parallel") { 3 } else { 1 };
    assert_eq!(d.with_threads(3).threads(), want);
}

#[test]
fn available_lists_the_reference_first_and_detect_last_in_names_order() {
    let all = Kernels::available();
    let names: Vec<&str> = all.iter().map(Kernels::name).collect();
    assert_eq!(names[0], "reference");
    assert!(all[0].is_reference() && all[1..].iter().all(|k| !k.is_reference()));
    assert_eq!(names.last().copied(), Some(Kernels::detect().name()));
    // Each a distinct known name, in the order of `Kernels::NAMES`.
    let order: Vec<usize> = (names.iter())
        .map(|n| Kernels::NAMES.iter().position(|m| m == n).expect(n))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    assert!(
        all.iter()
            .all(|k| k.threads() == Kernels::reference().threads())
    );
}

#[test]
fn reference_twins_are_the_documented_functions() {
    // The plain functions are public too; spot-check one against hand-computed values.
    let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let mut y = [0f32; 2];
    reference::matvec_f32_rows(&w, &[1.0, 0.5, -1.0], &mut y, 0);
    assert_eq!(y, [1.0 + 1.0 - 3.0, 4.0 + 2.5 - 6.0]);
}

#[test]
fn fma_peak_reports_a_positive_rate() {
    // Speed is never asserted; only that the probe runs on 1 and 2 threads and returns a finite
    // positive figure.
    for threads in [1, 2] {
        let g = emberlm_runtime::kernels::peak::fma_peak_gflops(threads);
        assert!(g.is_finite() && g > 0.0, "{threads} threads: {g}");
    }
}

#[test]
fn read_bandwidth_reports_a_positive_rate() {
    // Speed is never asserted; only that the probe runs and returns a finite positive figure.
    for threads in [1, 2] {
        let gbs = bandwidth::read_bandwidth(8 << 20, threads);
        assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
        // A whole pass includes its slowest chunk: never faster than the best chunk.
        let s = bandwidth::read_bandwidth_stats(8 << 20, threads);
        assert!(
            s.median_pass_gb_s > 0.0 && s.median_pass_gb_s <= s.best_chunk_gb_s,
            "{s:?}"
        );
    }
    assert_eq!(bandwidth::read_bandwidth(3, 1), 0.0);
    assert_eq!(
        bandwidth::read_bandwidth_stats(3, 1),
        bandwidth::Bandwidth::default()
    );
}

#[test]
fn bandwidth_summary_takes_the_median_pass_and_the_best_chunk() {
    use bandwidth::{Bandwidth, Pass, summarize};
    let p = |gb_s, best_chunk_gb_s| Pass {
        gb_s,
        best_chunk_gb_s,
    };
    assert_eq!(summarize(&[]), Bandwidth::default());
    let odd = summarize(&[p(3.0, 4.0), p(1.0, 9.0), p(2.0, 2.5)]);
    assert_eq!(odd.median_pass_gb_s, 2.0);
    assert_eq!(odd.best_chunk_gb_s, 9.0);
    let even = summarize(&[p(4.0, 5.0), p(1.0, 1.5), p(3.0, 3.5), p(2.0, 2.5)]);
    assert_eq!(even.median_pass_gb_s, 2.5);
    assert_eq!(even.best_chunk_gb_s, 5.0);
    // Single passes of a live probe: positive, and a pass is never faster than its best chunk.
    let mut probe = bandwidth::Probe::new(8 << 20, 2);
    for _ in 0..2 {
        let pass = probe.pass();
        assert!(
            pass.gb_s > 0.0 && pass.gb_s <= pass.best_chunk_gb_s,
            "{pass:?}"
        );
    }
    assert_eq!(bandwidth::Probe::new(3, 1).pass(), Pass::default());
}

#[test]
fn quantize_q8_fast_path_gives_the_references_bits() {
    let mut rng = Rng(77);
    for k in implementations() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            1e-40, // subnormal
            f32::MAX,
            -f32::MAX,
        ];
        for c in [1, 31, 32, 33, 64, 95, 96, 100, 768, 3072] {
            for case in 0..12 {
                let mut x = rng.vec(c, 3.0);
                match case {
                    0 => {}
                    1 => x.fill(0.0),
                    2 => x.iter_mut().step_by(7).for_each(|v| *v = f32::NAN),
                    3 => x.iter_mut().step_by(5).for_each(|v| *v = f32::INFINITY),
                    4 => x.iter_mut().for_each(|v| *v *= 1e-39),
                    5 => x.iter_mut().for_each(|v| *v *= 1e37),
                    _ => {
                        let s = specials[case - 3];
                        x.iter_mut().step_by(3).for_each(|v| *v = s);
                    }
                }
                let nb = c.div_ceil(Q8_BLOCK);
                let (mut q, mut d) = (vec![0i8; c], vec![0f32; nb]);
                let (mut qr, mut dr) = (vec![0i8; c], vec![0f32; nb]);
                k.quantize_q8(&x, &mut q, &mut d);
                reference::quantize_q8(&x, &mut qr, &mut dr);
                assert_eq!(q, qr, "c={c} case {case}");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&d), bits(&dr), "c={c} case {case}");
            }
        }
    }
}

#[test]
fn avx512_rows_do_not_depend_on_how_they_are_grouped() {
    // The AVX-512 decode kernels run every row through one instruction sequence, whether it is
    // one of 4 rows computed together or a leftover: a row asked for alone gives the bits it has
    // in the whole product. (The AVX2 kernels reduce leftover rows in another order.)
    let Some(k) = implementations()
        .into_iter()
        .find(|k| k.name() == "x86_64-avx512-vnni")
    else {
        eprintln!("avx512 grouping test: SKIPPED, this host has no x86_64-avx512-vnni kernels");
        return;
    };
    let mut rng = Rng(77);
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (r, c) in [
        (9, 1),
        (13, 31),
        (7, 32),
        (11, 100),
        (10, 513),
        (9, 1000),
        (6, 1536),
    ] {
        let w = rng.vec(r * c, 1.0);
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let x = rng.vec(c, 2.0);
        let (q, d) = rng.q8(r, c);
        let w8 = Q8Matrix::new(&q, &d, r, c).unwrap();
        let mut xq = vec![0i8; c];
        let mut xd = vec![0f32; c.div_ceil(Q8_BLOCK)];
        k.quantize_q8(&x, &mut xq, &mut xd);
        let run = |y: &mut [f32], row_start: usize, which: usize| match which {
            0 => k.matvec_f32_rows(&w, &x, y, row_start),
            1 => k.matvec_f16_rows(&wh, &x, y, row_start),
            _ => k.matvec_q8q8_rows(w8, &xq, &xd, y, row_start),
        };
        for which in 0..3 {
            let mut whole = vec![f32::NAN; r];
            run(&mut whole, 0, which);
            for start in 0..r {
                for len in [1, 2, 5].into_iter().filter(|l| start + l <= r) {
                    let mut part = vec![f32::NAN; len];
                    run(&mut part, start, which);
                    assert_eq!(
                        bits(&part),
                        bits(&whole[start..start + len]),
                        "kernel {which} {r}x{c}: rows {start}..+{len}"
                    );
                }
            }
        }
    }
}

#[test]
fn kernels_by_name_and_its_errors() {
    for k in Kernels::available() {
        assert_eq!(Kernels::by_name(k.name()).unwrap().name(), k.name());
    }
    let short = [
        ("reference", "reference"),
        ("avx2", "x86_64-avx2-fma-f16c"),
        ("avx512", "x86_64-avx512-vnni"),
        ("neon", "aarch64-neon"),
    ];
    let names: Vec<&str> = Kernels::available().iter().map(Kernels::name).collect();
    for (s, full) in short {
        match Kernels::by_name(s) {
            Ok(k) => assert_eq!(k.name(), full),
            Err(e) => {
                assert!(!names.contains(&full), "{s}: {e}");
                assert_eq!(e.requested, s);
            }
        }
    }
    let e = Kernels::by_name("avx9000").unwrap_err();
    assert_eq!(e.requested, "avx9000");
    assert_eq!(e.available, names);
    let msg = e.to_string();
    assert!(
        msg.contains("\"avx9000\"") && msg.contains("reference"),
        "{msg}"
    );
}
