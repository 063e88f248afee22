//! Compute kernels for decoding and prefill: plain reference twins ([`mod@reference`]) and
//! architecture fast paths (x86-64 AVX2 + FMA + F16C, with AVX-512 VNNI decode matvecs where the CPU
//! has them; aarch64 NEON), chosen once by [`Kernels::detect`] (or by name: [`Kernels::from_env`]).
//!
//! # Letters (used in every shape in this module and its children)
//! - R: rows of a weight matrix (one per output), C: its columns (one per input), so y = W x with
//!   W (R, C) row-major, x (C), y (R).
//! - NB = ceil(C / 32): Q8 blocks per row ([`Q8_BLOCK`]).
//! - N: tokens in a prefill batch; X (N, C) and Y (N, R) are row-major.
//! - L: the length of a plain vector (attention scores, a head's slice of the KV cache, ...).
//!
//! # Contracts
//! - Shapes are the caller's invariant (the model loader checks tensor shapes against the config
//!   before any kernel runs): a length mismatch is a programming error and panics with a message
//!   naming the slice, before any memory is touched. Untrusted bytes are validated earlier, by
//!   [`Q8Matrix::new`] and the file reader.
//! - Nothing here allocates. [`Kernels::matvec_f32`], [`Kernels::matvec_f16`],
//!   [`Kernels::matvec_q8`] and [`Kernels::matmul`] split their rows
//!   over [`Kernels::threads`] rayon tasks on the *current* pool: run a whole token inside one
//!   `pool.install` of a pool with that many threads. The `_rows` entry points and the small ops run
//!   on the calling thread only.
//! - Accuracy: a fast kernel computes the same sum as its twin in [`mod@reference`], in another f32
//!   order (8 lanes, several accumulators), so the two differ by f32 rounding only: the tests
//!   require `|fast - reference| <= 1e-5 · Σ|w·x|` per output (`MATVEC_REL_TOL`). In
//!   [`Kernels::matvec_q8`], [`Kernels::matvec_q8_rows`] and [`Kernels::matmul`] Q8 weights are
//!   dequantized on the fly (`q · d` is exact in f32) and activations stay f32, so outputs carry
//!   only the weights' own quantization error (at most `d/2` per weight).
//!   [`Kernels::matvec_q8q8_rows`] (the session's int8 decode, on every target) also takes
//!   activations quantized to int8 blocks of 32 ([`Kernels::quantize_q8`], at most
//!   `xd/2` per element); its block sums are exact integers. `gelu_tanh` and `softmax` use a
//!   polynomial `exp` (relative error about 2e-7).
//! - Determinism: for fixed inputs every kernel returns the same bits on every call, whatever the
//!   thread count (each output is computed by one task in a fixed order). A token's row of a
//!   [`Kernels::matmul`] does not depend on the other tokens of the batch either.
//!   [`Kernels::matvec_multi_rows`] (batched decode: one weight matrix against B vectors,
//!   `multi.rs`) gives each vector the bits of the same set's single-vector kernel.

pub mod bandwidth;
pub mod geometry;
mod multi;
#[cfg(target_arch = "x86_64")]
mod multi_avx2;
// The AVX-512 multi-vector decode kernels (same Rust >= 1.89 condition as below).
#[cfg(all(target_arch = "x86_64", ember_vnni))]
#[allow(clippy::incompatible_msrv)]
mod multi_avx512;
pub mod panel;
pub mod panel_q8;
pub mod peak;
mod q4;
#[cfg(target_arch = "aarch64")]
mod q4_aarch64;
mod q4_matrix;
pub mod q4_reference;
#[cfg(target_arch = "x86_64")]
mod q4_x86_64;
mod q6;
#[cfg(target_arch = "aarch64")]
mod q6_aarch64;
// The Q6 VNNI decode product (same Rust >= 1.89 condition as `x86_64_avx512`).
#[cfg(all(target_arch = "x86_64", ember_vnni))]
#[allow(clippy::incompatible_msrv)]
mod q6_avx512;
mod q6_matrix;
pub mod q6_reference;
#[cfg(target_arch = "x86_64")]
mod q6_x86_64;
pub mod reference;
pub use multi::{Vectors, multi_scratch_len};
pub use q4_matrix::Q4Matrix;
pub use q6_matrix::Q6Matrix;

#[cfg(target_arch = "aarch64")]
mod aarch64;
// Its AVX-512 part is compiled only under `ember_vnni` (Rust >= 1.89), as `x86_64_avx512`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod kv_q8_x86_64;
#[cfg(target_arch = "x86_64")]
mod x86_64;
// Rust >= 1.89 only (build.rs sets `ember_vnni`): its intrinsics are newer than the MSRV.
#[cfg(all(target_arch = "x86_64", ember_vnni))]
#[allow(clippy::incompatible_msrv)]
mod x86_64_vnni;
// The AVX-512 decode matvecs (same Rust >= 1.89 condition as above).
#[cfg(all(target_arch = "x86_64", ember_vnni))]
#[allow(clippy::incompatible_msrv)]
mod panel_avx512;
#[cfg(all(target_arch = "x86_64", ember_vnni))]
#[allow(clippy::incompatible_msrv)]
mod x86_64_avx512;

/// The AVX-512 decode kernels' token, carried beside [`Isa::Avx2`] (uninhabited where the
/// compiler lacks their intrinsics).
#[cfg(all(target_arch = "x86_64", ember_vnni))]
type Wide = x86_64_avx512::Avx512;
#[cfg(not(all(target_arch = "x86_64", ember_vnni)))]
#[derive(Clone, Copy, Debug)]
enum Wide {}

/// The environment variable that picks a kernel set by name ([`Kernels::from_env`]).
pub const KERNELS_ENV: &str = "EMBER_KERNELS";

/// [`Kernels::by_name`] was asked for a kernel set this host cannot run (or that does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKernels {
    /// The name asked for.
    pub requested: String,
    /// The names this host runs ([`Kernels::available`]).
    pub available: Vec<&'static str>,
}

impl fmt::Display for UnknownKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no kernel set {:?} on this host; it runs {} (or the short names reference, avx2, \
             avx512, neon)",
            self.requested,
            self.available.join(", ")
        )
    }
}

