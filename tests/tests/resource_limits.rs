//! Resource limits: hostile sizes give a clear error or bounded work, quickly, with bounded memory.
//!
//! - `.ember` files whose header declares absurd sizes (the maximum tensor and metadata counts
//!   over a 32-byte file, a 2^62-byte metadata value, a 2^61-element array, tensors of
//!   2^62 elements, a million well-formed tensor entries) through `ember inspect`, `ember
//!   generate` and `ember-train pretrain --tokenizer`;
//! - prompts as long as the OS lets one argument be (100 kB; Linux caps one argument at
//!   128 KiB, so a 10 MB prompt reaches `ember` only through `chat`'s standard input, which is
//!   tested with a 10 MB line);
//! - a 100 MB single-line dataset for `ember-train pretrain`, a 4 MB line without any
//!   whitespace (one pre-token: the tokenizer's worst case), and 100 MB single-row TSV and JSON
//!   datasets for the fine-tuning readers.
//!
//! Peak memory is measured exactly: each command runs under a fresh copy of this test binary (the
//! `probe` test) that only waits for it and reads `getrusage(RUSAGE_CHILDREN).ru_maxrss`; library
//! readers run inside such a copy, which reads its own `VmHWM`. Every command has a time limit
//! (a hang fails the test instead of blocking it).
#![cfg(target_os = "linux")]

mod hostile_util;

use hostile_util::{TINY, bin, scratch, train_tokenizer, write_random_words};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Peak resident memory allowed for a command rejecting a hostile header (MB). The binaries
/// themselves need about 5–25 MB.
const HEADER_MAX_MB: f64 = 100.0;
/// Peak memory allowed for reading the largest tensor table the format allows (2^20 entries):
/// the reader keeps every entry (name, shape, offset) before it looks at the metadata, about
/// 240 bytes each. Bounded by `MAX_TENSORS`, whatever the file.
const TABLE_MAX_MB: f64 = 320.0;
/// Wall-clock limit of any one command (generous: debug builds on a loaded 2-core machine).
const LIMIT: Duration = Duration::from_secs(120);
/// Peak memory allowed per byte of a big input (the text, its tokens, and working copies).
const PER_INPUT_BYTE: f64 = 6.0;
/// Baseline added to the per-byte allowance (MB).
const BASE_MB: f64 = 64.0;

const PROBE_ENV: &str = "EMBER_RSS_PROBE";

/// What one measured command did.
#[derive(Debug)]
struct Measured {
    code: Option<i32>,
    stderr: String,
    peak_mb: f64,
    seconds: f64,
    /// For library probes: the reader's result, `ok: ...` or `err: ...`.
    result: String,
}

/// The token cache of the commands run here (`EMBER_CACHE`): not the user's, inside the test's
/// scratch directory `dir` (removed with it).
fn cache_dir(dir: &Path) -> PathBuf {
    dir.join("cache")
}

