//! Generation speed of a GPT-2 124M-shaped model with random weights (built here, in a temp file):
//! load time, prefill (128 tokens) and decode tokens/s for f32, f16 and int8 with 1 and 2 threads,
//! next to the machine's memory-read bandwidth measured in the same run.
//!
//!     cargo bench -p emberlm-benches --bench generation
//!
//! Decode reads every weight once per token (the tied head in full, one embedding row), so
//! bytes-per-token × tokens/s ÷ bandwidth is decode's fraction of the machine's limit.

use criterion::{Criterion, criterion_group, criterion_main};
use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::DType;
use emberlm_runtime::kernels::bandwidth::read_bandwidth;
use emberlm_runtime::random::write_random_model;
use emberlm_runtime::{Model, Session, SessionOptions};
use std::time::{Duration, Instant};

const PROMPT: usize = 128;

fn bench(c: &mut Criterion) {
    let cfg = GptConfig {
        qkv_bias: true,
        tied_head: true,
        ..GptConfig::preset("124m").unwrap()
    };
    // Each model file is removed after its runs; the directory when `tmp` drops (also on a panic).
    let tmp = tempfile::Builder::new()
        .prefix("emberlm-bench-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let mut summary = Vec::new();
    let bw = [read_bandwidth(1 << 30, 1), read_bandwidth(1 << 30, 2)];
    for (dtype, name) in [
        (DType::F32, "f32"),
        (DType::F16, "f16"),
        (DType::Q8, "int8"),
    ] {
        let path = dir.join(format!("emberlm-bench-124m-{name}.ember"));
        write_random_model(&path, &cfg, dtype, 1, None).unwrap();
        let t0 = Instant::now();
        let model = Model::open(&path).unwrap();
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let bytes = model.bytes_per_token() as f64;
        for threads in [1usize, 2] {
            let opts = SessionOptions {
                threads,
                ..SessionOptions::default()
            };
            let mut s = Session::new(&model, &opts).unwrap();
            let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 397) % 50257).collect();
            let mut g = c.benchmark_group(format!("124m-{name}-{threads}t"));
            g.sample_size(10).measurement_time(Duration::from_secs(8));
            g.bench_function("decode-token", |b| {
                b.iter_custom(|iters| {
                    s.reset();
                    s.prefill(&prompt[..8]).unwrap();
                    let t = Instant::now();
                    for i in 0..iters {
                        if s.position() >= s.context() {
                            s.reset();
                        }
                        s.step((i % 50257) as u32).unwrap();
                    }
                    t.elapsed()
                })
            });
            g.bench_function("prefill-128", |b| {
                b.iter(|| {
                    s.reset();
                    s.prefill(&prompt).unwrap();
                })
            });
            g.finish();
            // A direct measurement for the summary line (criterion's own report has the detail).
            s.reset();
            s.prefill(&prompt[..8]).unwrap();
            let t = Instant::now();
            let n = 64;
            s.in_pool(|s| {
                for i in 0..n {
                    s.step(i).unwrap();
                }
            });
            let decode = n as f64 / t.elapsed().as_secs_f64();
            s.reset();
            let t = Instant::now();
            s.prefill(&prompt).unwrap();
            let prefill = PROMPT as f64 / t.elapsed().as_secs_f64();
            let frac = bytes * decode / 1e9 / bw[threads - 1];
            summary.push(format!(
                "124m {name:>4} {threads}t: load {load_ms:6.2} ms, prefill {prefill:7.1} tok/s, decode {decode:6.1} tok/s = {:5.2} GB/s = {:4.0}% of {:.1} GB/s",
                bytes * decode / 1e9,
                100.0 * frac,
                bw[threads - 1]
            ));
        }
        drop(model);
        std::fs::remove_file(&path).ok();
    }
    eprintln!("\nsummary (same run):");
    for l in summary {
        eprintln!("  {l}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
