//! `ember bench`: load, prefill and decode speed, memory, bandwidth.

use super::*;

#[derive(FromArgs, Debug)]
/// Measure load time, prefill and decode speed, peak memory, and decode's fraction of the
/// machine's memory bandwidth. Give a model file, or --random SIZE to build one with random weights.
/// Decode runs in rounds of at least 16 tokens (at most 16 rounds) between passes of a 1 GiB
/// read-bandwidth probe, and each round is compared with the passes around it.
#[argh(subcommand, name = "bench")]
pub(crate) struct BenchArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: Option<PathBuf>,
    /// benchmark a random model of this size instead: 124m, 355m, 774m, 1558m, or a preset
    /// (gpt2-124m, smollm2-135m, smollm2-360m, qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b, gemma3-270m)
    #[argh(option)]
    random: Option<String>,
    /// dtype of the random model: f32, f16, int8 or int4 (default int8; int4 keeps the
    /// embeddings and the head at 6 bits (Q6), as `ember-train export --dtype int4`)
    #[argh(option, default = "String::from(\"int8\")")]
    dtype: String,
    /// prompt tokens to prefill (default 128)
    #[argh(option, default = "128")]
    prompt_tokens: usize,
    /// tokens to decode (default 128)
    #[argh(option, default = "128")]
    gen_tokens: usize,
    /// worker threads (default: one per core)
    #[argh(option)]
    threads: Option<usize>,
    /// KV cache element type: auto, f32, f16 or int8 (default auto, as generate: f32 for an f32
    /// model, f16 for the others)
    #[argh(option, default = "String::from(\"auto\")")]
    kv: String,
    /// measure batched decoding instead: aggregate decode tokens/s with B sequences decoded
    /// together (`Batch`), for each B of this comma-separated list (e.g. 1,2,4,8,16), in
    /// alternating passes, beside a lone `Session`'s
    #[argh(option)]
    batch: Option<String>,
    /// passes over the --batch list (default 3; the median is reported)
    #[argh(option, default = "3")]
    passes: usize,
    /// print one JSON object (prefill_tokens_per_s, decode_tokens_per_s, load_ms, peak_rss_bytes, kv_cache_bytes, ...)
    #[argh(switch)]
    json: bool,
}

/// A field of /proc/self/status in bytes (0 where it cannot be read: not Linux).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident memory (VmHWM): the model's mapped pages, the KV cache and everything else.
fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM")
}

/// The bandwidth probe's buffer in `ember bench` (far larger than any cache).
const BENCH_PROBE_BYTES: usize = 1 << 30;
/// Decode rounds hold at least this many tokens (a round is compared with the probe passes
/// on either side of it)...
const BENCH_MIN_ROUND_TOKENS: usize = 16;
/// ... and there are at most this many rounds.
const BENCH_MAX_ROUNDS: usize = 16;