/// Runs the probe (`what` is `bin` or a reader name) in a fresh copy of this test binary, with
/// the token cache in the scratch directory `dir`.
fn measure(dir: &Path, what: &str, args: &[String], stdin: Option<&Path>) -> Measured {
    let mut spec = vec![what.to_string()];
    spec.push(stdin.map_or(String::new(), |p| p.display().to_string()));
    spec.extend(args.iter().cloned());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["probe", "--exact", "--nocapture", "--test-threads", "1"])
        .env(PROBE_ENV, spec.join("\u{1f}"))
        .env("EMBER_CACHE", cache_dir(dir))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("EMBER_PROBE ").map(|(_, j)| j))
        .unwrap_or_else(|| {
            panic!(
                "the probe reported nothing: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(
        !j["timed_out"].as_bool().unwrap(),
        "{args:?} still ran after {LIMIT:?}: a hang"
    );
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("test probe") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Measured {
        code: j["code"].as_i64().map(|c| c as i32),
        stderr,
        peak_mb: j["peak_kb"].as_f64().unwrap() / 1024.0,
        seconds: j["seconds"].as_f64().unwrap(),
        result: j["result"].as_str().unwrap_or_default().to_string(),
    }
}

/// Not a test of its own: the body of the measuring process that [`measure`] starts. Without
/// `EMBER_RSS_PROBE` it returns at once.
#[test]
fn probe() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    let mut parts = spec.split('\u{1f}');
    let what = parts.next().unwrap().to_string();
    let stdin = parts.next().unwrap().to_string();
    let args: Vec<String> = parts.map(str::to_string).collect();
    let t0 = Instant::now();
    let (code, timed_out, peak_kb, result) = if what == "bin" {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]).stdout(Stdio::null());
        c.stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::from(std::fs::File::open(&stdin).unwrap())
        });
        let mut child = c.spawn().unwrap();
        let (code, timed_out) = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break (s.code(), false);
            }
            if t0.elapsed() > LIMIT {
                child.kill().unwrap();
                child.wait().unwrap();
                break (None, true);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let usage =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
        (code, timed_out, usage.max_rss() as f64, String::new())
    } else {
        let path = Path::new(&args[0]);
        let result = match what.as_str() {
            "read_labelled" => match emberlm_trainer::finetune::data::read_labelled(path) {
                Ok(d) => format!("ok: {} rows", d.rows.len()),
                Err(e) => format!("err: {e}"),
            },
            "read_instructions" => match emberlm_trainer::finetune::data::read_instructions(path) {
                Ok(d) => format!("ok: {} entries", d.len()),
                Err(e) => format!("err: {e}"),
            },
            other => panic!("unknown probe {other}"),
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap();
        (Some(0), false, hwm, result)
    };
    println!(
        "EMBER_PROBE {}",
        serde_json::json!({
            "code": code,
            "timed_out": timed_out,
            "peak_kb": peak_kb,
            "seconds": t0.elapsed().as_secs_f64(),
            "result": result,
        })
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Asserts the one-line error contract and a memory bound; prints the figures.
fn expect_error(prog: &str, m: &Measured, needle: &str, max_mb: f64, what: &str) {
    let one = std::process::Output {
        status: fake_status(m.code),
        stdout: vec![],
        stderr: m.stderr.clone().into_bytes(),
    };
    if let Some(problem) = hostile_util::check_one_line_error(prog, &one, needle) {
        panic!("{what}: {problem}");
    }
    assert!(
        m.peak_mb <= max_mb,
        "{what}: peak {:.1} MB > {max_mb} MB",
        m.peak_mb
    );
    eprintln!(
        "resource_limits: {what}: error in {:.2} s, peak {:.1} MB: {}",
        m.seconds, m.peak_mb, m.stderr
    );
}

/// An `ExitStatus` with `code` (for [`hostile_util::check_one_line_error`]).
fn fake_status(code: Option<i32>) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match code {
        Some(c) => std::process::ExitStatus::from_raw(c << 8),
        None => std::process::ExitStatus::from_raw(9), // killed by a signal
    }
}

/// The fixed header: magic, version 1, flags 0, the two counts.
fn header(meta_count: u64, tensor_count: u64) -> Vec<u8> {
    let mut v = b"EMBERLM\0".to_vec();
    v.extend(1u32.to_le_bytes());
    v.extend(0u32.to_le_bytes());
    v.extend(meta_count.to_le_bytes());
    v.extend(tensor_count.to_le_bytes());
    v
}

fn str32(v: &mut Vec<u8>, s: &str) {
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
}

/// Hostile `.ember` headers: (file name, bytes, the words the error must contain).
fn hostile_headers() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut cases = Vec::new();
    // The largest counts the format allows, over a file that ends after the header.
    cases.push(("max-counts", header(1 << 16, 1 << 20), "truncated"));
    // Counts beyond the caps.
    cases.push(("huge-counts", header(u64::MAX, u64::MAX), "metadata_count"));
    // A bytes value declaring 2^62 bytes.
    let mut v = header(1, 0);
    str32(&mut v, "x.blob");
    v.push(9);
    v.extend((1u64 << 62).to_le_bytes());
    cases.push(("huge-bytes", v, "x.blob"));
    // An array of 2^61 u64 and one of 2^60 strings.
    let mut v = header(1, 0);
    str32(&mut v, "x.array");
    v.push(10);
    v.push(3);
    v.extend((1u64 << 61).to_le_bytes());
    cases.push(("huge-array", v, "x.array"));
    let mut v = header(1, 0);
    str32(&mut v, "x.strings");
    v.push(10);
    v.push(8);
    v.extend((1u64 << 60).to_le_bytes());
    cases.push(("huge-string-array", v, "x.strings"));
    // A tensor of 2^62 f32 elements (2^64 bytes) and one whose dims multiply past u64.
    for (name, shape) in [
        ("huge-tensor", vec![1u64 << 31, 1 << 31]),
        ("overflowing-dims", vec![1u64 << 40, 1 << 40, 1 << 40]),
    ] {
        let mut v = header(0, 1);
        str32(&mut v, "tok_emb.weight");
        v.push(0);
        v.push(shape.len() as u8);
        for d in &shape {
            v.extend(d.to_le_bytes());
        }
        v.extend(0u64.to_le_bytes());
        v.resize(v.len().div_ceil(64) * 64, 0);
        cases.push((name, v, "tok_emb.weight"));
    }
    // A million well-formed, empty tensors (a 30 MB table) and no metadata: not a model.
    let mut v = header(0, 1 << 20);
    for i in 0..1u32 << 20 {
        str32(&mut v, &format!("t{i:07}"));
        v.push(0);
        v.push(1);
        v.extend(0u64.to_le_bytes());
        v.extend(0u64.to_le_bytes());
    }
    v.resize(v.len().div_ceil(64) * 64, 0);
    cases.push(("million-tensors", v, "general.architecture"));
    cases
}

