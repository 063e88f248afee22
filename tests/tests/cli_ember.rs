//! The `ember` binary end to end: parity with transformers through the CLI, the tokenizer's
//! book vectors, and a bad-input matrix (non-zero exit, one line naming the problem, no panic).
//!
//! The binary is the one `cargo test --workspace` builds beside this test (target/<profile>/ember).

use emberlm_formats::meta::Task;
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::import::import_safetensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ember() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(format!("ember{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: run the tests with `cargo test --workspace` (it builds the ember binary)",
        bin.display()
    );
    bin
}

fn run(args: &[&str]) -> Output {
    Command::new(ember()).args(args).output().unwrap()
}

/// A fresh, uniquely named directory `emberlm-cli-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-cli-{name}-"))
        .tempdir()
        .unwrap()
}

fn fixture() -> (PathBuf, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

fn export_tiny(out: &Path) -> PathBuf {
    let (dir, _) = fixture();
    let imp = import_safetensors(&dir, None).unwrap();
    let path = out.join("tiny.ember");
    let meta = ExportMeta {
        config: imp.config,
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    export_ember(&path, &meta, ExportDtype::F32, &|n| {
        imp.tensors.get(n).map(|v| v.as_slice())
    })
    .unwrap();
    path
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn generate_and_score_match_transformers() {
    let tmp = tempdir("parity");
    let dir = tmp.path();
    let model = export_tiny(dir);
    let (_, e) = fixture();
    let m = model.to_str().unwrap();
    let out = run(&[
        "generate",
        m,
        "--tokens",
        &join(&ids(&e["greedy_prompt"])),
        "--max-tokens",
        "20",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&j["tokens"]), ids(&e["greedy_tokens"]));
    assert!(j["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);

    let out = run(&["score", m, "--tokens", &join(&ids(&e["tokens"])), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (loss, want) = (j["loss"].as_f64().unwrap(), e["loss"].as_f64().unwrap());
    assert!((loss - want).abs() <= 1e-5 * want, "{loss} vs {want}");
    assert!((j["perplexity"].as_f64().unwrap() - want.exp()).abs() <= 1e-4 * want.exp());
    assert_eq!(
        j["logprobs"].as_array().unwrap().len(),
        ids(&e["tokens"]).len() - 1
    );

    let out = run(&["inspect", m, "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["metadata"]["gpt2.n_layers"], "2");
    assert!(
        j["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "blocks.1.ff.proj.weight")
    );
}

#[test]
fn tokenize_and_detokenize_give_the_books_ids() {
    let out = run(&[
        "tokenize",
        "--text",
        "Hello, do you like tea? <|endoftext|> In the sunlit terracesof someunknownPlace.",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&j["tokens"]),
        [
            15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114,
            1659, 617, 34680, 27271, 13
        ]
    );
    let out = run(&[
        "detokenize",
        "--ids",
        "15496,11,995,13,1148,428,438,257,1332,30",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, world. Is this-- a test?\n"
    );
    // A tokenizer-only file (as `ember-train tokenizer` writes) serves as well as a model.
    let tmp = tempdir("tokfile");
    let file = tmp.path().join("gpt2-tokenizer.ember");
    emberlm_trainer::checkpoint::write_tokenizer_file(
        &file,
        emberlm_formats::tokenizer::Tokenizer::gpt2(),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = run(&["tokenize", f, "--text", "Hello, world.", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&j["tokens"]), [15496, 11, 995, 13]);
    let out = run(&["detokenize", f, "--ids", "15496,11,995,13"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world.\n");
    // `inspect` describes it; the commands that need a model say it holds none.
    let out = run(&["inspect", f, "--json"]);
    let j = ok_json(&out);
    assert_eq!(j["kind"], "tokenizer");
    assert_eq!(j["vocab_size"], 50257);
    assert_eq!(j["merges"], 50000);
    assert_eq!(j["special_tokens"]["<|endoftext|>"], 50256);
    let out = run(&["inspect", f]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("tokenizer (no model): vocabulary 50257, 50000 merges, 1 special tokens")
    );
    let out = run(&["generate", f, "--prompt", "Hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "ember: error: {f}: this file holds a tokenizer (from `ember-train tokenizer`), not a \
             model: `ember inspect`, `ember tokenize` and `ember detokenize` read it\n"
        )
    );
}

/// A successful run's JSON.
fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tiny random GPT-2 holding GPT-2's tokenizer, with a context of 16 tokens.
fn gpt2_tiny(dir: &Path) -> String {
    gpt2_tiny_context(dir, 16)
}

/// A tiny random GPT-2 holding GPT-2's tokenizer, with a context of `context` tokens.
fn gpt2_tiny_context(dir: &Path, context: usize) -> String {
    let cfg = emberlm_formats::config::GptConfig {
        vocab_size: 50257,
        context_length: context,
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        qkv_bias: true,
        tied_head: true,
    };
    let path = dir.join(format!("gpt2-tiny-{context}.ember"));
    emberlm_runtime::random::write_random_model(
        &path,
        &cfg,
        emberlm_formats::ember::DType::F32,
        5,
        Some(emberlm_formats::tokenizer::Tokenizer::gpt2()),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// Generating past the end of a 16-token context slides (the default) instead of failing; with
/// --no-slide the error comes on a line of its own after the text.
#[test]
fn generate_slides_past_the_context() {
    let tmp = tempdir("slide");
    let m = gpt2_tiny(tmp.path());
    let prompt = "Every effort moves you";
    let j = ok_json(&run(&[
        "generate",
        &m,
        "--prompt",
        prompt,
        "--max-tokens",
        "100",
        "--ignore-eot",
        "--json",
    ]));
    assert_eq!(j["generated_tokens"], 100);
    assert_eq!(j["stop"], "length");
    let out = run(&[
        "generate",
        &m,
        "--prompt",
        prompt,
        "--max-tokens",
        "100",
        "--ignore-eot",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(prompt) && text.ends_with('\n'), "{text:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    // `--slide` is still accepted.
    let out = run(&[
        "generate",
        &m,
        "--prompt",
        prompt,
        "--max-tokens",
        "30",
        "--slide",
    ]);
    assert!(out.status.success());
    let out = run(&[
        "generate",
        &m,
        "--prompt",
        prompt,
        "--max-tokens",
        "100",
        "--ignore-eot",
        "--no-slide",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(prompt) && text.ends_with('\n'), "{text:?}");
    // 4 prompt tokens + 12 generated fill the 16; the 13th is printed, then there is no room.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ember: error: the context is full (16 tokens) after 13 generated tokens: leave out \
         --no-slide to drop the oldest tokens and go on\n"
    );
}

/// `--kv int8` is accepted by generate (sliding past the context included) and bench, whose
/// JSON names the cache type and counts its bytes: one byte an element plus a 4-byte scale per
/// block of 32 of each row (9/16 of f16's for D a multiple of 32; this model's D = 4 makes
/// each row one short block, as large as in f16).
#[test]
fn int8_kv_cache_from_the_command_line() {
    let tmp = tempdir("kv-int8");
    let m = gpt2_tiny(tmp.path());
    let j = ok_json(&run(&[
        "generate",
        &m,
        "--prompt",
        "Every effort moves you",
        "--max-tokens",
        "40",
        "--ignore-eot",
        "--kv",
        "int8",
        "--json",
    ]));
    assert_eq!(j["generated_tokens"], 40);
    let bench = |kv: &str| {
        ok_json(&run(&[
            "bench",
            &m,
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "4",
            "--kv",
            kv,
            "--json",
        ]))
    };
    let (int8, f16) = (bench("int8"), bench("f16"));
    assert_eq!(int8["kv"], "int8");
    assert_eq!(f16["kv"], "f16");
    let bytes = |j: &serde_json::Value| j["kv_cache_bytes"].as_u64().unwrap();
    // 8 positions × 1 layer × 2 heads × D = 4, keys and values: f16 2 bytes an element; int8
    // 1 byte plus one f32 scale per row of 4.
    assert_eq!(bytes(&f16), 2 * 8 * 2 * 4 * 2);
    assert_eq!(bytes(&int8), 2 * 8 * 2 * (4 + 4));
}

/// `--stop` strings end the text before them (also while streaming), several may be given, and
/// `--json` names why generation stopped: "stop", "length" or "eos".
#[test]
fn stop_strings_and_stop_reasons() {
    let tmp = tempdir("stop");
    let m = gpt2_tiny(tmp.path());
    let base = [
        "generate",
        &m,
        "--prompt",
        "Hello",
        "--max-tokens",
        "40",
        "--ignore-eot",
    ];
    let mut args = base.to_vec();
    args.push("--json");
    let full = ok_json(&run(&args));
    let text = full["text"].as_str().unwrap().to_string();
    assert_eq!(full["stop"], "length");
    // A stop string from the middle of the text (whole characters).
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 12, "{text:?}");
    let stop: String = chars[6..9].iter().collect();
    let before = &text[..text.find(&stop).unwrap()];
    for extra in [
        &["--stop", stop.as_str()][..],
        &["--stop", "\u{1}never", "--stop", stop.as_str()],
    ] {
        let mut a = args.clone();
        a.extend(extra);
        let j = ok_json(&run(&a));
        assert_eq!(j["text"], before, "{extra:?}");
        assert_eq!(j["stop"], "stop");
        assert_eq!(j["stop_string"], stop.as_str());
        let mut a = base.to_vec();
        a.extend(extra);
        let out = run(&a);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("Hello{before}\n"),
            "the stop string is never printed"
        );
    }
    // End of text: a byte-level tokenizer whose <|endoftext|> the model samples at a high
    // temperature soon enough.
    let mut bytes: Vec<u8> = (0..=255).collect();
    let mut ends: Vec<u32> = (1..=256).collect();
    bytes.extend(b"<|endoftext|>");
    ends.push(bytes.len() as u32);
    let tok = emberlm_formats::tokenizer::Tokenizer::from_parts(
        emberlm_formats::tokenizer::TokenizerParts {
            tokens: bytes,
            token_ends: ends,
            special_names: vec!["<|endoftext|>".into()],
            special_ids: vec![256],
        },
    )
    .unwrap();
    let cfg = emberlm_formats::config::GptConfig {
        vocab_size: 257,
        context_length: 16,
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        qkv_bias: true,
        tied_head: true,
    };
    let bytes_model = tmp.path().join("bytes.ember");
    emberlm_runtime::random::write_random_model(
        &bytes_model,
        &cfg,
        emberlm_formats::ember::DType::F32,
        5,
        Some(&tok),
    )
    .unwrap();
    let b = bytes_model.to_str().unwrap();
    let j = ok_json(&run(&[
        "generate",
        b,
        "--prompt",
        "a",
        "--max-tokens",
        "5000",
        "--temperature",
        "50",
        "--json",
    ]));
    assert_eq!(j["stop"], "eos", "{j}");
    assert!(!j["tokens"].as_array().unwrap().contains(&256.into()));
}

/// `score --file` equals `score --text` on a text that fits; a longer text is scored in windows
/// whose log-probabilities equal those of scoring each window on its own.
#[test]
fn score_file_slides_over_long_texts() {
    let tmp = tempdir("score");
    let m = gpt2_tiny(tmp.path());
    let short = "Every effort moves you forward.";
    let f = tmp.path().join("short.txt");
    std::fs::write(&f, short).unwrap();
    let a = ok_json(&run(&[
        "score",
        &m,
        "--file",
        f.to_str().unwrap(),
        "--json",
    ]));
    let b = ok_json(&run(&["score", &m, "--text", short, "--json"]));
    assert_eq!(a["loss"], b["loss"]);
    assert_eq!(a["logprobs"], b["logprobs"]);
    assert_eq!(a["windows"], 1);

    let long = "I had always thought Jack Gisburn rather a cheap genius--though a good fellow \
                enough--so it was no great surprise to me to hear that, in the height of his \
                glory, he had dropped his painting, married a rich widow.";
    let f = tmp.path().join("long.txt");
    std::fs::write(&f, long).unwrap();
    let j = ok_json(&run(&[
        "score",
        &m,
        "--file",
        f.to_str().unwrap(),
        "--json",
    ]));
    let ids = ids(&j["tokens"]);
    let lp: Vec<f64> = j["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(ids.len() > 40, "{}", ids.len());
    assert_eq!(lp.len(), ids.len() - 1, "every token after the first, once");
    assert_eq!(
        (j["context"].as_u64(), j["stride"].as_u64()),
        (Some(16), Some(8))
    );
    let window = |start: usize| -> Vec<f64> {
        let end = (start + 16).min(ids.len());
        let w = ok_json(&run(&[
            "score",
            &m,
            "--tokens",
            &join(&ids[start..end]),
            "--json",
        ]));
        w["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    // Window 0 predicts tokens 1..16; window k (from 8k) the 8 tokens from 8k + 8 on.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
    let w0 = window(0);
    assert!(lp[..15].iter().zip(&w0).all(|(&a, &b)| close(a, b)));
    let mut start = 8;
    while start + 16 <= ids.len() {
        let w = window(start);
        for (k, &b) in w[7..].iter().enumerate() {
            let a = lp[start + 7 + k];
            assert!(
                close(a, b),
                "window at {start}, token {}: {a} vs {b}",
                start + 8 + k
            );
        }
        start += 8;
    }
    let text = run(&["score", &m, "--file", f.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("windows of 16 tokens, stride 8"), "{out}");
    assert_eq!(out.lines().count(), 1, "the summary only");
    // From standard input.
    let mut child = Command::new(ember())
        .args(["score", &m, "--file", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), long.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok_json(&out)["loss"], j["loss"]);
}

/// `ember --version`, and `--prompt -` reading the prompt from standard input.
#[test]
fn version_and_prompt_from_stdin() {
    let out = run(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("ember {}\n", env!("CARGO_PKG_VERSION"))
    );
    let tmp = tempdir("stdin");
    let m = gpt2_tiny(tmp.path());
    let mut child = Command::new(ember())
        .args([
            "generate",
            &m,
            "--prompt",
            "-",
            "--max-tokens",
            "3",
            "--json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Hello, world.").unwrap();
    let j = ok_json(&child.wait_with_output().unwrap());
    assert_eq!(ids(&j["prompt_tokens"]), [15496, 11, 995, 13]);
}

/// Every case: a non-zero exit, one line on stderr naming the problem, and no panic.
#[test]
fn bad_inputs_give_one_clear_line() {
    let tmp = tempdir("bad");
    let dir = tmp.path();
    let model = export_tiny(dir);
    let m = model.to_str().unwrap().to_string();
    let empty = dir.join("empty.ember");
    std::fs::write(&empty, b"").unwrap();
    let png = dir.join("picture.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    let truncated = dir.join("truncated.ember");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let future = dir.join("future.ember");
    let mut f = bytes.clone();
    f[8] = 9; // version
    std::fs::write(&future, &f).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "generate".into(),
                "/no/such/model.ember".into(),
                "--tokens".into(),
                "1".into(),
            ],
            "No such file",
        ),
        (
            vec!["generate".into(), s(dir), "--tokens".into(), "1".into()],
            "directory",
        ),
        (
            vec!["generate".into(), s(&empty), "--tokens".into(), "1".into()],
            "not an .ember file",
        ),
        (vec!["inspect".into(), s(&png)], "not an .ember file"),
        (
            vec![
                "generate".into(),
                s(&truncated),
                "--tokens".into(),
                "1".into(),
            ],
            "truncated",
        ),
        (
            vec!["inspect".into(), s(&future)],
            "version 9 is not supported",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--temperature".into(),
                "-1".into(),
            ],
            "temperature",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--top-k".into(),
                "0".into(),
            ],
            "top-k",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--top-p".into(),
                "2".into(),
            ],
            "top-p",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "5000".into(),
            ],
            "token id 5000 is out of range",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1,x".into(),
            ],
            "\"x\" is not a token id",
        ),
        (
            vec!["generate".into(), m.clone(), "--tokens".into(), "".into()],
            "no token ids",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--prompt".into(),
                "hello".into(),
            ],
            "no tokenizer",
        ),
        (vec!["generate".into(), m.clone()], "--tokens"),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--context".into(),
                "4096".into(),
            ],
            "context",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--kv".into(),
                "f8".into(),
            ],
            "--kv",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--max-tokens".into(),
                "100".into(),
                "--no-slide".into(),
            ],
            "context is full",
        ),
        (
            vec!["score".into(), m.clone(), "--tokens".into(), "1".into()],
            "at least 2 tokens",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--bogus".into(),
            ],
            "Unrecognized argument",
        ),
        (
            vec![
                "generate".into(),
                m.clone(),
                "--tokens".into(),
                "1".into(),
                "--max-tokens".into(),
                "-3".into(),
            ],
            "max-tokens",
        ),
        (
            vec!["detokenize".into(), "--ids".into(), "99999999".into()],
            "99999999",
        ),
        (
            vec!["bench".into(), "--random".into(), "7b".into()],
            "unknown model preset",
        ),
        (vec!["frobnicate".into()], "Unrecognized argument"),
    ];
    for (args, needle) in &cases {
        let out = Command::new(ember()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    }
    // A prompt longer than the context (the tiny model's 32 or the --context asked for, with or
    // without --slide): refused before anything is printed.
    let long: Vec<String> = (0..40).map(|i| (i % 7).to_string()).collect();
    for extra in [&[][..], &["--slide"], &["--context", "8"]] {
        let out = Command::new(ember())
            .args([
                "generate",
                &m,
                "--tokens",
                &long.join(","),
                "--max-tokens",
                "1",
            ])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains("more than the context"), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?} printed {:?}", out.stdout);
    }
    // Invalid UTF-8 in a flag.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let out = Command::new(ember())
            .args(["tokenize", "--text"])
            .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("not valid UTF-8") && !err.contains("panicked"),
            "{err}"
        );
    }
    eprintln!("bad-input matrix: {} cases passed", cases.len() + 1);
}

/// Runs `ember chat` with `input` on standard input.
fn chat(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(ember())
        .arg("chat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The case: questions piped into `ember chat` on a 64-token model with the default
/// --max-tokens 256 never end in an error; old turns are dropped (said on stderr), blank lines
/// are skipped, --json prints one object per answer, and --system stays through /reset.
#[test]
fn chat_from_a_pipe_never_dead_ends() {
    let tmp = tempdir("chat");
    let m = gpt2_tiny_context(tmp.path(), 64);
    let q = "What is the capital of France?\n";
    let out = chat(&[&m], &format!("{q}{q}\n{q}{q}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("error"), "{err}");
    assert!(
        err.contains("(dropped the oldest turns to fit the context of 64 tokens)"),
        "{err}"
    );

    let saved = tmp.path().join("chat.txt");
    let input = format!(
        "{q}{q}{q}/reset\nHello\n/save {}\n/exit\nnot read\n",
        saved.display()
    );
    let out = chat(&[&m, "--json", "--system", "You are terse."], &input);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "one JSON object per answer");
    for j in &lines {
        assert!(matches!(j["stop"].as_str(), Some("eos" | "length")), "{j}");
        assert!(j["context_tokens"].as_u64().unwrap() <= 64);
        assert!(j["text"].is_string());
    }
    assert!(
        lines[1..3]
            .iter()
            .any(|j| j["dropped_turns"].as_u64() > Some(0))
    );
    assert_eq!(lines[3]["dropped_turns"], 0, "after /reset");
    let transcript = std::fs::read_to_string(&saved).unwrap();
    assert!(
        transcript.starts_with("system: You are terse.\n\n> Hello\n"),
        "{transcript:?}"
    );
    // An unknown command is a note, not the end.
    let out = chat(&[&m], "/frobnicate\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(unknown command /frobnicate"));
}

/// `ember tokenize` with a Hugging Face tokenizer.json (the formats crate's fixtures, made by the
/// `tokenizers` library) gives `tokenizers`' ids, with `--bos` those of `add_special_tokens=True`;
/// the text comes through `--file -`, so NUL bytes and newlines travel too.
#[test]
fn tokenize_reads_tokenizer_json_and_text_from_stdin() {
    use std::io::Write;
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../formats/tests/fixtures/hf_tokenizers");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("cases.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for kind in ["llama3", "spm"] {
        let json = fixtures.join(format!("{kind}.json"));
        for case in cases["cases"].as_array().unwrap().iter().step_by(23) {
            let text = case["text"].as_str().unwrap();
            if text.is_empty() {
                continue;
            }
            for (bos, key) in [(false, "ids"), (true, "ids_special")] {
                let mut c = Command::new(ember());
                c.arg("tokenize").arg(&json).args(["--file", "-", "--json"]);
                if bos {
                    c.arg("--bos");
                }
                let mut child = c
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                let got = ids(&ok_json(&out)["tokens"]);
                assert_eq!(got, ids(&case[kind][key]), "{kind} {key} {text:?}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "{checked}");
    let out = run(&["tokenize", "--text", "a", "--file", "x"]);
    assert_eq!(out.status.code(), Some(2));
}