pub(crate) fn bench(a: BenchArgs) -> Result<()> {
    if a.prompt_tokens == 0 || a.gen_tokens == 0 {
        return Err(usage("--prompt-tokens and --gen-tokens must be at least 1"));
    }
    let threads = match threads(a.threads)? {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut temp = None;
    let path = match (&a.model, &a.random) {
        (Some(_), Some(_)) => return Err(usage("give a model file or --random SIZE, not both")),
        (Some(p), None) => p.clone(),
        (None, None) => {
            return Err(usage(
                "give a model file, or --random SIZE to build one with random weights \
                 (SIZE: 124m, 355m, 774m, 1558m, or a preset: gpt2-124m, smollm2-135m, \
                 smollm2-360m, qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b, gemma3-270m)",
            ));
        }
        (None, Some(size)) => {
            let size = size.clone();
            // A family preset by its name, else GPT-2 by the book's size names.
            let cfg = match ModelConfig::preset(&size) {
                Ok(cfg) => cfg,
                Err(_) => ModelConfig::from(GptConfig {
                    tied_head: true,
                    qkv_bias: true,
                    ..GptConfig::preset(&size).map_err(|e| {
                        usage(format!(
                            "--random: {e} (sizes: 124m, 355m, 774m, 1558m, or one of {})",
                            ModelConfig::PRESETS.join(", ")
                        ))
                    })?
                }),
            };
            let dtype = match a.dtype.as_str() {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "int8" | "q8" => DType::Q8,
                "int4" | "q4" => DType::Q4,
                d => {
                    return Err(usage(format!(
                        "--dtype: {d:?} must be f32, f16, int8 or int4"
                    )));
                }
            };
            let p = std::env::temp_dir().join(format!(
                "ember-bench-{size}-{}-{}.ember",
                a.dtype,
                std::process::id()
            ));
            eprintln!(
                "building a random {size} model ({}) in {} …",
                a.dtype,
                p.display()
            );
            emberlm_runtime::random::write_random_model(&p, &cfg, dtype, 7, None)
                .map_err(|e| e.to_string())?;
            temp = Some(p.clone());
            p
        }
    };
    let result = match &a.batch {
        Some(list) => bench_batch(&path, &a, threads, list),
        None => bench_file(&path, &a, threads),
    };
    if let Some(p) = temp {
        std::fs::remove_file(p).ok();
    }
    result
}

fn bench_file(path: &Path, a: &BenchArgs, threads: usize) -> Result<()> {
    let t0 = Instant::now();
    let model = open(path)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let cfg = *model.config();
    if a.prompt_tokens + a.gen_tokens > cfg.context_length {
        return Err(usage(format!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            a.prompt_tokens + a.gen_tokens,
            cfg.context_length
        )));
    }
    // The cache type as used (`auto` resolved), for the report.
    let kv = kv_dtype(&a.kv)?.resolve(&model);
    let kv_name = match kv {
        KvDtype::F16 => "f16",
        KvDtype::Int8 => "int8",
        KvDtype::F32 | KvDtype::Auto => "f32",
    };
    // The cache holds the bench's tokens only, not the model's context (32k–131k positions for
    // today's families).
    let opts = SessionOptions {
        threads,
        kv_dtype: kv,
        context: Some(a.prompt_tokens + a.gen_tokens),
        ..SessionOptions::default()
    };
    let mut session = Session::new(&model, &opts).map_err(|e| e.to_string())?;
    // Pseudo-random prompt ids (a fixed LCG: the same prompt every run).
    let mut state = 12345u64;
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % cfg.vocab_size as u64) as u32
        })
        .collect();
    // Warm-up: the whole run once, untimed. It pages in every weight and every KV cache entry the
    // timed run uses, so the peak RSS read next is the run's own, before the probe's 1 GiB buffer.
    let first = argmax(session.prefill(&prompt).map_err(|e| e.to_string())?) as u32;
    greedy(&mut session, first, a.gen_tokens)?;
    let rss = peak_rss_bytes();
    // Its parts now (the peak is reached in the warm-up's decode): mapped file pages (the
    // model's, the binary's and its libraries') and anonymous memory (heap, stacks).
    let (rss_file, rss_anon) = (status_bytes("RssFile"), status_bytes("RssAnon"));
    session.reset();
    let t1 = Instant::now();
    session.prefill(&prompt).map_err(|e| e.to_string())?;
    let prefill_s = t1.elapsed().as_secs_f64();
    // Prefill is bound by arithmetic: compare it with the cores' multiply-add peak, measured now.
    let prefill_gflops = model.prefill_flops(a.prompt_tokens) / prefill_s / 1e9;
    let fma_peak = emberlm_runtime::kernels::peak::fma_peak_gflops(threads);
    let bytes_per_token = model.bytes_per_token();
    let mut probe = Probe::new(BENCH_PROBE_BYTES, threads);
    // Decode in rounds, each between two probe passes: on a shared host the memory's speed drifts
    // with the neighbours' load, and each round is compared with the passes on either side of it.
    let rounds = (a.gen_tokens / BENCH_MIN_ROUND_TOKENS).clamp(1, BENCH_MAX_ROUNDS);
    let mut passes = vec![probe.pass()];
    let mut fractions = Vec::with_capacity(rounds);
    let mut decode_s = 0f64;
    let mut next = argmax(session.logits()) as u32;
    for r in 0..rounds {
        let n = a.gen_tokens * (r + 1) / rounds - a.gen_tokens * r / rounds;
        let t = Instant::now();
        next = greedy(&mut session, next, n)?;
        let s = t.elapsed().as_secs_f64();
        decode_s += s;
        passes.push(probe.pass());
        let around = (passes[r].gb_s + passes[r + 1].gb_s) / 2.0;
        fractions.push(bytes_per_token as f64 * n as f64 / s / 1e9 / around);
    }
    // How the OS mapped the weights and the probe's buffer: 2 MiB pages or 4 KiB ones (see
    // `MappedFile::open`). A model in 4 KiB pages decodes slower than it could.
    let huge = |b: &[u8]| emberlm_formats::ember::huge_page_bytes(b);
    let (model_huge, probe_huge) = (huge(model.bytes()), huge(probe.bytes()));
    let probe_bytes = probe.bytes().len();
    drop(probe);
    fractions.sort_by(f64::total_cmp);
    let round_fraction = fractions[fractions.len() / 2];
    let prefill_tps = a.prompt_tokens as f64 / prefill_s;
    let decode_tps = a.gen_tokens as f64 / decode_s;
    let achieved = bytes_per_token as f64 * decode_tps / 1e9;
    let bw = bandwidth::summarize(&passes);
    let (bandwidth, sustained) = (bw.best_chunk_gb_s, bw.median_pass_gb_s);
    if a.json {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "file_bytes": model.file_size(),
            "threads": threads,
            "kernels": session.kernels().name(),
            "kv": kv_name,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "load_ms": load_ms,
            "prefill_tokens_per_s": prefill_tps,
            "prefill_gflop_per_s": prefill_gflops,
            "fma_peak_gflop_per_s": fma_peak,
            "prefill_flops_fraction": prefill_gflops / fma_peak,
            "decode_tokens_per_s": decode_tps,
            "bytes_per_token": bytes_per_token,
            "decode_gb_per_s": achieved,
            "bandwidth_gb_per_s": bandwidth,
            "decode_bandwidth_fraction": achieved / bandwidth,
            "bandwidth_median_pass_gb_per_s": sustained,
            "decode_median_bandwidth_fraction": achieved / sustained,
            "decode_rounds": rounds,
            "decode_round_bandwidth_fraction": round_fraction,
            "peak_rss_bytes": rss,
            "rss_file_bytes": rss_file,
            "rss_anon_bytes": rss_anon,
            "kv_cache_bytes": session.kv_cache_bytes(),
            "huge_page_bytes": model_huge,
            "bandwidth_huge_page_bytes": probe_huge,
        });
        println!("{j}");
    } else {
        println!(
            "model        {} ({} bytes), {} threads, {} kernels, {} KV cache",
            path.display(),
            model.file_size(),
            threads,
            session.kernels().name(),
            kv_name
        );
        println!("load         {load_ms:.2} ms");
        println!(
            "prefill      {prefill_tps:.1} tokens/s ({} tokens) = {prefill_gflops:.1} GFLOP/s, {:.0}% \
             of the cores' multiply-add peak ({fma_peak:.1} GFLOP/s)",
            a.prompt_tokens,
            100.0 * prefill_gflops / fma_peak
        );
        println!(
            "decode       {decode_tps:.1} tokens/s ({} tokens in {rounds} rounds)",
            a.gen_tokens
        );
        println!(
            "bandwidth    decode reads {:.1} MB/token = {achieved:.2} GB/s; machine read bandwidth \
             {bandwidth:.2} GB/s best 64 MiB chunk ({:.0}%), {sustained:.2} GB/s median whole pass \
             ({:.0}%); median round vs the passes around it {:.0}%",
            bytes_per_token as f64 / 1e6,
            100.0 * achieved / bandwidth,
            100.0 * achieved / sustained,
            100.0 * round_fraction
        );
        if let (Some(m), Some(p)) = (model_huge, probe_huge) {
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            println!(
                "pages        {:.0} of the model's {:.0} MiB in 2 MiB pages, {:.0} of the probe's {:.0} MiB",
                mib(m),
                mib(model.file_size() as u64),
                mib(p),
                mib(probe_bytes as u64)
            );
            // (Only where the OS grants huge pages at all: the probe's buffer got them.)
            if p > 0 && 2 * m < model.file_size() as u64 {
                println!(
                    "             (the file's page cache holds 4 KiB pages: evict it, e.g. `dd if=MODEL \
                     iflag=nocache count=0`, and the next run reads it back in 2 MiB pages)"
                );
            }
        }
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "peak RSS     {:.1} MiB (model file {:.1} MiB, KV cache {:.1} MiB allocated; after \
             the warm-up {:.1} MiB of mapped files, {:.1} MiB anonymous)",
            mib(rss),
            mib(model.file_size() as u64),
            mib(session.kv_cache_bytes() as u64),
            mib(rss_file),
            mib(rss_anon)
        );
    }
    Ok(())
}

