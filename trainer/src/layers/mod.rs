//! The layers of GPT-2 and of the modern families (RMSNorm, RoPE, gated MLPs), one file each, `forward` directly above `backward` (llm.c's `train_gpt2.c`
//! shape). Every backward comment cites the forward line it differentiates.
//!
//! Conventions shared by every layer:
//! - Slices are dense row-major; shapes are written with the letters defined in each file's header
//!   (B batch, T time, C channels, …).
//! - `backward` *accumulates* (`+=`) into parameter gradients, so gradient accumulation across
//!   micro-batches is just several backward calls before one optimizer step. Gradients of
//!   activations are overwritten or accumulated as each function's doc says.
//! - Work is split over rows (or column blocks) with rayon in the *current* pool, in fixed chunks
//!   whose results never depend on the number of threads: results are bit-identical with 1 or N
//!   threads.
//! - Each file ends with a finite-difference gradient check against a float64 reference forward
//!   written independently of the fast f32 code.

pub mod attention;
pub mod crossentropy;
pub mod dropout;
pub mod encoder;
pub mod gelu;
pub mod glu;
pub mod gqa;
pub mod layernorm;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub(crate) mod simd;

#[cfg(test)]
pub(crate) mod check {
    //! Test helpers: a seeded RNG, central finite differences in f64, and tolerant comparison.

    /// xorshift64*; deterministic test data.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [-1, 1), already representable in f32 (so f32 and f64 code see equal inputs).
        pub fn uniform(&mut self) -> f64 {
            let u = (self.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
            2.0 * u - 1.0
        }
        pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
            (0..n)
                .map(|_| (self.uniform() * scale) as f32 as f64)
                .collect()
        }
    }

    pub fn f32s(x: &[f64]) -> Vec<f32> {
        x.iter().map(|&v| v as f32).collect()
    }

    /// Step for central differences in f64: truncation error ~ h², rounding ~ 1e-16 / h.
    pub const FD_STEP: f64 = 1e-5;

    /// Central finite-difference gradient of `f` at `x`.
    pub fn fd_grad(x: &[f64], f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        let idx: Vec<usize> = (0..x.len()).collect();
        fd_grad_at(x, &idx, f)
    }

    /// Central finite differences of `f` at `x` for the coordinates in `idx` only.
    pub fn fd_grad_at(x: &[f64], idx: &[usize], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        let mut x = x.to_vec();
        idx.iter()
            .map(|&i| {
                let orig = x[i];
                x[i] = orig + FD_STEP;
                let fp = f(&x);
                x[i] = orig - FD_STEP;
                let fm = f(&x);
                x[i] = orig;
                (fp - fm) / (2.0 * FD_STEP)
            })
            .collect()
    }

    /// Σ out·w in f64: the scalar whose gradient w.r.t. `out` is `w`.
    pub fn weighted_sum(out: &[f64], w: &[f64]) -> f64 {
        out.iter().zip(w).map(|(a, b)| a * b).sum()
    }

    /// Asserts |got - want| <= atol + rtol·|want| elementwise, and that `want` is not all zeros
    /// (a check against zeros would pass for a backward that does nothing).
    #[track_caller]
    pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        assert!(
            want.iter().any(|w| w.abs() > atol * 10.0),
            "{what}: reference is ~0 everywhere, the check would be vacuous"
        );
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g as f64 - w).abs();
            assert!(
                err <= atol + rtol * w.abs(),
                "{what}[{i}]: got {g}, want {w} (err {err:e})"
            );
        }
    }
}
