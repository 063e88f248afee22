//! The Llama-style families' elementwise kernels (RMSNorm, RoPE, SiLU·up, GELU·up) for every
//! kernel set this host runs ([`Kernels::available`]), against their reference twins and an f64
//! evaluation of the formula, on lengths with tails.

use emberlm_runtime::kernels::Kernels;

/// RMSNorm and RoPE: every set runs the reference twin today; a fast twin must stay within this
/// of the f64 value (relative, floor 1).
const ELEMENTWISE_TOL: f64 = 2e-6;
/// SiLU·up: the AVX2 set uses a polynomial exp, as its GELU (relative to max(|g·u|, 1)).
const SILU_MUL_TOL: f64 = 4e-6;
/// GELU·up: the fast sets' GELU uses a polynomial exp (`GELU_ABS_TOL` in kernels.rs), times |up|.
const GELU_MUL_TOL: f64 = 4e-6;

struct Rng(u64);

impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

fn close(what: &str, got: f32, want: f64, tol: f64) {
    let err = (f64::from(got) - want).abs();
    assert!(err <= tol * want.abs().max(1.0), "{what}: {got} vs {want}");
}

const LENGTHS: [usize; 9] = [1, 2, 7, 8, 16, 31, 64, 100, 257];

#[test]
fn family_kernels_match_reference_and_f64() {
    let rk = Kernels::reference();
    for k in Kernels::available() {
        let name = k.name();
        let mut rng = Rng(5);
        for n in LENGTHS {
            let x = rng.vec(n, 3.0);
            let w = rng.vec(n, 1.5);
            let (mut out, mut want) = (vec![0f32; n], vec![0f32; n]);
            k.rmsnorm(&x, &w, &mut out, 1e-6);
            rk.rmsnorm(&x, &w, &mut want, 1e-6);
            let ms = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n as f64;
            for i in 0..n {
                let exact = f64::from(x[i]) / (ms + 1e-6).sqrt() * f64::from(w[i]);
                close(
                    &format!("{name} rmsnorm n{n}"),
                    out[i],
                    exact,
                    ELEMENTWISE_TOL,
                );
                close(
                    &format!("ref rmsnorm n{n}"),
                    want[i],
                    exact,
                    ELEMENTWISE_TOL,
                );
            }
            let u = rng.vec(n, 2.0);
            let g0 = rng.vec(n, 6.0);
            let mut g = g0.clone();
            k.silu_mul(&mut g, &u);
            for i in 0..n {
                let gv = f64::from(g0[i]);
                let exact = gv / (1.0 + (-gv).exp()) * f64::from(u[i]);
                close(&format!("{name} silu_mul n{n}"), g[i], exact, SILU_MUL_TOL);
            }
            let mut g = g0.clone();
            k.gelu_mul(&mut g, &u);
            for i in 0..n {
                let gv = f64::from(g0[i]);
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let exact = 0.5 * gv * (1.0 + (c * (gv + 0.044715 * gv.powi(3))).tanh());
                let exact = exact * f64::from(u[i]);
                let tol = GELU_MUL_TOL * f64::from(g0[i].abs()).max(1.0);
                close(&format!("{name} gelu_mul n{n}"), g[i], exact, tol);
            }
            if n % 2 == 0 {
                let h = n / 2;
                let angles: Vec<f64> = (0..h)
                    .map(|i| f64::from(rng.f()) * 40.0 + i as f64)
                    .collect();
                let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
                let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
                let mut y = x.clone();
                k.rope(&mut y, &cos, &sin);
                for i in 0..h {
                    let (x1, x2) = (f64::from(x[i]), f64::from(x[i + h]));
                    let (c, s) = (f64::from(cos[i]), f64::from(sin[i]));
                    close(
                        &format!("{name} rope n{n}"),
                        y[i],
                        x1 * c - x2 * s,
                        ELEMENTWISE_TOL,
                    );
                    close(
                        &format!("{name} rope n{n}"),
                        y[i + h],
                        x2 * c + x1 * s,
                        ELEMENTWISE_TOL,
                    );
                }
            }
        }
    }
}
