#![allow(unsafe_code)]
//! The one safe wrapper around the `gemm` crate: every matrix product of the trainer's forward and
//! backward passes. (The runtime's prefill runs its own panel kernel, `runtime/src/kernels/panel.rs`.)
//!
//! A matrix is a strided view over a slice: element `(i, j)` lives at `i * row_stride + j * col_stride`.
//! Views are validated when they are built (checked arithmetic: the last element must lie inside the
//! slice; a mutable view must not map two elements to one place), so [`matmul`] can hand raw
//! pointers to `gemm` soundly. Invalid views and mismatched shapes are programmer errors and panic
//! through `assert!`; none of this sees untrusted input.
//!
//! Letters: M rows of the destination, N its columns, K the shared (inner) dimension.

/// How many threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// Run on the calling thread.
    None,
    /// Split the work across up to this many rayon tasks of the *current* rayon pool (run the call
    /// inside `pool.install` to choose the pool). `Threads(0)` means the current pool's size and
    /// `Threads(1)` is the same as `None`.
    Threads(usize),
}

impl Parallelism {
    /// `Threads(n)` for the current rayon pool's size, or `None` when that pool has one thread.
    pub fn current() -> Parallelism {
        match current_pool_threads() {
            0 | 1 => Parallelism::None,
            n => Parallelism::Threads(n),
        }
    }

    fn to_gemm(self) -> gemm::Parallelism {
        match self {
            Parallelism::None | Parallelism::Threads(1) => gemm::Parallelism::None,
            Parallelism::Threads(n) => gemm::Parallelism::Rayon(n),
        }
    }
}

fn current_pool_threads() -> usize {
    rayon::current_num_threads()
}

/// Checks that a `rows × cols` view with these strides fits in `len` elements and returns the
/// largest index it touches (`None` for an empty view).
fn last_index(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return None;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    // The element count (last + 1) must fit too: it is printed below.
    let last = match last.filter(|&l| l < usize::MAX) {
        Some(l) => l,
        None => panic!("gemm view: strides overflow ({rows}x{cols}, rs {rs}, cs {cs})"),
    };
    assert!(
        last < len,
        "gemm view: {rows}x{cols} with strides ({rs}, {cs}) needs {} elements, the slice has {len}",
        last + 1
    );
    Some(last)
}

/// A read-only strided matrix view.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view of `rows × cols` elements, `(i, j)` at `i * row_stride + j * col_stride`.
    ///
    /// # Panics
    /// If the view does not fit in `data` (checked arithmetic).
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> MatRef<'a> {
        last_index(data.len(), rows, cols, row_stride, col_stride);
        MatRef {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: col_stride,
        }
    }

    /// A dense row-major `rows × cols` view of the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        MatRef::new(data, rows, cols, cols, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `r0..r1` of this view (no copy).
    ///
    /// # Panics
    /// Unless `r0 <= r1 <= rows`.
    pub fn rows_range(self, r0: usize, r1: usize) -> MatRef<'a> {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "rows_range {r0}..{r1} of {}",
            self.rows
        );
        if r0 == r1 {
            return MatRef {
                data: &[],
                rows: 0,
                ..self
            };
        }
        // Row r0 exists, so r0 * rs <= the validated last index: in bounds, no overflow.
        MatRef {
            data: &self.data[r0 * self.rs..],
            rows: r1 - r0,
            ..self
        }
    }

    /// Element `(i, j)`; panics when out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatRef::get out of range");
        self.data[i * self.rs + j * self.cs]
    }
}

