//! Decode matrix-vector kernels (f32 / f16 / Q8 with f32 activations / "q8q8", Q8 with activations
//! quantized to int8 blocks as the session's int8 decode does; "q4q8" and "q6q8", the int4 file's
//! Q4 matrices and Q6 embedding/head against the same int8 activations) and the prefill product for every
//! dtype, against the machine's read bandwidth, the `gemm` crate and the reference twins, in the
//! same run.
//!
//! Run: `cargo bench -p emberlm-benches --bench kernels` (criterion figures, then a summary table).
//! `cargo bench -p emberlm-benches --bench kernels -- --table` prints only the table (faster);
//! `-- --table --decode` only its decode part, `-- --table --ceiling` only the compute ceilings. The table's decode rows and compute ceilings cover
//! every fast kernel set the host runs (e.g. AVX2 and AVX-512 on an AVX-512 host), interleaved in
//! the same run.
//!
//! Shapes (W is (R, C), y = W x): the GPT-2 head 768x50257 (R = 50257, C = 768), the fused qkv
//! 768x2304 (R = 2304, C = 768) and the MLP projection 3072x768 (R = 768, C = 3072). The small
//! matrices fit in the last-level cache while a real decode step streams every layer's weights from
//! memory, so each call uses the next of several copies spanning at least `COLD_BYTES`: every
//! figure is a memory-bound (cold) figure. The copies lie in huge pages, as a model file's map. GB/s counts weight bytes read (Q8, Q4, Q6: quants + scales).
//! Prefill: Y (N, R) = X (N, C) · Wᵀ with N = 128 ([`Kernels::matmul`], f32 / f16 / Q8 weights),
//! reported in GFLOP/s (2·N·R·C per call), next to the `gemm` crate's f32 product on the f32
//! weights.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use emberlm_benches::{Copies, Lcg};
use emberlm_formats::quant::{Q4_BLOCK_BYTES, Q6_BLOCK_BYTES};
use emberlm_runtime::kernels::geometry::packed_len;
use emberlm_runtime::kernels::{
    Epilogue, Kernels, Mat, Q4Matrix, Q6Matrix, Q8_BLOCK, Q8Matrix, bandwidth::read_bandwidth,
};
use emberlm_trainer::gemm::{self, MatMut, MatRef, Parallelism};
use half::f16;
use rayon::ThreadPool;
use rayon::prelude::*;

/// Small matrices rotate through copies spanning at least this many bytes (> the L3 cache).
const COLD_BYTES: usize = 128 << 20;
/// Buffer for `read_bandwidth` (much larger than any cache).
const BANDWIDTH_BYTES: usize = 1 << 30;
/// Tokens per prefill call.
const PREFILL_N: usize = 128;

const SHAPES: [(&str, usize, usize); 3] = [
    ("768x50257", 50257, 768),
    ("768x2304", 2304, 768),
    ("3072x768", 768, 3072),
];

/// One decode case: `copies` of one weight matrix in one dtype.
enum Weights {
    F32(Copies<f32>),
    F16(Copies<f16>),
    Q8(Copies<i8>, Copies<f16>),
    /// Q4 or Q6 blocks (the dtype says which): quants and scales.
    Blocks(Copies<u8>, Copies<f16>),
}

struct Case {
    dtype: &'static str,
    shape: &'static str,
    r: usize,
    c: usize,
    w: Weights,
    bytes: usize,
}