/// Feeds `next` and then `n - 1` greedy choices to the session; returns the token that would come
/// after them.
fn greedy(session: &mut Session<'_, '_>, mut next: u32, n: usize) -> Result<u32> {
    for _ in 0..n {
        next = argmax(session.step(next).map_err(|e| e.to_string())?) as u32;
    }
    Ok(next)
}

/// `ember bench --batch 1,2,4,8`: for each B, B sequences (different prompts of
/// --prompt-tokens) prefilled, then --gen-tokens greedy steps of all of them timed; aggregate
/// tokens/s = B · gen-tokens / time. A lone `Session` decodes the same way as the baseline, and
/// every B runs once per pass, the passes alternating; medians are reported.
fn bench_batch(path: &Path, a: &BenchArgs, threads: usize, list: &str) -> Result<()> {
    let sizes = list
        .split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if (1..=256).contains(&n) => Ok(n),
            _ => Err(usage(format!("--batch: {b:?} must be a number in 1..=256"))),
        })
        .collect::<Result<Vec<_>>>()?;
    if a.passes == 0 {
        return Err(usage("--passes must be at least 1"));
    }
    let model = open(path)?;
    let cfg = *model.config();
    if a.prompt_tokens + a.gen_tokens + 1 > cfg.context_length {
        return Err(usage(format!(
            "--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}",
            a.prompt_tokens + a.gen_tokens,
            cfg.context_length
        )));
    }
    let session = SessionOptions {
        threads,
        kv_dtype: kv_dtype(&a.kv)?,
        context: Some(a.prompt_tokens + a.gen_tokens + 1),
        ..SessionOptions::default()
    };
    let mut state = 12345u64;
    let mut prompt = |_| -> Vec<u32> {
        (0..a.prompt_tokens)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % cfg.vocab_size as u64) as u32
            })
            .collect()
    };
    let max_b = sizes.iter().copied().max().unwrap_or(1);
    let prompts: Vec<Vec<u32>> = (0..max_b).map(&mut prompt).collect();
    let mut lone = Session::new(&model, &session).map_err(|e| e.to_string())?;
    let mut batches = sizes
        .iter()
        .map(|&b| {
            let o = emberlm_runtime::BatchOptions {
                slots: b,
                session: session.clone(),
            };
            emberlm_runtime::Batch::new(&model, &o).map_err(|e| e.to_string().into())
        })
        .collect::<Result<Vec<_>>>()?;
    let greedy_sampling = emberlm_runtime::Sampling::default();
    let mut lone_tps = vec![];
    let mut tps = vec![vec![]; sizes.len()];
    for pass in 0..a.passes + 1 {
        // Pass 0 warms up (pages in the weights and caches) and is not counted.
        lone.reset();
        let first = argmax(lone.prefill(&prompts[0]).map_err(|e| e.to_string())?) as u32;
        let t = Instant::now();
        greedy(&mut lone, first, a.gen_tokens)?;
        if pass > 0 {
            lone_tps.push(a.gen_tokens as f64 / t.elapsed().as_secs_f64());
        }
        for (i, batch) in batches.iter_mut().enumerate() {
            let b = batch.slots();
            for p in &prompts[..b] {
                batch
                    .join(p, &greedy_sampling)
                    .map_err(|e| e.to_string())?
                    .ok_or("no free slot")?;
            }
            // Prefill: one chunk per step, until every slot has its first token. (Counting
            // events instead stopped too early: the slots already decoding add theirs, and the
            // last prompts' prefill then fell into the timed steps.)
            while (0..b).any(|slot| batch.pending_prompt(slot) > 0) {
                batch.step();
            }
            let t = Instant::now();
            let tokens = batch.in_pool(|batch| {
                let mut n = 0;
                for _ in 0..a.gen_tokens {
                    n += batch.step().len();
                }
                n
            });
            let s = t.elapsed().as_secs_f64();
            for slot in 0..b {
                batch.leave(slot);
            }
            if pass > 0 {
                tps[i].push(tokens as f64 / s);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let lone_med = median(&mut lone_tps);
    let rows: Vec<(usize, f64)> = sizes
        .iter()
        .zip(tps.iter_mut())
        .map(|(&b, v)| (b, median(v)))
        .collect();
    if a.json {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "threads": threads,
            "kernels": lone.kernels().name(),
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "passes": a.passes,
            "session_decode_tokens_per_s": lone_med,
            "batch": rows.iter().map(|&(b, t)| serde_json::json!({
                "sequences": b,
                "aggregate_decode_tokens_per_s": t,
                "per_sequence_tokens_per_s": t / b as f64,
                "vs_session": t / lone_med,
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
    } else {
        println!(
            "model      {} , {threads} threads, {} kernels; {} prompt + {} generated tokens per \
             sequence; medians of {} alternating passes",
            path.display(),
            lone.kernels().name(),
            a.prompt_tokens,
            a.gen_tokens,
            a.passes
        );
        println!("session    {lone_med:.1} tokens/s (one sequence, Session::step)");
        println!("sequences  aggregate tokens/s  per sequence  vs session");
        for (b, t) in rows {
            println!(
                "{b:>9}  {t:>18.1}  {:>12.1}  {:>9.2}x",
                t / b as f64,
                t / lone_med
            );
        }
    }
    Ok(())
}
