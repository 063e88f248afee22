//! Reference quantizers shared by the trainer's export and the runtime's kernels.
//!
//! - f16: round to nearest (IEEE binary16); values beyond ±65504 are an error, not an infinity.
//! - Q8 (int8 with per-block scales): a tensor is viewed as rows × cols with cols = its last
//!   dimension. Each row is cut into blocks of [`Q8_BLOCK`] = 32 consecutive elements (the last block
//!   of a row is shorter when cols % 32 != 0). A block stores one f16 scale `d` and 32 signed bytes
//!   `q`, and element `x` is stored as `q = round(x / d)` with `d >= max|x| / 127` (the smallest f16
//!   at or above it), so `|q| <= 127` and the per-element error is at most `d / 2`.
//!
//! Letters: R rows, C columns (the last dimension), NB = ceil(C / 32) blocks per row.

use half::f16;
use std::fmt;

/// Elements per Q8 block (along the last dimension).
pub const Q8_BLOCK: usize = 32;

/// Why a tensor could not be quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantError {
    /// The input holds a NaN or an infinity at this flat index.
    NonFinite {
        /// Flat index of the first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The value does not fit in f16 (|x| > 65504) or its Q8 scale does not.
    OutOfRange {
        /// Flat index of the first bad element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Slice lengths do not match the stated shape.
    LengthMismatch {
        /// Which slice.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Found length.
        found: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NonFinite { index, value } => {
                write!(
                    f,
                    "element {index} is {value}: cannot quantize a non-finite weight"
                )
            }
            QuantError::OutOfRange { index, value } => {
                write!(
                    f,
                    "element {index} = {value} is outside the range of f16 (±65504)"
                )
            }
            QuantError::LengthMismatch {
                what,
                expected,
                found,
            } => {
                write!(f, "{what} has {found} elements, expected {expected}")
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// NB: Q8 blocks per row of `cols` elements.
pub fn q8_blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(Q8_BLOCK)
}

/// The scale for a block whose largest magnitude is `absmax`: the smallest f16 `d` with
/// `d * 127 >= absmax`, or `None` when that exceeds f16's range.
pub fn q8_scale(absmax: f32) -> Option<f16> {
    let exact = absmax / 127.0;
    let mut d = f16::from_f32(exact);
    if d.to_f32() < exact {
        d = f16::from_bits(d.to_bits() + 1); // next f16 up (exact is positive and finite)
    }
    if d.is_finite() { Some(d) } else { None }
}

/// Quantizes `x` (R, C) into `quants` (R, C) and `scales` (R, NB).
pub fn quantize_q8(
    x: &[f32],
    cols: usize,
    quants: &mut [i8],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let nb = q8_blocks_per_row(cols);
    check_len("input", rows * cols, x.len())?;
    check_len("quants", x.len(), quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
    }
    for r in 0..rows {
        for b in 0..nb {
            let start = r * cols + b * Q8_BLOCK;
            let end = (start + Q8_BLOCK).min((r + 1) * cols);
            let block = &x[start..end];
            let absmax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = q8_scale(absmax).ok_or(QuantError::OutOfRange {
                index: start,
                value: absmax,
            })?;
            scales[r * nb + b] = d;
            let df = d.to_f32();
            for (q, &v) in quants[start..end].iter_mut().zip(block) {
                *q = if df == 0.0 {
                    0
                } else {
                    (v / df).round().clamp(-127.0, 127.0) as i8
                };
            }
        }
    }
    Ok(())
}

/// Expands `quants` (R, C) and `scales` (R, NB) into `out` (R, C).
pub fn dequantize_q8(
    quants: &[i8],
    scales: &[f16],
    cols: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let rows = quants.len().checked_div(cols).unwrap_or(0);
    let nb = q8_blocks_per_row(cols);
    check_len("quants", rows * cols, quants.len())?;
    check_len("scales", rows * nb, scales.len())?;
    check_len("output", quants.len(), out.len())?;
    for (i, (o, &q)) in out.iter_mut().zip(quants).enumerate() {
        let (r, c) = (i / cols, i % cols);
        *o = q as f32 * scales[r * nb + c / Q8_BLOCK].to_f32();
    }
    Ok(())
}

/// Rounds `x` to f16 into `out`; fails on non-finite or out-of-range values.
pub fn quantize_f16(x: &[f32], out: &mut [f16]) -> Result<(), QuantError> {
    check_len("output", x.len(), out.len())?;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
        let h = f16::from_f32(v);
        if !h.is_finite() {
            return Err(QuantError::OutOfRange { index: i, value: v });
        }
        *o = h;
    }
    Ok(())
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), QuantError> {
    if expected == found {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q8_roundtrip(x: &[f32], cols: usize) -> (Vec<f32>, Vec<f16>) {
        let rows = x.len() / cols;
        let mut q = vec![0i8; x.len()];
        let mut s = vec![f16::ZERO; rows * q8_blocks_per_row(cols)];
        quantize_q8(x, cols, &mut q, &mut s).unwrap();
        let mut out = vec![0f32; x.len()];
        dequantize_q8(&q, &s, cols, &mut out).unwrap();
        (out, s)
    }

    proptest! {
        // The per-element error is at most half a step, and the step is at most absmax/127 rounded
        // up to the next f16 (relative 2^-10 above, or one f16 subnormal step).
        #[test]
        fn q8_error_is_within_half_a_step(
            rows in 1usize..5, cols in 1usize..100, scale in 1e-6f32..1e4,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let x: Vec<f32> = (0..rows * cols).map(|_| {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }).collect();
            let (y, s) = q8_roundtrip(&x, cols);
            let nb = q8_blocks_per_row(cols);
            for r in 0..rows {
                for b in 0..nb {
                    let lo = r * cols + b * Q8_BLOCK;
                    let hi = (lo + Q8_BLOCK).min((r + 1) * cols);
                    let absmax = x[lo..hi].iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = s[r * nb + b].to_f32();
                    prop_assert!(d * 127.0 >= absmax);
                    prop_assert!(d <= absmax / 127.0 * (1.0 + 1.0 / 1024.0) + 6.0e-8);
                    for i in lo..hi {
                        prop_assert!((x[i] - y[i]).abs() <= d / 2.0 * (1.0 + 1e-6), "{} vs {}", x[i], y[i]);
                    }
                }
            }
        }

        // Quantizing a dequantized tensor gives back the same bytes (the grid is a fixed point).
        #[test]
        fn q8_round_trip_is_stable(cols in 1usize..70, vals in proptest::collection::vec(-100f32..100.0, 1..300)) {
            let n = vals.len() / cols * cols;
            prop_assume!(n > 0);
            let (y, s1) = q8_roundtrip(&vals[..n], cols);
            let (z, s2) = q8_roundtrip(&y, cols);
            prop_assert_eq!(s1, s2);
            prop_assert_eq!(y, z);
        }

        // f16: relative error at most 2^-11 for normal values, round trip exact.
        #[test]
        fn f16_error_bound_and_round_trip(vals in proptest::collection::vec(-65000f32..65000.0, 0..200)) {
            let mut h = vec![f16::ZERO; vals.len()];
            quantize_f16(&vals, &mut h).unwrap();
            for (v, h) in vals.iter().zip(&h) {
                let back = h.to_f32();
                prop_assert!((v - back).abs() <= v.abs() / 2048.0 + 3.0e-8, "{v} -> {back}");
                let again = f16::from_f32(back);
                prop_assert_eq!(again.to_bits(), h.to_bits());
            }
        }
    }

    #[test]
    fn zero_blocks_and_tails() {
        let x = [0.0f32; 5];
        let (y, s) = q8_roundtrip(&x, 5);
        assert_eq!(y, vec![0.0; 5]);
        assert_eq!(s, vec![f16::ZERO]);
        // 33 columns: two blocks per row, the second of one element.
        let x: Vec<f32> = (0..66).map(|i| i as f32 - 30.0).collect();
        let (y, s) = q8_roundtrip(&x, 33);
        assert_eq!(s.len(), 4);
        // Row 0's second block holds the single element x[32] = 2.0: stored as 127 * d, d >= 2/127.
        let d = s[1].to_f32();
        assert!(
            d * 127.0 >= 2.0 && (y[32] - x[32]).abs() <= d / 2.0,
            "{} {}",
            y[32],
            d
        );
        assert_eq!(s[2], q8_scale(34.0).unwrap()); // row 1, block 0 holds 3..=34
    }

    #[test]
    fn errors_name_the_element() {
        let mut q = [0i8; 3];
        let mut s = [f16::ZERO; 1];
        let err = quantize_q8(&[1.0, f32::NAN, 2.0], 3, &mut q, &mut s).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 1, .. }),
            "{err:?}"
        );
        let err = quantize_q8(&[1.0, 2.0, 1e9], 3, &mut q, &mut s).unwrap_err();
        assert_eq!(
            err,
            QuantError::OutOfRange {
                index: 0,
                value: 1e9
            }
        );
        let err = quantize_f16(&[1.0, 70000.0], &mut [f16::ZERO; 2]).unwrap_err();
        assert_eq!(
            err,
            QuantError::OutOfRange {
                index: 1,
                value: 70000.0
            }
        );
        let err = quantize_q8(&[1.0, 2.0], 2, &mut q, &mut s).unwrap_err();
        assert_eq!(
            err,
            QuantError::LengthMismatch {
                what: "quants",
                expected: 2,
                found: 3
            }
        );
    }
}