/// A mutable strided matrix view whose elements are pairwise distinct memory locations.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// A mutable view of `rows × cols` elements, `(i, j)` at `i * row_stride + j * col_stride`.
    ///
    /// # Panics
    /// If the view does not fit in `data`, or if two elements would share a location (the strides
    /// must nest: one of them at least as large as the span of the other dimension).
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> MatMut<'a> {
        if last_index(data.len(), rows, cols, row_stride, col_stride).is_some() {
            // Distinct elements must not alias: parallel threads write them concurrently.
            // `last_index` has shown that (rows-1)*rs and (cols-1)*cs fit in usize, so the
            // products below cannot overflow either (they are at most those plus one stride,
            // and a stride no larger than len when it matters).
            let distinct = if rows == 1 {
                cols == 1 || col_stride >= 1
            } else if cols == 1 {
                row_stride >= 1
            } else {
                (col_stride >= 1 && row_stride / cols >= col_stride)
                    || (row_stride >= 1 && col_stride / rows >= row_stride)
            };
            assert!(
                distinct,
                "gemm view: strides ({row_stride}, {col_stride}) alias elements of a {rows}x{cols} destination"
            );
        }
        MatMut {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: col_stride,
        }
    }

    /// A dense row-major `rows × cols` view of the start of `data`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> MatMut<'a> {
        MatMut::new(data, rows, cols, cols, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> MatMut<'a> {
        MatMut {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `dst = beta * dst + alpha * a · b` for f32 matrices: `dst` (M, N), `a` (M, K), `b` (K, N).
///
/// `beta == 0.0` overwrites `dst` without reading it (BLAS convention: NaN or garbage in `dst`
/// does not leak into the result); any other `beta` scales and accumulates. The `gemm` crate may
/// allocate scratch internally for M ≥ 4.
///
/// # Panics
/// If the shapes do not agree.
pub fn matmul(
    dst: &mut MatMut<'_>,
    beta: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    par: Parallelism,
) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matmul shapes: dst {m}x{n}, a {}x{}, b {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    // Every view was validated against its slice; a slice never exceeds isize::MAX bytes, so
    // strides that index inside it fit in isize. A stride of an extent-1 dimension may be larger
    // (it is never multiplied by a non-zero index): such a stride is replaced by 0.
    let stride = |s: usize, extent: usize| -> isize {
        match isize::try_from(s) {
            Ok(s) => s,
            Err(_) if extent <= 1 => 0,
            Err(_) => unreachable!("a validated view has strides inside its slice"),
        }
    };
    let (dst_rs, dst_cs) = (stride(dst.rs, m), stride(dst.cs, n));
    let (a_rs, a_cs) = (stride(a.rs, m), stride(a.cs, k));
    let (b_rs, b_cs) = (stride(b.rs, k), stride(b.cs, n));
    let read_dst = beta != 0.0;
    // SAFETY: `dst`, `a` and `b` were built by `MatMut::new` / `MatRef::new`, which proved with
    // checked arithmetic that every element (i, j) of each view lies inside its slice; shapes were
    // checked just above, so gemm reads a[0..m, 0..k], b[0..k, 0..n] and writes dst[0..m, 0..n]
    // only. `dst` is an exclusive borrow, so it cannot overlap `a` or `b` (shared borrows), and
    // `MatMut::new` proved its elements are pairwise distinct, so parallel writes never race.
    // When k == 0, `a` and `b` pointers are not dereferenced. gemm's argument order is
    // (dst := alpha_gemm * dst + beta_gemm * lhs * rhs), hence (beta, alpha) below.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst_cs,
            dst_rs,
            read_dst,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            par.to_gemm(),
        );
    }
}