impl std::error::Error for UnknownKernels {}

pub use emberlm_formats::quant::Q8_BLOCK;
use half::f16;
use std::fmt;

/// Below this many weights a matrix-vector product runs on one thread (a rayon hand-off costs a
/// few microseconds, about 60 k weights' worth of work).
#[cfg_attr(not(feature = "parallel"), allow(dead_code))]
const PAR_MIN_WEIGHTS: usize = 64 * 1024;

/// Row chunks per thread: a little slack lets rayon balance a slow (shared) core.
#[cfg_attr(not(feature = "parallel"), allow(dead_code))]
const CHUNKS_PER_THREAD: usize = 2;

/// Row chunks start at multiples of this (the fast kernels work on groups of 4 rows).
#[cfg_attr(not(feature = "parallel"), allow(dead_code))]
const ROW_ALIGN: usize = 16;

/// A weight matrix's shape does not match its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeError {
    /// Which slice or dimension is wrong.
    pub what: &'static str,
    /// The length the shape requires (`usize::MAX` when computing it overflows).
    pub expected: usize,
    /// The length found.
    pub found: usize,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expected == usize::MAX {
            write!(
                f,
                "{}: the shape's element count overflows usize",
                self.what
            )
        } else {
            write!(
                f,
                "{} has {} elements, expected {}",
                self.what, self.found, self.expected
            )
        }
    }
}

impl std::error::Error for ShapeError {}

/// Checks the lengths of a block-quantized matrix's slices, `names` = [quants, scales]: (rows,
/// NB, bytes per block) give rows · NB · bytes quant bytes and rows · NB scales. A mismatch (or
/// an overflow, reported as expecting `usize::MAX`) is a [`ShapeError`] naming the slice.
pub(crate) fn check_blocks(
    names: [&'static str; 2],
    (rows, nb, block_bytes): (usize, usize, usize),
    (quants, scales): (usize, usize),
) -> Result<(), ShapeError> {
    let check = |what, expected: Option<usize>, found| match expected {
        Some(e) if e == found => Ok(()),
        e => Err(ShapeError {
            what,
            expected: e.unwrap_or(usize::MAX),
            found,
        }),
    };
    let blocks = rows.checked_mul(nb);
    check(
        names[0],
        blocks.and_then(|b| b.checked_mul(block_bytes)),
        quants,
    )?;
    check(names[1], blocks, scales)
}

/// A Q8 weight matrix W (R, C): `quants` (R, C) row-major and f16 `scales` (R, NB); element
/// (r, c) is `quants[r*C + c] as f32 * scales[r*NB + c/32]`. Borrowed, `Copy`, validated once.
#[derive(Clone, Copy, Debug)]
pub struct Q8Matrix<'a> {
    quants: &'a [i8],
    scales: &'a [f16],
    rows: usize,
    cols: usize,
}

impl<'a> Q8Matrix<'a> {
    /// Views `quants` and `scales` as a (rows, cols) Q8 matrix.
    ///
    /// Errors name the slice whose length does not match (`"q8 quants"`, `"q8 scales"`), including
    /// when rows × cols overflows.
    pub fn new(
        quants: &'a [i8],
        scales: &'a [f16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ShapeError> {
        let nb = cols.div_ceil(Q8_BLOCK);
        let check = |what, expected: Option<usize>, found| match expected {
            Some(e) if e == found => Ok(()),
            Some(e) => Err(ShapeError {
                what,
                expected: e,
                found,
            }),
            None => Err(ShapeError {
                what,
                expected: usize::MAX,
                found,
            }),
        };
        check("q8 quants", rows.checked_mul(cols), quants.len())?;
        check("q8 scales", rows.checked_mul(nb), scales.len())?;
        Ok(Q8Matrix {
            quants,
            scales,
            rows,
            cols,
        })
    }

    /// R.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// C.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// NB = ceil(C / 32).
    pub fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(Q8_BLOCK)
    }

    /// The quants (R, C).
    pub fn quants(&self) -> &'a [i8] {
        self.quants
    }

    /// The scales (R, NB).
    pub fn scales(&self) -> &'a [f16] {
        self.scales
    }

    /// Row `r` dequantized into `out` (C), e.g. a token embedding.
    ///
    /// # Panics
    /// If `r >= R` or `out.len() != C`.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows,
            "dequantize_row: row {r} out of {}",
            self.rows
        );
        assert_eq!(out.len(), self.cols, "dequantize_row: out length");
        self.dequantize_cols(r, 0, out);
    }

    /// Columns `k0 .. k0 + out.len()` of row `r` as f32 (`k0` a multiple of [`Q8_BLOCK`]).
    ///
    /// # Panics
    /// If the columns are not inside row `r`.
    pub fn dequantize_cols(&self, r: usize, k0: usize, out: &mut [f32]) {
        assert!(
            k0 % Q8_BLOCK == 0 && k0 + out.len() <= self.cols,
            "dequantize_cols: columns {k0}.. of {}",
            self.cols
        );
        let q = &self.quants[r * self.cols + k0..][..out.len()];
        let d = &self.scales[r * self.blocks_per_row() + k0 / Q8_BLOCK..];
        for ((ob, qb), d) in out.chunks_mut(Q8_BLOCK).zip(q.chunks(Q8_BLOCK)).zip(d) {
            let d = d.to_f32();
            for (o, &q) in ob.iter_mut().zip(qb) {
                *o = f32::from(q) * d;
            }
        }
    }
}

