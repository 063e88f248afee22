//! The Q4 kernels of every implementation the host runs ([`Kernels::available`]) == their
//! reference twins, and both == an independent f64 computation, on odd shapes and tails: the
//! int4 × int8 decode product, the f32-activation product, the prefill panel (through
//! `matmul_packed_rows` and `matmul`) and the dequantization the panel loads with. The Q4 weights
//! come from the formats crate's reference quantizer, read in place (no repacking).

use emberlm_formats::quant::{self, Q4_BLOCK_BYTES};
use emberlm_runtime::kernels::geometry::packed_len;
use emberlm_runtime::kernels::{Epilogue, Kernels, Mat, Q4Matrix, q4_reference};
use half::f16;

/// |fast − reference| and |reference − exact| ≤ this · Σ|w·x| (as the other matrix-vector kernels).
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

/// A quantized (R, C) matrix: nibbles, scales and its exact f32 values.
struct Q4 {
    q: Vec<u8>,
    s: Vec<f16>,
    wf: Vec<f32>,
    r: usize,
    c: usize,
}

impl Q4 {
    fn new(rng: &mut Rng, r: usize, c: usize) -> Self {
        let x = rng.vec(r * c, 0.5);
        let nb = quant::q4_blocks_per_row(c);
        let mut q = vec![0u8; r * nb * Q4_BLOCK_BYTES];
        let mut s = vec![f16::ZERO; r * nb];
        quant::quantize_q4(&x, c, &mut q, &mut s).unwrap();
        let mut wf = vec![0f32; r * c];
        quant::dequantize_q4(&q, &s, c, &mut wf).unwrap();
        Q4 { q, s, wf, r, c }
    }
    fn mat(&self) -> Q4Matrix<'_> {
        Q4Matrix::new(&self.q, &self.s, self.r, self.c).unwrap()
    }
}

fn shapes() -> Vec<(usize, usize)> {
    let mut v = vec![
        (1, 1),
        (3, 31),
        (5, 32),
        (7, 33),
        (4, 64),
        (9, 95),
        (2, 96),
        (6, 200),
    ];
    v.extend([(13, 768), (3, 1025), (17, 3072)]);
    // The AVX-512 kernel's paths: octs (8 blocks), a leftover quad, leftover whole blocks and a
    // short tail, C = 32 · (8k + 4 + 2) + 7; and an oct plus a quad exactly (C = 384).
    v.extend([(7, 455), (6, 711), (5, 384)]);
    v
}

/// Checks `got` and `want` against the f64 product of `w` (R, C) and `x`.
fn check(what: &str, w: &[f32], x: &[f64], got: &[f32], want: &[f32], row_start: usize) {
    let c = x.len();
    for (i, (&g, &r)) in got.iter().zip(want).enumerate() {
        let row = &w[(row_start + i) * c..][..c];
        let exact: f64 = row.iter().zip(x).map(|(&w, &x)| f64::from(w) * x).sum();
        let abs: f64 = row
            .iter()
            .zip(x)
            .map(|(&w, &x)| (f64::from(w) * x).abs())
            .sum();
        let bound = MATVEC_REL_TOL * abs + 1e-30;
        assert!(
            (f64::from(g) - f64::from(r)).abs() <= bound,
            "{what} row {}: {g} vs reference {r} (bound {bound})",
            row_start + i
        );
        assert!(
            (f64::from(r) - exact).abs() <= bound,
            "{what} row {}: reference {r} vs f64 {exact} (bound {bound})",
            row_start + i
        );
    }
}