#[test]
fn absurd_headers_fail_fast_with_bounded_memory() {
    let dir = scratch("headers");
    let mut n = 0;
    for (name, bytes, needle) in hostile_headers() {
        let path = dir.join(format!("{name}.ember"));
        std::fs::write(&path, &bytes).unwrap();
        // The million-tensor table is well-formed (30 MB): reading it may take memory in
        // proportion; the other files are rejected before anything big is allocated.
        let budget = if name == "million-tensors" {
            TABLE_MAX_MB
        } else {
            HEADER_MAX_MB
        };
        let ember = s(&bin("ember"));
        let m = measure(
            &dir,
            "bin",
            &[ember.clone(), "inspect".into(), s(&path)],
            None,
        );
        expect_error("ember", &m, needle, budget, &format!("inspect {name}"));
        let m = measure(
            &dir,
            "bin",
            &[
                ember,
                "generate".into(),
                s(&path),
                "--tokens".into(),
                "1".into(),
            ],
            None,
        );
        expect_error("ember", &m, needle, budget, &format!("generate {name}"));
        let text = dir.join("text.txt");
        write_random_words(&text, 50, 1);
        let mut args = vec![s(&bin("ember-train")), "pretrain".into()];
        args.extend(TINY.iter().map(|a| a.to_string()));
        args.extend([
            "--data".into(),
            s(&text),
            "--tokenizer".into(),
            s(&path),
            "--out".into(),
            s(&dir.join(format!("run-{name}"))),
        ]);
        let needle = if name == "million-tensors" {
            "no tokenizer"
        } else {
            needle
        };
        let m = measure(&dir, "bin", &args, None);
        expect_error(
            "ember-train",
            &m,
            needle,
            budget,
            &format!("pretrain --tokenizer {name}"),
        );
        n += 3;
    }
    eprintln!("resource_limits: {n} hostile-header cases");
}

/// A tiny model with its own tokenizer (context 16), made by the real binaries.
fn tiny_model(dir: &Path) -> PathBuf {
    let text = dir.join("text.txt");
    write_random_words(&text, 200, 5);
    let tok = dir.join("tok.ember");
    train_tokenizer(&text, &tok);
    let run = dir.join("run");
    let o = Command::new(bin("ember-train"))
        .arg("pretrain")
        .args(TINY)
        .arg("--data")
        .arg(&text)
        .arg("--tokenizer")
        .arg(&tok)
        .arg("--out")
        .arg(&run)
        .args(["--steps", "1"])
        .env("EMBER_CACHE", cache_dir(dir))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let model = dir.join("tiny.ember");
    let o = Command::new(bin("ember-train"))
        .args(["export", "--dtype", "f32", "--out"])
        .arg(&model)
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    model
}

/// `words` words of the seeded text, as one line of about `bytes` bytes (no newline).
fn one_line(bytes: usize, spaces: bool) -> String {
    let mut r = hostile_util::Rng(0xB16);
    let words = [
        "the", "model", "reads", "a", "long", "text", "and", "learns",
    ];
    let mut out = String::with_capacity(bytes + 16);
    while out.len() < bytes {
        out.push_str(words[r.below(words.len() as u64) as usize]);
        if spaces {
            out.push(' ');
        }
    }
    out.truncate(bytes);
    out
}