/// A weight matrix (R, C), row-major, in any stored dtype.
#[derive(Clone, Copy, Debug)]
pub enum Mat<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// int8 blocks with f16 scales.
    Q8(Q8Matrix<'a>),
    /// 4-bit codebook blocks with f16 scales.
    Q4(Q4Matrix<'a>),
    /// 6-bit blocks with f16 scales.
    Q6(Q6Matrix<'a>),
}

impl Mat<'_> {
    /// Rows of the matrix when it has `c` columns (Q8 matrices know their own shape; for f32 and
    /// f16 the length must be a multiple of `c`).
    ///
    /// # Panics
    /// If the length is not a whole number of rows of `c` (for Q8: if `c` is not its width).
    pub fn rows(&self, c: usize) -> usize {
        let (len, r) = match *self {
            Mat::F32(w) => (w.len(), w.len() / c.max(1)),
            Mat::F16(w) => (w.len(), w.len() / c.max(1)),
            Mat::Q8(w) => {
                assert_eq!(
                    w.cols(),
                    c,
                    "a Q8 matrix of {} columns used as {c}",
                    w.cols()
                );
                return w.rows();
            }
            Mat::Q4(w) => {
                assert_eq!(
                    w.cols(),
                    c,
                    "a Q4 matrix of {} columns used as {c}",
                    w.cols()
                );
                return w.rows();
            }
            Mat::Q6(w) => {
                assert_eq!(
                    w.cols(),
                    c,
                    "a Q6 matrix of {} columns used as {c}",
                    w.cols()
                );
                return w.rows();
            }
        };
        assert_eq!(len, r * c, "{len} weights are not rows of {c}");
        r
    }
}

/// What [`Kernels::matmul`] applies to its outputs, inside each thread's task (so the threads
/// share this work too): first the bias (R), added to every token's row, then GELU (tanh
/// approximation, as after GPT-2's first MLP layer). Elementwise, so the bits do not depend on
/// the thread count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every token's row of Y.
    pub bias: Option<&'a [f32]>,
    /// GELU after the bias.
    pub gelu: bool,
}

/// Token t's row of Y (R) from the G tasks' (N, P_g) blocks laid end to end in `scratch`.
#[cfg(feature = "parallel")]
fn gather_row(scratch: &[f32], n: usize, groups: usize, t: usize, yr: &mut [f32]) {
    let r = yr.len();
    for part in (0..groups).map(|g| geometry::row_part(r, g, groups)) {
        let p = part.len();
        if p > 0 {
            yr[part.clone()].copy_from_slice(&scratch[part.start * n + t * p..][..p]);
        }
    }
}

/// Which implementation runs. The arch variants carry a token that proves the CPU features were
/// detected: they cannot be built any other way.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Reference,
    #[cfg(target_arch = "x86_64")]
    Avx2(x86_64::Avx2),
    #[cfg(target_arch = "aarch64")]
    Neon(aarch64::Neon),
}

/// The kernel set for this CPU plus a thread count; cheap to copy. Build it once per session.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
    /// With [`Isa::Avx2`]: the AVX-512 decode matvecs (f32, f16, int8 and int4 × int8) replace
    /// AVX2's. Always `None` on other targets.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wide: Option<Wide>,
    threads: usize,
}

impl Kernels {
    /// The fastest kernels this CPU supports (x86-64: AVX-512 F/BW/VL/VNNI decode matvecs over
    /// AVX2 + FMA + F16C, else AVX2 + FMA + F16C; aarch64: NEON), else the reference twins: the
    /// last of [`Kernels::available`]. Threads default to the current rayon pool's size (1
    /// without `parallel`).
    pub fn detect() -> Self {
        Self::fast_paths()
            .into_iter()
            .flatten()
            .last()
            .unwrap_or_else(Self::reference)
    }