#[test]
fn q4q8_decode_matches_reference_and_f64() {
    let mut rng = Rng(41);
    let rk = Kernels::reference();
    for k in Kernels::available() {
        let k = k.with_threads(1);
        for (r, c) in shapes() {
            let w = Q4::new(&mut rng, r, c);
            let x = rng.vec(c, 3.0);
            let nb = quant::q4_blocks_per_row(c);
            let (mut xq, mut xd) = (vec![0i8; c], vec![0f32; nb]);
            rk.quantize_q8(&x, &mut xq, &mut xd);
            // The product the kernels compute exactly: W · (xq · xd).
            let xe: Vec<f64> = (0..c)
                .map(|j| f64::from(xq[j]) * f64::from(xd[j / 32]))
                .collect();
            let mut want = vec![f32::NAN; r];
            q4_reference::matvec_q4q8_rows(w.mat(), &xq, &xd, &mut want, 0);
            let mut got = vec![f32::NAN; r];
            k.matvec_q4q8_rows(w.mat(), &xq, &xd, &mut got, 0);
            check(
                &format!("{} q4q8 {r}x{c}", k.name()),
                &w.wf,
                &xe,
                &got,
                &want,
                0,
            );
            // A row range in the middle.
            if r > 2 {
                let mut part = vec![f32::NAN; r - 2];
                k.matvec_q4q8_rows(w.mat(), &xq, &xd, &mut part, 1);
                check("rows 1..", &w.wf, &xe, &part, &want[1..r - 1], 1);
            }
            // f32 activations.
            let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let mut want = vec![f32::NAN; r];
            q4_reference::matvec_q4_rows(w.mat(), &x, &mut want, 0);
            let mut got = vec![f32::NAN; r];
            k.matvec_q4(w.mat(), &x, &mut got);
            check(
                &format!("{} q4 f32 {r}x{c}", k.name()),
                &w.wf,
                &xf,
                &got,
                &want,
                0,
            );
        }
    }
}

#[test]
fn q4_dequantization_is_exact() {
    let mut rng = Rng(5);
    for k in Kernels::available() {
        for (r, c) in shapes() {
            let w = Q4::new(&mut rng, r, c);
            for row in [0, r - 1] {
                for k0 in (0..c).step_by(32) {
                    let len = (c - k0).min(1 + (rng.next_u64() % 300) as usize);
                    let mut got = vec![f32::NAN; len];
                    k.dequantize_q4_cols(w.mat(), row, k0, &mut got);
                    assert_eq!(
                        got,
                        w.wf[row * c + k0..][..len],
                        "{} {r}x{c} row {row} cols {k0}+{len}",
                        k.name()
                    );
                }
            }
            let mut row = vec![0f32; c];
            w.mat().dequantize_row(r - 1, &mut row);
            assert_eq!(row, w.wf[(r - 1) * c..]);
        }
    }
}

#[test]
fn q4_prefill_panel_matches_reference_and_f64() {
    let mut rng = Rng(9);
    let rk = Kernels::reference();
    for k in Kernels::available() {
        let k = k.with_threads(1);
        for &(n, r, c) in &[
            (1, 5, 33),
            (5, 17, 64),
            (16, 9, 95),
            (17, 40, 768),
            (33, 3, 1025),
        ] {
            let w = Q4::new(&mut rng, r, c);
            let x = rng.vec(n * c, 2.0);
            let mut xp = vec![f32::NAN; packed_len(n, c)];
            k.pack_tokens(&x, c, &mut xp);
            let mut want = vec![f32::NAN; r * n];
            rk.matmul_packed_rows(Mat::Q4(w.mat()), c, &xp, n, 0..r, &mut want);
            let mut got = vec![f32::NAN; r * n];
            k.matmul_packed_rows(Mat::Q4(w.mat()), c, &xp, n, 0..r, &mut got);
            // And the threaded entry point, with its own packing.
            let mut y = vec![f32::NAN; n * r];
            let mut scratch = vec![0f32; n * r];
            let mut xp2 = vec![f32::NAN; packed_len(n, c)];
            k.with_threads(2).matmul(
                Mat::Q4(w.mat()),
                c,
                &x,
                &mut y,
                &mut xp2,
                &mut scratch,
                Epilogue::default(),
            );
            for t in 0..n {
                let xt: Vec<f64> = x[t * c..][..c].iter().map(|&v| f64::from(v)).collect();
                let what = format!("{} panel n{n} {r}x{c} token {t}", k.name());
                let row = |v: &[f32]| v[t * r..][..r].to_vec();
                check(&what, &w.wf, &xt, &row(&got), &row(&want), 0);
                check(
                    &format!("{what} matmul"),
                    &w.wf,
                    &xt,
                    &row(&y),
                    &row(&want),
                    0,
                );
            }
        }
    }
}

#[test]
fn q4_matrix_views_check_their_lengths() {
    let e = Q4Matrix::new(&[0u8; 31], &[f16::ZERO; 2], 1, 64).unwrap_err();
    assert_eq!((e.what, e.expected, e.found), ("q4 quants", 32, 31));
    let e = Q4Matrix::new(&[0u8; 32], &[f16::ZERO; 1], 1, 64).unwrap_err();
    assert_eq!((e.what, e.expected, e.found), ("q4 scales", 2, 1));
    let e = Q4Matrix::new(&[], &[], usize::MAX, 64).unwrap_err();
    assert_eq!(e.expected, usize::MAX);
}