#[test]
fn long_prompts_are_bounded() {
    let dir = scratch("prompts");
    let model = tiny_model(&dir);
    let ember = s(&bin("ember"));
    // 100 kB: the longest single argument Linux passes comfortably (its cap is 128 KiB).
    let prompt = one_line(100_000, true);
    let solid = one_line(100_000, false);
    let m = measure(
        &dir,
        "bin",
        &[
            ember.clone(),
            "tokenize".into(),
            "--text".into(),
            solid.clone(),
        ],
        None,
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.peak_mb <= HEADER_MAX_MB, "tokenize: {:.1} MB", m.peak_mb);
    eprintln!(
        "resource_limits: tokenize a 100 kB word without spaces: {:.2} s, peak {:.1} MB",
        m.seconds, m.peak_mb
    );
    // `score` reads a text longer than the context in sliding windows: it succeeds, in bounded
    // memory.
    let m = measure(
        &dir,
        "bin",
        &[
            ember.clone(),
            "score".into(),
            s(&model),
            "--text".into(),
            prompt.clone(),
        ],
        None,
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.peak_mb <= HEADER_MAX_MB, "score: {:.1} MB", m.peak_mb);
    eprintln!(
        "resource_limits: score a 100 kB text in windows: {:.2} s, peak {:.1} MB",
        m.seconds, m.peak_mb
    );
    for (cmd, flag, text) in [
        ("generate", "--prompt", &prompt),
        ("generate", "--prompt", &solid),
    ] {
        let m = measure(
            &dir,
            "bin",
            &[
                ember.clone(),
                cmd.into(),
                s(&model),
                flag.into(),
                text.clone(),
            ],
            None,
        );
        expect_error(
            "ember",
            &m,
            "context",
            HEADER_MAX_MB,
            &format!("{cmd} with a 100 kB prompt"),
        );
    }
    // 10 MB on one line of chat input, and 2 MB without spaces: a line that cannot fit in the
    // context is refused as soon as it is known to be too long.
    for (mb, spaces) in [(10, true), (2, false)] {
        let input = dir.join("chat.txt");
        let mut line = one_line(mb * 1_000_000, spaces);
        line.push('\n');
        std::fs::write(&input, &line).unwrap();
        let m = measure(
            &dir,
            "bin",
            &[ember.clone(), "chat".into(), s(&model)],
            Some(&input),
        );
        assert_eq!(m.code, Some(1), "{}", m.stderr);
        let last = m.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ember: error: a line of more than")
                && last.contains("cannot fit in the context of 16 tokens")
                && !m.stderr.contains("panicked"),
            "{}",
            m.stderr
        );
        // Reading stops at the longest line that could fit (64 kB here).
        assert!(m.peak_mb <= HEADER_MAX_MB, "chat: {:.1} MB", m.peak_mb);
        eprintln!(
            "resource_limits: chat with a {mb} MB line (spaces: {spaces}): {:.2} s, peak {:.1} MB",
            m.seconds, m.peak_mb
        );
    }
}

#[test]
fn hundred_megabyte_lines_are_handled_with_bounded_memory() {
    let dir = scratch("lines");
    let text = dir.join("small.txt");
    write_random_words(&text, 100, 9);
    let tok = dir.join("tok.ember");
    train_tokenizer(&text, &tok);
    let train = s(&bin("ember-train"));

    // Pretraining on one 100 MB line, and on a 4 MB line without whitespace (one pre-token).
    for (mb, spaces) in [(100usize, true), (4, false)] {
        let data = dir.join("line.txt");
        std::fs::write(&data, one_line(mb * 1_000_000, spaces)).unwrap();
        let mut args = vec![train.clone(), "pretrain".into()];
        args.extend(TINY.iter().map(|a| a.to_string()));
        args.extend([
            "--data".into(),
            s(&data),
            "--tokenizer".into(),
            s(&tok),
            "--steps".into(),
            "1".into(),
            "--out".into(),
            s(&dir.join(format!("run-{mb}"))),
        ]);
        let m = measure(&dir, "bin", &args, None);
        assert_eq!(m.code, Some(0), "{}", m.stderr);
        // Per byte: the text, the split copies, ids, the BPE scratch of the longest piece.
        let per_byte = if spaces { PER_INPUT_BYTE } else { 48.0 };
        let budget = BASE_MB + per_byte * mb as f64;
        assert!(
            m.peak_mb <= budget,
            "pretrain on a {mb} MB line: {:.1} MB > {budget}",
            m.peak_mb
        );
        eprintln!(
            "resource_limits: pretrain on one {mb} MB line (spaces: {spaces}): {:.2} s, peak {:.1} MB",
            m.seconds, m.peak_mb
        );
        std::fs::remove_dir_all(cache_dir(&dir)).ok();
    }

    // The fine-tuning readers: a TSV with one 100 MB row, a JSON entry with a 100 MB field.
    let big = one_line(100_000_000, true);
    let tsv = dir.join("rows.tsv");
    std::fs::write(&tsv, format!("ham\t{big}\nspam\tshort\n")).unwrap();
    let json = dir.join("data.json");
    std::fs::write(
        &json,
        format!("[{{\"instruction\":\"{big}\",\"input\":\"\",\"output\":\"x\"}}]"),
    )
    .unwrap();
    drop(big);
    for (reader, path, want) in [
        ("read_labelled", &tsv, "ok: 2 rows"),
        ("read_instructions", &json, "ok: 1 entries"),
    ] {
        let m = measure(&dir, reader, &[s(path)], None);
        assert_eq!(m.result, want, "{reader}");
        let budget = BASE_MB + PER_INPUT_BYTE * 100.0;
        assert!(
            m.peak_mb <= budget,
            "{reader}: {:.1} MB > {budget}",
            m.peak_mb
        );
        eprintln!(
            "resource_limits: {reader} with a 100 MB line: {:.2} s, peak {:.1} MB",
            m.seconds, m.peak_mb
        );
    }
}