    /// [`Kernels::by_name`] of the environment variable `EMBER_KERNELS` ([`KERNELS_ENV`]) when
    /// it is set and not empty (e.g. `EMBER_KERNELS=avx2` runs the AVX2 decode kernels on an
    /// AVX-512 host, to compare them), else [`Kernels::detect`].
    ///
    /// # Errors
    /// [`UnknownKernels`] if the variable names no kernel set this host runs (or is not UTF-8).
    pub fn from_env() -> Result<Self, UnknownKernels> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) if !v.is_empty() => Self::by_name(&v),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Self::detect()),
            Err(std::env::VarError::NotUnicode(v)) => Err(UnknownKernels {
                requested: v.to_string_lossy().into_owned(),
                available: Self::available().iter().map(Kernels::name).collect(),
            }),
        }
    }

    /// The kernel set called `name` ([`Kernels::NAMES`], or the short names `reference`,
    /// `avx2`, `avx512`, `neon`), if this host runs it.
    ///
    /// # Errors
    /// [`UnknownKernels`] naming the request and what this host runs.
    pub fn by_name(name: &str) -> Result<Self, UnknownKernels> {
        let full = match name {
            "avx2" => "x86_64-avx2-fma-f16c",
            "avx512" => "x86_64-avx512-vnni",
            "neon" => "aarch64-neon",
            other => other,
        };
        let all = Self::available();
        all.iter()
            .find(|k| k.name() == full)
            .copied()
            .ok_or_else(|| UnknownKernels {
                requested: name.to_string(),
                available: all.iter().map(Kernels::name).collect(),
            })
    }

    /// The fast kernel sets in [`Kernels::NAMES`] order, `None` where this host lacks one.
    fn fast_paths() -> [Option<Kernels>; 3] {
        let k = |isa, wide| Kernels {
            isa,
            wide,
            threads: default_threads(),
        };
        #[cfg(target_arch = "x86_64")]
        let avx2 = x86_64::Avx2::detect().map(Isa::Avx2);
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        let avx512 = avx2.zip(x86_64_avx512::Avx512::detect());
        #[cfg(not(all(target_arch = "x86_64", ember_vnni)))]
        let avx512: Option<(Isa, Wide)> = None;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2: Option<Isa> = None;
        #[cfg(target_arch = "aarch64")]
        let neon = aarch64::Neon::detect().map(Isa::Neon);
        #[cfg(not(target_arch = "aarch64"))]
        let neon: Option<Isa> = None;
        [
            avx2.map(|isa| k(isa, None)),
            avx512.map(|(isa, w)| k(isa, Some(w))),
            neon.map(|isa| k(isa, None)),
        ]
    }

    /// The name ([`Kernels::name`]) of every kernel implementation in this crate, on any target:
    /// the reference twins first, then each architecture's fast path.
    pub const NAMES: &'static [&'static str] = &[
        "reference",
        "x86_64-avx2-fma-f16c",
        "x86_64-avx512-vnni",
        "aarch64-neon",
    ];

    /// Every kernel implementation this host can run, in [`Kernels::NAMES`] order (the reference
    /// twins first; the last is what [`Kernels::detect`] picks), each with the default thread
    /// count. Tests run each against the reference; the names of [`Kernels::NAMES`] missing here
    /// are the ones this host skips.
    pub fn available() -> Vec<Kernels> {
        std::iter::once(Self::reference())
            .chain(Self::fast_paths().into_iter().flatten())
            .collect()
    }

    /// The plain reference twins (any CPU), with the default thread count.
    pub fn reference() -> Self {
        Kernels {
            isa: Isa::Reference,
            wide: None,
            threads: default_threads(),
        }
    }

    /// Sets how many rayon tasks the threaded kernels split into (clamped to at least 1; always 1
    /// without the `parallel` feature). Match it to the pool the caller `install`s.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = if cfg!(feature = "parallel") {
            threads.max(1)
        } else {
            1
        };
        self
    }

    /// The thread count the threaded kernels split into.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// "reference", "x86_64-avx2-fma-f16c", "x86_64-avx512-vnni" (AVX2's set with the AVX-512
    /// decode matvecs) or "aarch64-neon".
    pub fn name(&self) -> &'static str {
        match self.isa {
            Isa::Reference => "reference",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) if self.wide.is_some() => "x86_64-avx512-vnni",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "x86_64-avx2-fma-f16c",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(_) => "aarch64-neon",
        }
    }

    /// True for [`Kernels::reference`] (or a CPU without the fast paths' features).
    pub fn is_reference(&self) -> bool {
        matches!(self.isa, Isa::Reference)
    }

    // ---------------------------------------------------------------- decode: matrix-vector

    /// y (R) = W (R, C) · x (C), f32 weights, threaded over row chunks.
    ///
    /// # Panics
    /// If `w.len() != y.len() * x.len()`.
    pub fn matvec_f32(&self, w: &[f32], x: &[f32], y: &mut [f32]) {
        assert_eq!(
            w.len(),
            y.len() * x.len(),
            "matvec_f32: w must be (R, C) = (y.len(), x.len())"
        );
        self.split_rows(y, x.len(), |row_start, yc| {
            self.matvec_f32_rows(w, x, yc, row_start)
        });
    }

    /// y = rows `row_start .. row_start + y.len()` of W (R, C) · x (C), on the calling thread.
    /// `w` is the whole matrix (R = w.len() / C), so callers can split or fuse rows themselves.
    ///
    /// # Panics
    /// If `w.len()` is not a multiple of C (or is non-zero when C = 0), or the rows exceed R.
    pub fn matvec_f32_rows(&self, w: &[f32], x: &[f32], y: &mut [f32], row_start: usize) {
        check_rows("matvec_f32_rows", w.len(), x.len(), y.len(), row_start);
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return x86_64_avx512::matvec_f32_rows(t, w, x, y, row_start);
        }
        match self.isa {
            Isa::Reference => reference::matvec_f32_rows(w, x, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::matvec_f32_rows(t, w, x, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::matvec_f32_rows(t, w, x, y, row_start),
        }
    }

    /// y (R) = W (R, C) · x (C), f16 weights, threaded over row chunks.
    ///
    /// # Panics
    /// If `w.len() != y.len() * x.len()`.
    pub fn matvec_f16(&self, w: &[f16], x: &[f32], y: &mut [f32]) {
        assert_eq!(
            w.len(),
            y.len() * x.len(),
            "matvec_f16: w must be (R, C) = (y.len(), x.len())"
        );
        self.split_rows(y, x.len(), |row_start, yc| {
            self.matvec_f16_rows(w, x, yc, row_start)
        });
    }

    /// Row-range twin of [`Kernels::matvec_f16`], on the calling thread (see
    /// [`Kernels::matvec_f32_rows`]).
    ///
    /// # Panics
    /// As [`Kernels::matvec_f32_rows`].
    pub fn matvec_f16_rows(&self, w: &[f16], x: &[f32], y: &mut [f32], row_start: usize) {
        check_rows("matvec_f16_rows", w.len(), x.len(), y.len(), row_start);
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return x86_64_avx512::matvec_f16_rows(t, w, x, y, row_start);
        }
        match self.isa {
            Isa::Reference => reference::matvec_f16_rows(w, x, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::matvec_f16_rows(t, w, x, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::matvec_f16_rows(t, w, x, y, row_start),
        }
    }

    /// y (R) = W (R, C) · x (C), Q8 weights (dequantized on the fly; x stays f32), threaded over
    /// row chunks.
    ///
    /// # Panics
    /// If `x.len() != C` or `y.len() != R`.
    pub fn matvec_q8(&self, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32]) {
        assert_eq!(y.len(), w.rows(), "matvec_q8: y length must be R");
        self.split_rows(y, w.cols(), |row_start, yc| {
            self.matvec_q8_rows(w, x, yc, row_start)
        });
    }

    /// Row-range twin of [`Kernels::matvec_q8`], on the calling thread.
    ///
    /// # Panics
    /// If `x.len() != C` or `row_start + y.len() > R`.
    pub fn matvec_q8_rows(&self, w: Q8Matrix<'_>, x: &[f32], y: &mut [f32], row_start: usize) {
        assert_eq!(x.len(), w.cols(), "matvec_q8_rows: x length must be C");
        assert!(
            row_start
                .checked_add(y.len())
                .is_some_and(|end| end <= w.rows()),
            "matvec_q8_rows: rows {row_start}..+{} exceed R = {}",
            y.len(),
            w.rows()
        );
        match self.isa {
            Isa::Reference => reference::matvec_q8_rows(w, x, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::matvec_q8_rows(t, w, x, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::matvec_q8_rows(t, w, x, y, row_start),
        }
    }

    /// Quantizes x (C) to int8 blocks of 32 for [`Kernels::matvec_q8q8_rows`]: q (C) and one f32
    /// scale per block in d (NB); see [`reference::quantize_q8`]. The x86-64 fast path gives the
    /// same bits as the reference (tested), so the choice of kernels never changes a result here.
    ///
    /// # Panics
    /// If `q.len() != C` or `d.len() != NB`.
    pub fn quantize_q8(&self, x: &[f32], q: &mut [i8], d: &mut [f32]) {
        assert_eq!(q.len(), x.len(), "quantize_q8: q length must be C");
        assert_eq!(
            d.len(),
            x.len().div_ceil(Q8_BLOCK),
            "quantize_q8: d length must be ceil(C / 32)"
        );
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::quantize_q8(t, x, q, d),
            _ => reference::quantize_q8(x, q, d),
        }
    }

    /// x (N, C) quantized row by row by [`Kernels::quantize_q8`]: quants q (N, C) and scales d
    /// (N, NB), NB = ⌈C/32⌉ (the last block of a row short when 32 does not divide C).
    ///
    /// # Panics
    /// If C is 0 or does not divide x, or q and d are not (N, C) and (N, NB).
    pub fn quantize_q8_rows(&self, x: &[f32], c: usize, q: &mut [i8], d: &mut [f32]) {
        let nb = c.div_ceil(Q8_BLOCK);
        assert!(
            c > 0 && x.len() % c == 0 && q.len() == x.len() && d.len() == x.len() / c * nb,
            "quantize_q8_rows: x, q must be (N, C) and d (N, NB)"
        );
        let rows = x.chunks_exact(c).zip(q.chunks_exact_mut(c));
        for ((x, q), d) in rows.zip(d.chunks_exact_mut(nb)) {
            self.quantize_q8(x, q, d);
        }
    }

    /// y = rows `row_start .. row_start + y.len()` of W (R, C) · x, with x quantized by
    /// [`Kernels::quantize_q8`] into xq (C) and xd (NB): each block's dot product is an exact
    /// integer sum (x86-64: `maddubs` / `madd`, or `vpdpbusd` with VNNI; aarch64: `vmull_s8` /
    /// `vpadalq_s16`), scaled by the weight and activation scales; on the calling thread. Adds
    /// the activations' quantization error (≤ xd/2 per element) to the weights' own.
    ///
    /// # Panics
    /// If `xq.len() != C`, `xd.len() != NB` or `row_start + y.len() > R`.
    pub fn matvec_q8q8_rows(
        &self,
        w: Q8Matrix<'_>,
        xq: &[i8],
        xd: &[f32],
        y: &mut [f32],
        row_start: usize,
    ) {
        assert_eq!(xq.len(), w.cols(), "matvec_q8q8_rows: xq length must be C");
        assert_eq!(
            xd.len(),
            w.blocks_per_row(),
            "matvec_q8q8_rows: xd length must be NB"
        );
        assert!(
            row_start
                .checked_add(y.len())
                .is_some_and(|end| end <= w.rows()),
            "matvec_q8q8_rows: rows {row_start}..+{} exceed R = {}",
            y.len(),
            w.rows()
        );
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return x86_64_avx512::matvec_q8q8_rows(t, w, xq, xd, y, row_start);
        }
        match self.isa {
            Isa::Reference => reference::matvec_q8q8_rows(w, xq, xd, y, row_start),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::matvec_q8q8_rows(t, w, xq, xd, y, row_start),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::matvec_q8q8_rows(t, w, xq, xd, y, row_start),
        }
    }

    // ---------------------------------------------------------------- prefill

    /// The prefill product Y (N, R) = X (N, C) · Wᵀ for W (R, C) of any dtype (N = `x.len() / C`,
    /// R = `y.len() / N`). X is packed into `xp` ([`Kernels::pack_tokens`]; at least
    /// [`geometry::packed_len`]`(N, C)` elements), then W's rows are split over
    /// [`Kernels::threads`] rayon tasks of the current pool, each a [`Kernels::matmul_packed_rows`]
    /// on its own rows (split at multiples of 48). With one thread the product lands in Y directly;
    /// with several, each task writes its (N, P) block into `scratch` (at least N·R elements) and
    /// the blocks are copied into Y's columns. Every W element is converted once per call. `ep`
    /// (bias, then GELU) is applied by each task to its own block. The bits do not depend on the
    /// thread count.
    ///
    /// # Panics
    /// If C = 0, the lengths do not describe one (N, C) · (R, C)ᵀ product, or a buffer is short.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        w: Mat<'_>,
        c: usize,
        x: &[f32],
        y: &mut [f32],
        xp: &mut [f32],
        scratch: &mut [f32],
        ep: Epilogue<'_>,
    ) {
        assert!(c > 0, "matmul: C must be positive");
        let n = x.len() / c;
        assert_eq!(x.len(), n * c, "matmul: x must be (N, C)");
        if n == 0 {
            assert!(y.is_empty(), "matmul: y must be empty when N = 0");
            return;
        }
        let r = y.len() / n;
        assert_eq!(y.len(), n * r, "matmul: y must be (N, R)");
        assert_eq!(w.rows(c), r, "matmul: W must hold R = {r} rows of C = {c}");
        if let Some(b) = ep.bias {
            assert_eq!(b.len(), r, "matmul: the bias must have R = {r} elements");
        }
        if r == 0 {
            return;
        }
        let xp = &mut xp[..geometry::packed_len(n, c)];
        #[cfg(feature = "parallel")]
        if self.threads > 1 {
            use rayon::prelude::*;
            let groups = self.threads;
            let scratch = &mut scratch[..n * r];
            xp.par_chunks_mut(geometry::TOKENS * c)
                .enumerate()
                .for_each(|(g, dst)| geometry::pack_group(x, c, g, dst));
            self.rows_in_tasks(w, c, xp, n, r, 0, groups, scratch, ep);
            // Token t's row of Y gathers its outputs from every task's (N, P) block.
            let scratch = &*scratch;
            y.par_chunks_mut(r)
                .with_min_len(16)
                .enumerate()
                .for_each(|(t, yr)| gather_row(scratch, n, groups, t, yr));
            return;
        }
        #[cfg(not(feature = "parallel"))]
        let _ = scratch;
        self.pack_tokens(x, c, xp);
        self.matmul_packed_rows(w, c, xp, n, 0..r, y);
        self.epilogue(ep, 0..r, y);
    }

    /// Adds the bias of rows `rows` to each token's row of `block` (N, P), then applies GELU.
    pub(crate) fn epilogue(
        &self,
        ep: Epilogue<'_>,
        rows: std::ops::Range<usize>,
        block: &mut [f32],
    ) {
        if rows.is_empty() {
            return;
        }
        if let Some(b) = ep.bias {
            for br in block.chunks_exact_mut(rows.len()) {
                self.add(br, &b[rows.clone()]);
            }
        }
        if ep.gelu {
            self.gelu_tanh(block);
        }
    }

    /// Tasks g.. of G for [`Kernels::matmul`]: task g computes rows `row_part(g)` into its (N, P)
    /// block at the start of `scratch`, applies the epilogue to it, and forks the rest.
    #[cfg(feature = "parallel")]
    #[allow(clippy::too_many_arguments)]
    fn rows_in_tasks(
        &self,
        w: Mat<'_>,
        c: usize,
        xp: &[f32],
        n: usize,
        r: usize,
        g: usize,
        groups: usize,
        scratch: &mut [f32],
        ep: Epilogue<'_>,
    ) {
        let part = geometry::row_part(r, g, groups);
        let (mine, rest) = scratch.split_at_mut(part.len() * n);
        let this = |mine: &mut [f32]| {
            self.matmul_packed_rows(w, c, xp, n, part.clone(), mine);
            self.epilogue(ep, part.clone(), mine);
        };
        if g + 1 >= groups {
            return this(mine);
        }
        rayon::join(
            || this(mine),
            || self.rows_in_tasks(w, c, xp, n, r, g + 1, groups, rest, ep),
        );
    }

    /// Packs X (N, C) (N = `x.len() / C`) into `xp` for [`Kernels::matmul_packed_rows`]: groups of
    /// [`geometry::TOKENS`] tokens stored column by column, the last group zero-padded. `xp` must hold
    /// at least [`geometry::packed_len`]`(N, C)` elements.
    ///
    /// # Panics
    /// If C = 0, `x.len()` is not a multiple of C, or `xp` is too short.
    pub fn pack_tokens(&self, x: &[f32], c: usize, xp: &mut [f32]) {
        assert!(c > 0, "pack_tokens: C must be positive");
        geometry::pack_tokens(x, c, xp)
    }

    /// y (N, P) = X · W[rows]ᵀ for W (R, C) in any dtype, on the calling thread, with X (N, C)
    /// packed by [`Kernels::pack_tokens`] and P = `rows.len()`: `y[t·P + j]` is token t's output
    /// for weight row `rows.start + j`. The prefill product of every dtype; call it on disjoint row ranges
    /// from several threads (each output is computed by one call in a fixed order, so the bits
    /// do not depend on the split). Within the matrix-vector tolerance of the plain sum.
    ///
    /// # Panics
    /// If `rows` is not inside W, or `xp` / `y` are too short.
    pub fn matmul_packed_rows(
        &self,
        w: Mat<'_>,
        c: usize,
        xp: &[f32],
        n: usize,
        rows: std::ops::Range<usize>,
        y: &mut [f32],
    ) {
        panel::matmul_rows(self, w, c, xp, n, rows, y)
    }

    // ---------------------------------------------------------------- small decode ops

    /// Σ a[i] · b[i] over L elements (an attention score q·k).
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
        match self.isa {
            Isa::Reference => reference::dot_f32(a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::dot_f32(t, a, b),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::dot_f32(t, a, b),
        }
    }

    /// Σ a[i] · b[i] with `b` (L) in f16 (an f16 KV-cache row).
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn dot_f32_f16(&self, a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f32_f16: lengths differ");
        match self.isa {
            Isa::Reference => reference::dot_f32_f16(a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::dot_f32_f16(t, a, b),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::dot_f32_f16(t, a, b),
        }
    }

    /// y (L) += alpha · x (L) (attention output: out += p_t · v_t).
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn axpy(&self, alpha: f32, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "axpy: lengths differ");
        match self.isa {
            Isa::Reference => reference::axpy(alpha, x, y),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::axpy(t, alpha, x, y),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::axpy(t, alpha, x, y),
        }
    }

    /// y (L) += alpha · x (L) with `x` in f16 (an f16 KV-cache row).
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn axpy_f16(&self, alpha: f32, x: &[f16], y: &mut [f32]) {
        assert_eq!(x.len(), y.len(), "axpy_f16: lengths differ");
        match self.isa {
            Isa::Reference => reference::axpy_f16(alpha, x, y),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::axpy_f16(t, alpha, x, y),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::axpy_f16(t, alpha, x, y),
        }
    }

    /// Attention scores of a group of `heads` (Hg) heads: s (Hg, P) with
    /// `s[j·P + t] = k[t, j, :] · q[j, :]`, for keys k (P, Hg, D) as a KV-cache group holds them
    /// (one position's Hg·D elements after another) and queries q (Hg, D). x86-64 reads the keys
    /// as four streams, one per quarter of the positions; other ISAs loop over
    /// [`Kernels::dot_f32`].
    ///
    /// # Panics
    /// If `heads` is 0, does not divide `q.len()` and `s.len()`, or `k.len() != P · q.len()`.
    pub fn group_scores(&self, k: &[f32], q: &[f32], s: &mut [f32], heads: usize) {
        let (p, d) = group_shape("group_scores", k.len(), q.len(), s.len(), heads);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::group_scores(t, k, q, s, heads),
            _ => each_score(s, p, |j, t| {
                self.dot_f32(&q[j * d..(j + 1) * d], &k[(t * heads + j) * d..][..d])
            }),
        }
    }

    /// [`Kernels::group_scores`] with keys in f16.
    ///
    /// # Panics
    /// As [`Kernels::group_scores`].
    pub fn group_scores_f16(&self, k: &[f16], q: &[f32], s: &mut [f32], heads: usize) {
        let (p, d) = group_shape("group_scores_f16", k.len(), q.len(), s.len(), heads);
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return x86_64_avx512::group_scores_f16(t, k, q, s, heads);
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::group_scores_f16(t, k, q, s, heads),
            _ => each_score(s, p, |j, t| {
                self.dot_f32_f16(&q[j * d..(j + 1) * d], &k[(t * heads + j) * d..][..d])
            }),
        }
    }

    /// [`Kernels::group_scores`] against an int8 KV cache: keys k (P, Hg, D) as quants (P·Hg·D)
    /// and one f32 scale per block of 32 of each row of D (P·Hg·NBD, NBD = ⌈D/32⌉), queries q
    /// (Hg, D) quantized row by row by [`Kernels::quantize_q8`] (quants (Hg·D), scales
    /// (Hg·NBD)). Each block's dot product is an exact integer sum, scaled by the two scales;
    /// the blocks are added in f32 in order, with the bits of [`reference::group_scores_q8`] on
    /// every ISA (x86-64: AVX2; others: the reference).
    ///
    /// # Panics
    /// If `heads` is 0, does not divide the query and `s`, or the keys or scales do not match.
    pub fn group_scores_q8(
        &self,
        k: (&[i8], &[f32]),
        q: (&[i8], &[f32]),
        s: &mut [f32],
        heads: usize,
    ) {
        let (p, d) = group_shape("group_scores_q8", k.0.len(), q.0.len(), s.len(), heads);
        let nbd = d.div_ceil(Q8_BLOCK);
        assert!(
            k.1.len() == p * heads * nbd && q.1.len() == heads * nbd,
            "group_scores_q8: scales must be (P·Hg, NBD) and (Hg, NBD)"
        );
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => kv_q8_x86_64::group_scores_q8(t, k, q, s, heads),
            _ => reference::group_scores_q8(k, q, s, heads),
        }
    }

    /// [`Kernels::group_weighted`] against an int8 KV cache: values v laid out as the keys of
    /// [`Kernels::group_scores_q8`]; for each position in order, one fused multiply-add per
    /// output element by (weight · the block's scale), with the bits of
    /// [`reference::group_weighted_q8`] on every ISA.
    ///
    /// # Panics
    /// If `heads` is 0, does not divide `out` and `w`, or the values or scales do not match.
    pub fn group_weighted_q8(&self, w: &[f32], v: (&[i8], &[f32]), out: &mut [f32], heads: usize) {
        let (p, d) = group_shape("group_weighted_q8", v.0.len(), out.len(), w.len(), heads);
        assert_eq!(
            v.1.len(),
            p * heads * d.div_ceil(Q8_BLOCK),
            "group_weighted_q8: scales must be (P·Hg, NBD)"
        );
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return kv_q8_x86_64::group_weighted_q8_512(t, w, v, out, heads);
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => kv_q8_x86_64::group_weighted_q8(t, w, v, out, heads),
            _ => reference::group_weighted_q8(w, v, out, heads),
        }
    }

    /// Attention's weighted sum of values for a group of `heads` (Hg) heads: out (Hg, D) with
    /// `out[j, :] = Σ_t w[j·P + t] · v[t, j, :]`, for values v (P, Hg, D) laid out as in
    /// [`Kernels::group_scores`] and weights w (Hg, P). Other ISAs than x86-64 loop over
    /// [`Kernels::axpy`].
    ///
    /// # Panics
    /// If `heads` is 0, does not divide `out.len()` and `w.len()`, or
    /// `v.len() != P · out.len()`.
    pub fn group_weighted(&self, w: &[f32], v: &[f32], out: &mut [f32], heads: usize) {
        let (p, d) = group_shape("group_weighted", v.len(), out.len(), w.len(), heads);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::group_weighted(t, w, v, out, heads),
            _ => each_weighted_row(out, (p, heads, d), |t, j, o| {
                self.axpy(w[j * p + t], &v[(t * heads + j) * d..][..d], o)
            }),
        }
    }

    /// [`Kernels::group_weighted`] with values in f16.
    ///
    /// # Panics
    /// As [`Kernels::group_weighted`].
    pub fn group_weighted_f16(&self, w: &[f32], v: &[f16], out: &mut [f32], heads: usize) {
        let (p, d) = group_shape("group_weighted_f16", v.len(), out.len(), w.len(), heads);
        #[cfg(all(target_arch = "x86_64", ember_vnni))]
        if let Some(t) = self.wide {
            return x86_64_avx512::group_weighted_f16(t, w, v, out, heads);
        }
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::group_weighted_f16(t, w, v, out, heads),
            _ => each_weighted_row(out, (p, heads, d), |t, j, o| {
                self.axpy_f16(w[j * p + t], &v[(t * heads + j) * d..][..d], o)
            }),
        }
    }

    /// out (L) = (x - mean) / sqrt(var + eps) · scale + shift over the L elements of `x`, with the
    /// biased variance (GPT-2 / the book: eps = 1e-5).
    ///
    /// # Panics
    /// If `scale`, `shift` or `out` is not as long as `x`, or `x` is empty.
    pub fn layernorm(&self, x: &[f32], scale: &[f32], shift: &[f32], out: &mut [f32], eps: f32) {
        assert!(!x.is_empty(), "layernorm: x is empty");
        assert_eq!(scale.len(), x.len(), "layernorm: scale length");
        assert_eq!(shift.len(), x.len(), "layernorm: shift length");
        assert_eq!(out.len(), x.len(), "layernorm: out length");
        match self.isa {
            Isa::Reference => reference::layernorm(x, scale, shift, out, eps),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::layernorm(t, x, scale, shift, out, eps),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::layernorm(t, x, scale, shift, out, eps),
        }
    }

    /// x (L) ← GELU(x) with the tanh approximation, in place. The fast paths evaluate the identical
    /// form x · σ(2u) = x / (1 + exp(-2u)) with a polynomial exp; see `GELU_ABS_TOL` in the tests.
    pub fn gelu_tanh(&self, x: &mut [f32]) {
        match self.isa {
            Isa::Reference => reference::gelu_tanh(x),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::gelu_tanh(t, x),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::gelu_tanh(t, x),
        }
    }

    /// x (L) ← softmax(x), in place, subtracting the maximum first. Entries equal to -∞ (masked)
    /// become exactly 0; at least one entry must be finite.
    pub fn softmax(&self, x: &mut [f32]) {
        match self.isa {
            Isa::Reference => reference::softmax(x),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::softmax(t, x),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::softmax(t, x),
        }
    }

    /// x (L) += y (L): the residual connection.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn add(&self, x: &mut [f32], y: &[f32]) {
        assert_eq!(x.len(), y.len(), "add: lengths differ");
        match self.isa {
            Isa::Reference => reference::add(x, y),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::add(t, x, y),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::add(t, x, y),
        }
    }

    /// out (L) = x · w / √(mean(x²) + eps): RMSNorm. Every kernel set runs the reference twin:
    /// it is O(C) per token against O(C²) weights and does not show in a decode profile.
    ///
    /// # Panics
    /// If `w` or `out` is not as long as `x`, or `x` is empty.
    pub fn rmsnorm(&self, x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
        assert!(!x.is_empty(), "rmsnorm: x is empty");
        assert_eq!(w.len(), x.len(), "rmsnorm: scale length");
        assert_eq!(out.len(), x.len(), "rmsnorm: out length");
        reference::rmsnorm(x, w, out, eps)
    }

    /// RMSNorm of x (L) in place (a query or key head), through a copy in `tmp` (≥ L).
    pub fn rmsnorm_in_place(&self, x: &mut [f32], w: &[f32], tmp: &mut [f32], eps: f32) {
        let tmp = &mut tmp[..x.len()];
        tmp.copy_from_slice(x);
        self.rmsnorm(tmp, w, x, eps);
    }

    /// Rotary embedding of one head x (D) with its position's table row cos, sin (D/2), in place
    /// (rotate-half pairs (i, i + D/2)); the reference twin on every kernel set (O(H·D) per token).
    ///
    /// # Panics
    /// If D is odd or cos, sin are not D/2 long.
    pub fn rope(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        assert_eq!(x.len() % 2, 0, "rope: odd head dim");
        assert_eq!(cos.len(), x.len() / 2, "rope: cos length");
        assert_eq!(sin.len(), x.len() / 2, "rope: sin length");
        reference::rope(x, cos, sin)
    }

    /// g (L) ← SiLU(g) · u (SwiGLU): AVX2 with GELU's polynomial exp (it shows in a prefill
    /// profile: one exp per hidden unit per token); the reference twin elsewhere.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn silu_mul(&self, g: &mut [f32], u: &[f32]) {
        assert_eq!(g.len(), u.len(), "silu_mul: lengths differ");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::silu_mul(t, g, u),
            _ => reference::silu_mul(g, u),
        }
    }

    /// g (L) ← GELU_tanh(g) · u (GeGLU): this set's [`Kernels::gelu_tanh`], then the product.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn gelu_mul(&self, g: &mut [f32], u: &[f32]) {
        assert_eq!(g.len(), u.len(), "gelu_mul: lengths differ");
        self.gelu_tanh(g);
        reference::mul(g, u)
    }

    /// out (L) = x (L) converted from f16 (exact: every f16 is an f32), e.g. a tile of f16
    /// weights for the f32 prefill gemm. aarch64 uses the reference twin.
    ///
    /// # Panics
    /// If the lengths differ.
    pub fn f16_to_f32(&self, x: &[f16], out: &mut [f32]) {
        assert_eq!(x.len(), out.len(), "f16_to_f32: lengths differ");
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::f16_to_f32_slice(t, x, out),
            _ => reference::f16_to_f32(x, out),
        }
    }

    /// Σ x[i] (the bandwidth probe's loop).
    pub(crate) fn sum_f32(&self, x: &[f32]) -> f32 {
        match self.isa {
            Isa::Reference => reference::sum_f32(x),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => x86_64::sum_f32(t, x),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(t) => aarch64::sum_f32(t, x),
        }
    }

    // ---------------------------------------------------------------- threading

    /// Runs `f(row_start, y_chunk)` over row chunks of `y`, `cols` weights per row.
    fn split_rows<F>(&self, y: &mut [f32], cols: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        #[cfg(feature = "parallel")]
        if self.threads > 1 && y.len() > ROW_ALIGN && y.len() * cols >= PAR_MIN_WEIGHTS {
            use rayon::prelude::*;
            let chunk = y
                .len()
                .div_ceil(self.threads * CHUNKS_PER_THREAD)
                .next_multiple_of(ROW_ALIGN);
            y.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, yc)| f(i * chunk, yc));
            return;
        }
        #[cfg(not(feature = "parallel"))]
        let _ = cols;
        f(0, y)
    }
}

