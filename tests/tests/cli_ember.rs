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