/// The plain twin of [`matmul`]: a triple loop with f64 accumulation (tests and small shapes).
pub fn matmul_reference(dst: &mut MatMut<'_>, beta: f32, a: MatRef<'_>, b: MatRef<'_>, alpha: f32) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(a.rows == m && b.rows == k && b.cols == n, "matmul shapes");
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a.get(i, p) as f64 * b.get(p, j) as f64;
            }
            let at = i * dst.rs + j * dst.cs;
            let prev = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * dst.data[at] as f64
            };
            dst.data[at] = (prev + alpha as f64 * acc) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative tolerance per unit of sqrt(K): f32 products accumulate rounding error ~ eps·sqrt(K).
    const TOL: f32 = 2e-6;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// Stores a logical (rows, cols) matrix either row-major or column-major (transposed storage),
    /// padding the leading dimension by `pad`.
    fn layout(rows: usize, cols: usize, transposed: bool, pad: usize) -> (usize, usize, usize) {
        if transposed {
            let ld = rows + pad;
            (1, ld, ld * cols)
        } else {
            let ld = cols + pad;
            (ld, 1, ld * rows)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        td: bool,
        beta: f32,
        par: Parallelism,
    ) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (m * 1000 + n * 10 + k) as u64);
        let (a_rs, a_cs, a_len) = layout(m, k, ta, 3);
        let (b_rs, b_cs, b_len) = layout(k, n, tb, 1);
        let (d_rs, d_cs, d_len) = layout(m, n, td, 2);
        let a = rng.vec(a_len);
        let b = rng.vec(b_len);
        let d0 = rng.vec(d_len);
        let (mut got, mut want) = (d0.clone(), d0.clone());
        let alpha = 0.75;
        matmul(
            &mut MatMut::new(&mut got, m, n, d_rs, d_cs),
            beta,
            MatRef::new(&a, m, k, a_rs, a_cs),
            MatRef::new(&b, k, n, b_rs, b_cs),
            alpha,
            par,
        );
        matmul_reference(
            &mut MatMut::new(&mut want, m, n, d_rs, d_cs),
            beta,
            MatRef::new(&a, m, k, a_rs, a_cs),
            MatRef::new(&b, k, n, b_rs, b_cs),
            alpha,
        );
        let tol = TOL * (k.max(1) as f32).sqrt() * 4.0;
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "m{m} n{n} k{k} ta{ta} tb{tb} td{td} beta{beta}: [{idx}] {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes_and_strides() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 9, 33),
            (31, 67, 5),
            (64, 3, 129),
            (2, 50, 0),
        ] {
            for &ta in &[false, true] {
                for &tb in &[false, true] {
                    for &td in &[false, true] {
                        for &beta in &[0.0, 1.0, -0.5] {
                            check(m, n, k, ta, tb, td, beta, Parallelism::None);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_matches_reference() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            check(
                129,
                257,
                65,
                false,
                true,
                false,
                1.0,
                Parallelism::Threads(2),
            );
            check(300, 77, 200, true, false, true, 0.0, Parallelism::current());
        });
    }

    #[test]
    fn row_ranges_view_the_right_rows() {
        let d: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let m = MatRef::new(&d, 4, 3, 5, 1);
        let s = m.rows_range(1, 3);
        assert_eq!((s.rows(), s.cols()), (2, 3));
        assert_eq!(s.get(0, 0), 5.0);
        assert_eq!(s.get(1, 2), 12.0);
        assert_eq!(m.t().rows_range(2, 3).get(0, 3), 17.0);
        assert_eq!(m.rows_range(4, 4).rows(), 0);
    }

    #[test]
    fn overwrite_ignores_nan_in_destination() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [1.0, 0.0, 0.0, 1.0];
        let mut d = [f32::NAN; 4];
        matmul(
            &mut MatMut::row_major(&mut d, 2, 2),
            0.0,
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 2),
            1.0,
            Parallelism::None,
        );
        assert_eq!(d, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    #[should_panic(expected = "needs 7 elements")]
    fn view_outside_slice_panics() {
        let d = [0.0f32; 6];
        let _ = MatRef::new(&d, 2, 3, 4, 1);
    }

    #[test]
    #[should_panic(expected = "alias")]
    fn aliasing_destination_panics() {
        let mut d = [0.0f32; 6];
        let _ = MatMut::new(&mut d, 3, 2, 1, 1);
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn overflowing_strides_panic() {
        let d = [0.0f32; 6];
        let _ = MatRef::new(&d, 3, 2, usize::MAX / 2, 1);
    }
}