fn default_threads() -> usize {
    #[cfg(feature = "parallel")]
    return rayon::current_num_threads().max(1);
    #[cfg(not(feature = "parallel"))]
    1
}

/// The portable group scores: `s[j·P + t] = score(j, t)` (one dot product per head and position).
fn each_score(s: &mut [f32], p: usize, score: impl Fn(usize, usize) -> f32) {
    for (i, st) in s.iter_mut().enumerate() {
        *st = score(i / p, i % p);
    }
}

/// The portable group weighted sums: out zeroed, then `add(t, j, out_j)` for every position t
/// and head j in order (one axpy per value row).
fn each_weighted_row(
    out: &mut [f32],
    (p, heads, d): (usize, usize, usize),
    add: impl Fn(usize, usize, &mut [f32]),
) {
    out.fill(0.0);
    for t in 0..p {
        for j in 0..heads {
            add(t, j, &mut out[j * d..(j + 1) * d]);
        }
    }
}

/// (P, D) of a group attention call: `kv_len` = P · Hg · D elements of keys or values, `hd_len` =
/// Hg · D (the queries or the output), `hp_len` = Hg · P (the scores or weights).
fn group_shape(
    what: &str,
    kv_len: usize,
    hd_len: usize,
    hp_len: usize,
    heads: usize,
) -> (usize, usize) {
    assert!(
        heads > 0 && hd_len % heads == 0 && hp_len % heads == 0,
        "{what}: {heads} heads must divide Hg·D = {hd_len} and Hg·P = {hp_len}"
    );
    let p = hp_len / heads;
    assert_eq!(kv_len, p * hd_len, "{what}: keys/values must be (P, Hg, D)");
    (p, hd_len / heads)
}

/// Checks a `_rows` call: `w_len` = R·C for some R, and `row_start + rows <= R`.
fn check_rows(what: &str, w_len: usize, c: usize, rows: usize, row_start: usize) {
    let total = if c == 0 {
        assert_eq!(w_len, 0, "{what}: w must be empty when x is");
        usize::MAX
    } else {
        assert_eq!(
            w_len % c,
            0,
            "{what}: w length {w_len} is not a multiple of C = {c}"
        );
        w_len / c
    };
    assert!(
        row_start.checked_add(rows).is_some_and(|end| end <= total),
        "{what}: rows {row_start}..+{rows} exceed R = {total}"
    );
}
