//! One training step of GPT-2 124M (the book's from-scratch setup: untied head, no qkv bias,
//! dropout 0.1 at every site, AdamW with weight decay 0.1): forward + backward + AdamW, at
//! B=4,T=64 and B=2,T=256, with 1 and 2 threads. In the same run, the gemm crate alone performs
//! every matrix product of one step (same shapes and transposes), so the step's efficiency is
//! reported as a ratio to the gemm-only figure measured under the same machine load.
//!
//! Run: `cargo bench -p emberlm-benches --bench train_step`
//! (`EMBER_BENCH_ONLY=B2_T256_threads2` runs the settings whose name contains that text;
//! `EMBER_BENCH_QUICK=1` times 3 steps per setting without criterion's statistics — a smoke
//! test; criterion needs at least 10 samples.)
//!
//! FLOPs per step (what "achieved GFLOP/s" divides): 6·N·B·T for the matrix products
//! (N = 123.5M weights that multiply activations: 12·C² per block plus the V·C head; the
//! embedding lookups do no multiplications) plus the causal attention products,
//! 6·L·B·T²·C (forward q·kᵀ and att·v over t2 ≤ t, twice that backward).

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use emberlm_formats::config::GptConfig;
use emberlm_trainer::adamw::{AdamW, AdamWConfig, DecayPolicy};
use emberlm_trainer::gemm::{MatMut, MatRef, Parallelism, matmul};
use emberlm_trainer::model::{DropoutRates, Gpt, Init, Mode};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SETTINGS: [(usize, usize); 2] = [(4, 64), (2, 256)];
const THREADS: [usize; 2] = [1, 2];

fn quick() -> bool {
    std::env::var_os("EMBER_BENCH_QUICK").is_some()
}

/// Times `step` once per sample (through criterion's 10 samples, or 3 plain runs when quick),
/// running `companion` right after each call, timed separately, so both see the same machine
/// load. Returns (step seconds, companion seconds), paired.
fn measure(
    c: &mut Criterion,
    name: &str,
    mut step: impl FnMut(),
    mut companion: impl FnMut(),
) -> Times {
    let mut times = Times::default();
    let mut once = |times: &mut Times| {
        let cpu0 = process_cpu_seconds();
        let s = Instant::now();
        step();
        let d = s.elapsed();
        let cpu1 = process_cpu_seconds();
        let s2 = Instant::now();
        companion();
        times.step.push(d.as_secs_f64());
        times.companion.push(s2.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            times.step_cpu.push(b - a);
        }
        d
    };
    if quick() {
        for _ in 0..3 {
            once(&mut times);
        }
        return times;
    }
    let mut group = c.benchmark_group("train_step_124m");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(1));
    group.bench_function(name, |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| once(&mut times)).sum())
    });
    group.finish();
    times
}

/// Per-sample wall seconds of the step and of its companion, and the step's process CPU seconds.
#[derive(Default)]
struct Times {
    step: Vec<f64>,
    companion: Vec<f64>,
    step_cpu: Vec<f64>,
}

/// User + system CPU seconds of this process (all threads) from /proc/self/stat, `None`
/// elsewhere. On a loaded shared machine wall time includes waiting for a core; CPU time does
/// not, so tokens per CPU-second of a 1-thread run is the load-independent figure.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // Fields after the command name: state is index 0, utime 11, stime 12 (clock ticks; the
    // Linux USER_HZ is 100).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// FLOPs of one training step as documented in the module header.
fn step_flops(cfg: &GptConfig, b: usize, t: usize) -> f64 {
    let (c, l, v) = (cfg.dim as f64, cfg.n_layers as f64, cfg.vocab_size as f64);
    let n = 12.0 * c * c * l + v * c;
    let tokens = (b * t) as f64;
    6.0 * n * tokens + 6.0 * l * b as f64 * (t * t) as f64 * c
}