impl Case {
    /// `cold`: enough copies to span `COLD_BYTES`, else one (for the compute ceiling).
    fn new(
        dtype: &'static str,
        shape: &'static str,
        (r, c): (usize, usize),
        cold: bool,
        rng: &mut Lcg,
    ) -> Case {
        let n = r * c;
        let nb = r * c.div_ceil(Q8_BLOCK);
        let bytes = match dtype {
            "f32" => 4 * n,
            "f16" => 2 * n,
            "q4q8" => nb * (Q4_BLOCK_BYTES + 2),
            "q6q8" => nb * (Q6_BLOCK_BYTES + 2),
            _ => n + 2 * nb,
        };
        let copies = if cold {
            COLD_BYTES.div_ceil(bytes).max(1)
        } else {
            1
        };
        let w = match dtype {
            "f32" => {
                let w: Vec<f32> = (0..n).map(|_| rng.f() * 0.1).collect();
                Weights::F32(Copies::new(&w, copies))
            }
            "f16" => {
                let w: Vec<f16> = (0..n).map(|_| f16::from_f32(rng.f() * 0.1)).collect();
                Weights::F16(Copies::new(&w, copies))
            }
            "q4q8" | "q6q8" => {
                // Any bytes are valid codes; the speed does not depend on them.
                let per = if dtype == "q4q8" {
                    Q4_BLOCK_BYTES
                } else {
                    Q6_BLOCK_BYTES
                };
                let q: Vec<u8> = (0..nb * per)
                    .map(|_| (rng.f() * 128.0) as i8 as u8)
                    .collect();
                let d: Vec<f16> = (0..nb)
                    .map(|_| f16::from_f32(1e-3 + rng.f().abs() * 1e-3))
                    .collect();
                Weights::Blocks(Copies::new(&q, copies), Copies::new(&d, copies))
            }
            _ => {
                let q: Vec<i8> = (0..n).map(|_| (rng.f() * 127.0) as i8).collect();
                let d: Vec<f16> = (0..nb)
                    .map(|_| f16::from_f32(1e-3 + rng.f().abs() * 1e-3))
                    .collect();
                Weights::Q8(Copies::new(&q, copies), Copies::new(&d, copies))
            }
        };
        Case {
            dtype,
            shape,
            r,
            c,
            w,
            bytes,
        }
    }

    fn copies(&self) -> usize {
        match &self.w {
            Weights::F32(v) => v.copies,
            Weights::F16(v) => v.copies,
            Weights::Q8(v, _) => v.copies,
            Weights::Blocks(v, _) => v.copies,
        }
    }

    /// One matrix-vector product with copy `i % copies`.
    fn run(&self, k: &Kernels, x: &[f32], y: &mut [f32], i: usize) {
        match &self.w {
            Weights::F32(v) => k.matvec_f32(v.get(i), x, y),
            Weights::F16(v) => k.matvec_f16(v.get(i), x, y),
            Weights::Q8(q, d) if self.dtype == "q8q8" => {
                let w = Q8Matrix::new(q.get(i), d.get(i), self.r, self.c).unwrap();
                // As the session's int8 decode: quantize x once per product (two small
                // allocations here, negligible next to a product of at least 1.7 MB).
                let mut xq = vec![0i8; self.c];
                let mut xd = vec![0f32; self.c.div_ceil(Q8_BLOCK)];
                k.quantize_q8(x, &mut xq, &mut xd);
                // Rows in chunks of a multiple of 16, a few per thread (as the decode crew).
                let rows = self.r.div_ceil(2 * k.threads()).next_multiple_of(16);
                y.par_chunks_mut(rows)
                    .enumerate()
                    .for_each(|(j, ys)| k.matvec_q8q8_rows(w, &xq, &xd, ys, j * rows));
            }
            Weights::Q8(q, d) => k.matvec_q8(
                Q8Matrix::new(q.get(i), d.get(i), self.r, self.c).unwrap(),
                x,
                y,
            ),
            Weights::Blocks(q, d) => {
                let (mut xq, mut xd) = (vec![0i8; self.c], vec![0f32; self.c.div_ceil(Q8_BLOCK)]);
                k.quantize_q8(x, &mut xq, &mut xd);
                let rows = self.r.div_ceil(2 * k.threads()).next_multiple_of(16);
                if self.dtype == "q4q8" {
                    let w = Q4Matrix::new(q.get(i), d.get(i), self.r, self.c).unwrap();
                    y.par_chunks_mut(rows)
                        .enumerate()
                        .for_each(|(j, ys)| k.matvec_q4q8_rows(w, &xq, &xd, ys, j * rows));
                } else {
                    let w = Q6Matrix::new(q.get(i), d.get(i), self.r, self.c).unwrap();
                    y.par_chunks_mut(rows)
                        .enumerate()
                        .for_each(|(j, ys)| k.matvec_q6q8_rows(w, &xq, &xd, ys, j * rows));
                }
            }
        }
    }
}

