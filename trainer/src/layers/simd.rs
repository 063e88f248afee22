//! Small vector helpers written so LLVM vectorizes them: several independent accumulators (Rust has
//! no fast-math, so a single running sum would be a serial dependency chain), plus a polynomial
//! `exp` that vectorizes (the libm one does not). Each has a plain twin in the tests.

/// Lanes of independent partial sums.
const LANES: usize = 16;

/// Σ a[i]·b[i]. `a` and `b` have equal length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    reduce(&acc) + tail
}

/// Σ x[i].
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let cx = x.chunks_exact(LANES);
    let rx = cx.remainder();
    for v in cx {
        for l in 0..LANES {
            acc[l] += v[l];
        }
    }
    let mut tail = 0.0f32;
    for v in rx {
        tail += v;
    }
    reduce(&acc) + tail
}

/// max x[i] (−∞ for an empty slice). NaN inputs are ignored (callers see NaN through their sums).
#[inline]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let cx = x.chunks_exact(LANES);
    let rx = cx.remainder();
    for v in cx {
        for l in 0..LANES {
            acc[l] = if v[l] > acc[l] { v[l] } else { acc[l] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.iter().chain(rx) {
        m = if *v > m { *v } else { m };
    }
    m
}

#[inline]
fn reduce(acc: &[f32; LANES]) -> f32 {
    // Pairwise, fixed order.
    let mut s = *acc;
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            s[l] += s[l + w];
        }
        w /= 2;
    }
    s[0]
}

const EXP_HI: f32 = 88.0; // below ln(f32::MAX) with margin, so 2^n (n <= 127) stays finite
const EXP_LO: f32 = -87.336_55; // below this exp underflows to subnormals; we return ~1e-38
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5·2^23 rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x with a relative error of a few ulp for x in [−87.3, 88] (Cephes `expf` polynomial);
/// inputs outside are clamped, NaN propagates. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons are false for NaN, so NaN passes through both selects.
    let x = if x > EXP_HI { EXP_HI } else { x };
    let x = if x < EXP_LO { EXP_LO } else { x };
    // t = 1.5·2^23 + n with n = round(x·log2 e): n is both t − 1.5·2^23 (as a float) and the
    // difference of the bit patterns (as an integer), which avoids a float→int `as` (Rust's
    // saturating cast does not vectorize).
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is an integer in [-126, 127], so n + 127 is a valid biased exponent (for NaN input the
    // bits are garbage but y is NaN anyway).
    let ni = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    y * f32::from_bits(ni.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::Rng;

    /// Relative error allowed for the polynomial exp against f64's exp.
    const EXP_RTOL: f64 = 4e-7;
    /// Relative error allowed for the multi-accumulator reductions against an f64 sum.
    const SUM_RTOL: f64 = 1e-5;

    #[test]
    fn exp_matches_f64() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            assert!(
                ((got - want) / want).abs() < EXP_RTOL,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn reductions_match_plain_loops() {
        let mut rng = Rng(7);
        for n in [0usize, 1, 5, 16, 17, 63, 64, 1000] {
            let a: Vec<f32> = rng.vec(n, 1.0).iter().map(|&v| v as f32).collect();
            let b: Vec<f32> = rng.vec(n, 1.0).iter().map(|&v| v as f32).collect();
            let d: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let s: f64 = a.iter().map(|x| *x as f64).sum();
            let m = a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert!(
                (dot(&a, &b) as f64 - d).abs() <= SUM_RTOL * (1.0 + d.abs()),
                "dot n={n}"
            );
            assert!(
                (sum(&a) as f64 - s).abs() <= SUM_RTOL * (1.0 + s.abs()),
                "sum n={n}"
            );
            assert_eq!(max(&a), m, "max n={n}");
        }
    }
}