/// Every matrix product of one forward + backward of the dense layers (not attention), through
/// the same wrapper and views as `layers::matmul`. Returns the FLOPs done.
fn gemm_only_step(bufs: &mut GemmBufs, cfg: &GptConfig, n: usize) -> f64 {
    let c = cfg.dim;
    let par = Parallelism::current();
    let mut flops = 0.0;
    let linear = |ic: usize, oc: usize, bufs: &mut GemmBufs| {
        let GemmBufs { x, w, out, dx, dw } = bufs;
        // forward: out = x · Wᵀ
        matmul(
            &mut MatMut::row_major(&mut out[..n * oc], n, oc),
            0.0,
            MatRef::row_major(&x[..n * ic], n, ic),
            MatRef::row_major(&w[..oc * ic], oc, ic).t(),
            1.0,
            par,
        );
        // backward: dx = dout · W ; dW += doutᵀ · x
        matmul(
            &mut MatMut::row_major(&mut dx[..n * ic], n, ic),
            0.0,
            MatRef::row_major(&out[..n * oc], n, oc),
            MatRef::row_major(&w[..oc * ic], oc, ic),
            1.0,
            par,
        );
        matmul(
            &mut MatMut::row_major(&mut dw[..oc * ic], oc, ic),
            1.0,
            MatRef::row_major(&out[..n * oc], n, oc).t(),
            MatRef::row_major(&x[..n * ic], n, ic),
            1.0,
            par,
        );
        6.0 * (n * oc * ic) as f64
    };
    for _ in 0..cfg.n_layers {
        flops += linear(c, 3 * c, bufs);
        flops += linear(c, c, bufs);
        flops += linear(c, 4 * c, bufs);
        flops += linear(4 * c, c, bufs);
    }
    flops += linear(c, cfg.vocab_size, bufs);
    black_box(&bufs.dw[0]);
    flops
}

struct GemmBufs {
    x: Vec<f32>,
    w: Vec<f32>,
    out: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

impl GemmBufs {
    fn new(cfg: &GptConfig, n: usize) -> GemmBufs {
        let (c, v) = (cfg.dim, cfg.vocab_size);
        let fill = |len: usize, s: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * s)
                .collect()
        };
        GemmBufs {
            x: fill(n * 4 * c, 1.0),
            w: fill(v * c, 0.04),
            out: vec![0.0; n * v],
            dx: vec![0.0; n * 4 * c],
            dw: vec![0.0; v * c],
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

fn train_step(c: &mut Criterion) {
    let cfg = GptConfig::preset("124m").expect("preset");
    let mut report = Vec::new();
    for &(b, t) in &SETTINGS {
        for &threads in &THREADS {
            let name = format!("B{b}_T{t}_threads{threads}");
            if let Ok(only) = std::env::var("EMBER_BENCH_ONLY") {
                if !name.contains(&only) {
                    continue;
                }
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool");
            let n = b * t;
            let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 % cfg.vocab_size) as u32).collect();
            let targets: Vec<i32> = (0..n)
                .map(|i| ((i * 104_729 + 1) % cfg.vocab_size) as i32)
                .collect();
            // Criterion is not Send: it stays on this thread, and every measured step runs
            // inside the pool (`install` costs microseconds, a step seconds).
            let mut model = pool
                .install(|| Gpt::new(cfg, Init::Gpt2, 123))
                .expect("model");
            model.dropout = DropoutRates::uniform(0.1);
            let adam_cfg = AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            };
            let mut opt = AdamW::new(adam_cfg, model.decay_mask(DecayPolicy::All));
            let mut step = 0u64;
            let mut one_step = |model: &mut Gpt, opt: &mut AdamW| {
                let seed = step;
                step += 1;
                pool.install(|| {
                    model.zero_grad();
                    let loss = model
                        .forward(&tokens, Some(&targets), b, t, Mode::Train { seed })
                        .expect("forward");
                    model.backward().expect("backward");
                    let (p, g) = model.params_and_grads();
                    opt.step(p, g, 1e-4).expect("adamw");
                    black_box(loss);
                });
            };
            // Warm-up: first-touch page faults of grads and moments are not a step's cost.
            one_step(&mut model, &mut opt);
            let mut bufs = GemmBufs::new(&cfg, n);
            let mut gemm_flops = pool.install(|| gemm_only_step(&mut bufs, &cfg, n));
            let times = measure(
                c,
                &name,
                || one_step(&mut model, &mut opt),
                || gemm_flops = pool.install(|| gemm_only_step(&mut bufs, &cfg, n)),
            );
            let flops = step_flops(&cfg, b, t);
            let ratios: Vec<f64> = times
                .step
                .iter()
                .zip(&times.companion)
                .map(|(s, g)| (flops / s) / (gemm_flops / g))
                .collect();
            let step_s = median(times.step);
            let gemm_s = median(times.companion);
            let cpu_s = median(times.step_cpu);
            report.push(format!(
                "B={b} T={t} threads={threads}: {:.1} tokens/s ({:.2} s/step, {:.1} GFLOP/s); \
                 gemm alone on the step's dense products: {:.1} GFLOP/s; \
                 step/gemm-only GFLOP/s ratio (median of interleaved pairs) {:.2}; \
                 {:.2} CPU-s/step = {:.1} tokens per CPU-second",
                n as f64 / step_s,
                step_s,
                flops / step_s / 1e9,
                gemm_flops / gemm_s / 1e9,
                median(ratios),
                cpu_s,
                n as f64 / cpu_s,
            ));
        }
    }
    println!("\ntrain_step summary (medians):");
    for line in report {
        println!("  {line}");
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