/// (median, best) seconds per call of `f(i)` over at least `min_calls` calls and about `budget_s`
/// seconds, after warming up once per copy (at most 64).
fn time_calls(
    copies: usize,
    min_calls: usize,
    budget_s: f64,
    mut f: impl FnMut(usize),
) -> (f64, f64) {
    for i in 0..copies.min(64) {
        f(i);
    }
    let mut times = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while times.len() < min_calls || start.elapsed().as_secs_f64() < budget_s {
        let t = Instant::now();
        f(i);
        times.push(t.elapsed().as_secs_f64());
        i += 1;
        if times.len() >= 2000 {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn pool(threads: usize) -> ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn cases() -> Vec<Case> {
    let mut rng = Lcg(42);
    let mut v = Vec::new();
    for (shape, r, c) in SHAPES {
        for dtype in ["f32", "f16", "q8", "q8q8", "q4q8", "q6q8"] {
            v.push(Case::new(dtype, shape, (r, c), true, &mut rng));
        }
    }
    v
}

fn criterion_benches(c: &mut Criterion, cases: &[Case]) {
    let fast = Kernels::detect();
    let mut g = c.benchmark_group("matvec");
    g.sample_size(10);
    for case in cases {
        g.throughput(Throughput::Bytes(case.bytes as u64));
        let x: Vec<f32> = (0..case.c).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; case.r];
        for threads in [1, 2] {
            let k = fast.with_threads(threads);
            let id = BenchmarkId::new(
                format!("{} {}", case.dtype, case.shape),
                format!("t{threads}"),
            );
            let p = pool(threads);
            let mut i = 0;
            g.bench_function(id, |b| {
                p.install(|| {
                    b.iter(|| {
                        i += 1;
                        case.run(&k, black_box(&x), &mut y, i)
                    })
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("prefill_n128");
    g.sample_size(10);
    let mut rng = Lcg(7);
    for (shape, r, cols) in SHAPES.iter().skip(1) {
        let (r, cols) = (*r, *cols);
        let w = PrefillWeights::new(&mut rng, r, cols);
        let x: Vec<f32> = (0..PREFILL_N * cols).map(|_| rng.f()).collect();
        let mut y = vec![0f32; PREFILL_N * r];
        let mut xp = vec![0f32; packed_len(PREFILL_N, cols)];
        let mut scratch = vec![0f32; PREFILL_N * r];
        g.throughput(Throughput::Elements((2 * PREFILL_N * r * cols) as u64));
        for (dtype, pw) in w.cases() {
            for threads in [1, 2] {
                let k = fast.with_threads(threads);
                let p = pool(threads);
                let id = BenchmarkId::new(format!("{dtype}/{shape}"), format!("t{threads}"));
                g.bench_function(id, |b| {
                    p.install(|| {
                        b.iter(|| {
                            k.matmul(
                                pw,
                                cols,
                                black_box(&x),
                                &mut y,
                                &mut xp,
                                &mut scratch,
                                Epilogue::default(),
                            )
                        })
                    })
                });
            }
        }
    }
    g.finish();
}

/// One prefill weight matrix in every dtype (Q8 and f16 hold the values of the f32 one, rounded).
struct PrefillWeights {
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    q: Vec<i8>,
    d: Vec<f16>,
    r: usize,
    c: usize,
}

impl PrefillWeights {
    fn new(rng: &mut Lcg, r: usize, c: usize) -> Self {
        let f32s: Vec<f32> = (0..r * c).map(|_| rng.f() * 0.1).collect();
        let f16s = f32s.iter().map(|&v| f16::from_f32(v)).collect();
        let q = f32s.iter().map(|&v| (v * 1270.0) as i8).collect();
        let d = vec![f16::from_f32(1.0 / 1270.0); r * c.div_ceil(Q8_BLOCK)];
        PrefillWeights {
            f32s,
            f16s,
            q,
            d,
            r,
            c,
        }
    }

    fn cases(&self) -> [(&'static str, Mat<'_>); 3] {
        let q8 = Q8Matrix::new(&self.q, &self.d, self.r, self.c).unwrap();
        [
            ("f32", Mat::F32(&self.f32s)),
            ("f16", Mat::F16(&self.f16s)),
            ("q8", Mat::Q8(q8)),
        ]
    }
}

/// The summary: GB/s, fraction of the measured read bandwidth, ratio to the reference twin.
fn table(cases: &[Case], decode_only: bool, ceiling_only: bool) {
    let fast = Kernels::detect();
    let reference = Kernels::reference();
    let fasts: Vec<Kernels> = (Kernels::available().into_iter())
        .filter(|k| !k.is_reference())
        .collect();
    let names: Vec<&str> = fasts.iter().map(Kernels::name).collect();
    println!(
        "\n== emberlm kernels: {} (decode tables: {names:?}) ==",
        fast.name()
    );
    if !ceiling_only {
        cold_table(cases, &fasts, reference);
    }
    ceiling_table(&fasts);
    if decode_only || ceiling_only {
        return;
    }
    prefill_table(fast, reference);
}

/// The decode kernels on cold weights, next to the probe and the reference twins.
fn cold_table(cases: &[Case], fasts: &[Kernels], reference: Kernels) {
    let bw = [
        read_bandwidth(BANDWIDTH_BYTES, 1),
        read_bandwidth(BANDWIDTH_BYTES, 2),
    ];
    println!(
        "read bandwidth (1 GiB buffer, summing loop, best 64 MiB chunk of 5 passes): {:.1} GB/s (1 thread), {:.1} GB/s (2 threads)",
        bw[0], bw[1]
    );
    println!(
        "\ndecode matvec, cold weights. med/best: median and fastest call; GB/s and % of BW use the \
         best call (the bandwidth is a best figure too); speedup = reference median / fast median, same threads"
    );
    println!(
        "{:<20} {:<5} {:<10} {:>3} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8}",
        "kernels",
        "dtype",
        "shape",
        "thr",
        "med ms",
        "best ms",
        "med GB/s",
        "GB/s",
        "% of BW",
        "ref ms",
        "speedup"
    );
    for case in cases {
        let x: Vec<f32> = (0..case.c).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; case.r];
        for threads in [1, 2] {
            let p = pool(threads);
            let kr = reference.with_threads(threads);
            let (tr, _) =
                p.install(|| time_calls(case.copies(), 3, 0.3, |i| case.run(&kr, &x, &mut y, i)));
            for k in fasts {
                let k = k.with_threads(threads);
                let (t, tb) = p.install(|| {
                    time_calls(case.copies(), 15, 1.0, |i| case.run(&k, &x, &mut y, i))
                });
                let gb = case.bytes as f64 / 1e9;
                println!(
                    "{:<20} {:<5} {:<10} {:>3} {:>8.3} {:>8.3} {:>8.1} {:>8.1} {:>6.0}% {:>9.3} {:>7.1}x",
                    k.name(),
                    case.dtype,
                    case.shape,
                    threads,
                    t * 1e3,
                    tb * 1e3,
                    gb / t,
                    gb / tb,
                    100.0 * gb / tb / bw[threads - 1],
                    tr * 1e3,
                    tr / t
                );
            }
        }
    }
}

/// Each decode kernel on one copy of small weights (in the cache): its compute ceiling.
fn ceiling_table(fasts: &[Kernels]) {
    println!(
        "\ncompute ceiling: one copy of the weights (1.2-1.5 MiB, inside a 2 MiB L2 at f32), read \
         again and again from the cache, 1 thread (above the cold figure: that kernel is \
         memory-bound on one thread)"
    );
    println!(
        "{:<20} {:<5} {:<10} {:>8} {:>8}",
        "kernels", "dtype", "shape", "med ms", "GB/s"
    );
    let mut rng = Lcg(9);
    let warm: Vec<Case> = [("768x512", (512, 768)), ("3072x128", (128, 3072))]
        .into_iter()
        .flat_map(|(shape, rc)| {
            ["f32", "f16", "q8", "q8q8", "q4q8", "q6q8"]
                .map(|dtype| Case::new(dtype, shape, rc, false, &mut rng))
        })
        .collect();
    for case in &warm {
        let x: Vec<f32> = (0..case.c).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0f32; case.r];
        for k in fasts {
            let k = k.with_threads(1);
            let (t, _) =
                pool(1).install(|| time_calls(1, 50, 0.5, |_| case.run(&k, &x, &mut y, 0)));
            println!(
                "{:<20} {:<5} {:<10} {:>8.3} {:>8.1}",
                k.name(),
                case.dtype,
                case.shape,
                t * 1e3,
                case.bytes as f64 / 1e9 / t
            );
        }
    }
}

/// The prefill product against the `gemm` crate and the reference twins.
fn prefill_table(fast: Kernels, reference: Kernels) {
    println!(
        "\nprefill, N = {PREFILL_N}: GFLOP/s = 2·N·R·C / median time of Kernels::matmul (packed \
         microkernel); gemm = the gemm crate's f32 product on the f32 weights, same threads, same \
         run; ratio = gemm time / ours"
    );
    println!(
        "{:<5} {:<10} {:>3} {:>8} {:>9} {:>10} {:>7} {:>9} {:>8}",
        "dtype", "shape", "thr", "med ms", "GFLOP/s", "gemm GF/s", "ratio", "ref ms", "vs ref"
    );
    let mut rng = Lcg(7);
    for (shape, r, c) in SHAPES.iter().skip(1) {
        let (r, c) = (*r, *c);
        let w = PrefillWeights::new(&mut rng, r, c);
        let x: Vec<f32> = (0..PREFILL_N * c).map(|_| rng.f()).collect();
        let mut y = vec![0f32; PREFILL_N * r];
        let mut xp = vec![0f32; packed_len(PREFILL_N, c)];
        let mut scratch = vec![0f32; PREFILL_N * r];
        let flop = (2 * PREFILL_N * r * c) as f64;
        for threads in [1, 2] {
            let p = pool(threads);
            let par = if threads == 1 {
                Parallelism::None
            } else {
                Parallelism::Threads(threads)
            };
            let (tg, _) = p.install(|| {
                time_calls(1, 9, 1.0, |_| {
                    let mut dst = MatMut::row_major(&mut y, PREFILL_N, r);
                    let a = MatRef::row_major(&x, PREFILL_N, c);
                    let b = MatRef::row_major(&w.f32s, r, c).t();
                    gemm::matmul(&mut dst, 0.0, a, b, 1.0, par);
                })
            });
            for (dtype, pw) in w.cases() {
                // Median time of Kernels::matmul with these kernels (`reps` timed calls).
                let mut time = |k: Kernels, reps: usize, warm: f64| {
                    let k = k.with_threads(threads);
                    let (xp, scratch) = (&mut xp, &mut scratch);
                    let ep = Epilogue::default();
                    p.install(|| {
                        time_calls(1, reps, warm, |_| {
                            k.matmul(pw, c, &x, &mut y, xp, scratch, ep)
                        })
                    })
                    .0
                };
                let t = time(fast, 9, 1.0);
                let tr = time(reference, 1, 0.0);
                println!(
                    "{:<5} {:<10} {:>3} {:>8.2} {:>9.1} {:>10.1} {:>7.2} {:>9.1} {:>7.1}x",
                    dtype,
                    shape,
                    threads,
                    t * 1e3,
                    flop / t / 1e9,
                    flop / tg / 1e9,
                    tg / t,
                    tr * 1e3,
                    tr / t
                );
            }
        }
    }
}

fn main() {
    let table_only = std::env::args().any(|a| a == "--table");
    let decode_only = std::env::args().any(|a| a == "--decode");
    let ceiling_only = table_only && std::env::args().any(|a| a == "--ceiling");
    // The cold copies take about 1.5 GB: only made when a table needs them.
    let cases = if ceiling_only { Vec::new() } else { cases() };
    if !table_only {
        let mut c = Criterion::default().configure_from_args();
        criterion_benches(&mut c, &cases);
        c.final_summary();
    }
    table(&cases, decode_only, ceiling_only);
}
