//! `ember perplexity` against transformers: llama-perplexity's rule, the strided rule and the KL
//! divergence of a perturbed model, all computed independently by
//! `tests/fixtures/make_ppl_tiny.py` on the random tiny GPT-2 of `tests/fixtures/hf_tiny`.
//!
//! The binary is the one `cargo test --workspace` builds beside this test (target/<profile>/ember).

use emberlm_formats::meta::Task;
use emberlm_trainer::export::{ExportDtype, ExportMeta, export_ember};
use emberlm_trainer::import::import_safetensors;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// f32 runtime against the f64 script: relative error allowed on a loss.
const LOSS_REL: f64 = 1e-5;
/// Absolute error allowed on a KL divergence (values ~3e-2).
const KL_ABS: f64 = 2e-5;

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

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny")
}

fn expected() -> serde_json::Value {
    let s = std::fs::read_to_string(fixture_dir().join("perplexity.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

/// Exports the tiny model to `out/name`, every `blocks.*.ff.proj.weight` multiplied by `ff_scale`.
fn export(out: &Path, name: &str, ff_scale: f32) -> String {
    let imp = import_safetensors(&fixture_dir(), None).unwrap();
    let mut tensors = imp.tensors.clone();
    for (n, v) in tensors.iter_mut() {
        if n.starts_with("blocks.") && n.ends_with(".ff.proj.weight") {
            v.iter_mut().for_each(|x| *x *= ff_scale);
        }
    }
    let path = out.join(name);
    let meta = ExportMeta {
        config: imp.config,
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    export_ember(&path, &meta, ExportDtype::F32, &|n| {
        tensors.get(n).map(|v| v.as_slice())
    })
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tokens(e: &serde_json::Value) -> String {
    e["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn close(got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs(), "{got} vs {want}");
}

#[test]
fn perplexity_matches_transformers_under_both_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let m = export(tmp.path(), "tiny.ember", 1.0);
    let e = expected();
    let ids = tokens(&e);
    let ctx = e["context"].to_string();

    let j = ok_json(&run(&[
        "perplexity",
        &m,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--json",
    ]));
    close(
        j["loss"].as_f64().unwrap(),
        e["llama"]["loss"].as_f64().unwrap(),
        LOSS_REL,
    );
    close(
        j["perplexity"].as_f64().unwrap(),
        e["llama"]["perplexity"].as_f64().unwrap(),
        LOSS_REL * 10.0,
    );
    assert_eq!(j["tokens"], e["llama"]["tokens"]);
    assert_eq!(j["rule"], "llama-perplexity");

    let stride = e["stride"].to_string();
    let j = ok_json(&run(&[
        "perplexity",
        &m,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--stride",
        &stride,
        "--json",
    ]));
    close(
        j["loss"].as_f64().unwrap(),
        e["strided"]["loss"].as_f64().unwrap(),
        LOSS_REL,
    );
    assert_eq!(j["tokens"], e["strided"]["tokens"]);
}

#[test]
fn kl_divergence_matches_transformers_and_is_zero_against_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let m = export(tmp.path(), "tiny.ember", 1.0);
    let half = export(tmp.path(), "half.ember", 0.5);
    let e = expected();
    let ids = tokens(&e);
    let ctx = e["context"].to_string();

    let j = ok_json(&run(&[
        "perplexity",
        &m,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--kl-base",
        &m,
        "--json",
    ]));
    assert!(j["kl_mean"].as_f64().unwrap().abs() < 1e-12, "{j}");
    assert!(j["kl_p99"].as_f64().unwrap().abs() < 1e-12, "{j}");
    assert_eq!(j["top1_agreement"].as_f64().unwrap(), 1.0);

    // KL(base || model) with the original as base and the perturbed copy as the model.
    let p = &e["perturbed"];
    let j = ok_json(&run(&[
        "perplexity",
        &half,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--kl-base",
        &m,
        "--json",
    ]));
    close(
        j["loss"].as_f64().unwrap(),
        p["loss"].as_f64().unwrap(),
        LOSS_REL,
    );
    let (kl, want) = (
        j["kl_mean"].as_f64().unwrap(),
        p["kl_mean"].as_f64().unwrap(),
    );
    assert!((kl - want).abs() <= KL_ABS, "kl_mean {kl} vs {want}");
    let (kl, want) = (j["kl_p99"].as_f64().unwrap(), p["kl_p99"].as_f64().unwrap());
    assert!((kl - want).abs() <= KL_ABS, "kl_p99 {kl} vs {want}");
    assert_eq!(j["top1_agreement"], p["top1_agreement"]);
    // The other direction is a different number: the base really is the base.
    let j = ok_json(&run(&[
        "perplexity",
        &m,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--kl-base",
        &half,
        "--json",
    ]));
    assert!((j["kl_mean"].as_f64().unwrap() - want).abs() > 10.0 * KL_ABS);
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let m = export(tmp.path(), "tiny.ember", 1.0);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();
    let nope = tmp.path().join("nope.ember");
    let nope = nope.to_str().unwrap();
    let cases: &[(&[&str], &str, i32)] = &[
        (&[], "give --text TEXT, --file FILE or --tokens", 2),
        (&["--text", "hi"], "has no tokenizer", 1),
        (&["--file", empty], "the text is empty", 1),
        (
            &["--tokens", "1,2,3,4,5", "--context", "8"],
            "the text has 5 tokens: perplexity with a context of 8 needs at least 16",
            1,
        ),
        (
            &["--tokens", "1,2,3,4,5", "--context", "2"],
            "at least 3 tokens",
            2,
        ),
        (
            &["--tokens", "1,2,3", "--context", "8", "--stride", "0"],
            "--stride must be in 1..=8",
            2,
        ),
        (
            &["--tokens", "1,2,3", "--context", "8", "--stride", "9"],
            "--stride must be in 1..=8",
            2,
        ),
        (&["--tokens", "1,2", "--context", "99"], "--context", 2),
        (&["--tokens", "1,2", "--kl-base", nope], "nope.ember", 1),
        (&["--tokens", "1,2", "--threads", "0"], "--threads 0", 2),
        (
            &["--tokens", "1,2", "--strid", "1"],
            "did you mean `--stride`?",
            2,
        ),
        (
            &["--tokens", "1,500", "--stride", "1", "--context", "8"],
            "token id 500",
            1,
        ),
    ];
    for (args, needle, code) in cases {
        let mut argv = vec!["perplexity", m.as_str()];
        argv.extend_from_slice(args);
        let out = run(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{argv:?}: {err}");
        assert!(
            err.starts_with("ember: error: ") && err.contains(needle),
            "{argv:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{argv:?}: {err}");
    }
}

/// `--dtype int4`: 4-bit matrices, the embeddings and head at 6 bits (Q6), `--keep-f16` names at
/// f16 (a whole name or the part after blocks.N.), recorded per tensor; the file runs, and its KL
/// against the f32 export is small but not zero. An unknown `--keep-f16` name is an error naming it.
#[test]
fn int4_export_records_each_tensors_dtype_and_stays_close_to_f32() {
    use emberlm_formats::ember::{DType, parse_header};
    use emberlm_trainer::export::{Keep, export_ember_keep};
    let tmp = tempfile::tempdir().unwrap();
    let m = export(tmp.path(), "tiny.ember", 1.0);
    let imp = import_safetensors(&fixture_dir(), None).unwrap();
    let meta = ExportMeta {
        config: imp.config,
        task: Task::LanguageModel,
        prompt: None,
        tokenizer: None,
        provenance: vec![],
    };
    let path = tmp.path().join("int4.ember");
    let keep = Keep::f16(&[
        "ff.proj.weight".to_string(),
        "blocks.1.att.qkv.weight".to_string(),
    ]);
    export_ember_keep(&path, &meta, ExportDtype::Int4, &keep, &|n| {
        imp.tensors.get(n).map(|v| v.as_slice())
    })
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let h = parse_header(&bytes).unwrap();
    let dtype = |n: &str| h.tensor(n).unwrap().dtype;
    assert_eq!(dtype("tok_emb.weight"), DType::Q6);
    assert_eq!(dtype("pos_emb.weight"), DType::Q6);
    assert_eq!(dtype("blocks.0.att.qkv.weight"), DType::Q4);
    assert_eq!(dtype("blocks.1.att.qkv.weight"), DType::F16);
    assert_eq!(dtype("blocks.0.ff.proj.weight"), DType::F16);
    assert_eq!(dtype("blocks.1.ff.fc.weight"), DType::Q4);
    assert_eq!(dtype("blocks.0.ff.proj.bias"), DType::F32);

    let e = expected();
    let (ids, ctx) = (tokens(&e), e["context"].to_string());
    let p = path.to_str().unwrap();
    let j = ok_json(&run(&[
        "perplexity",
        p,
        "--tokens",
        &ids,
        "--context",
        &ctx,
        "--kl-base",
        &m,
        "--json",
    ]));
    let kl = j["kl_mean"].as_f64().unwrap();
    assert!(kl > 0.0 && kl < 0.05, "int4 KL against f32: {kl}");

    let err = export_ember_keep(
        &tmp.path().join("x.ember"),
        &meta,
        ExportDtype::Int4,
        &Keep::f16(&["ff.nope.weight".to_string()]),
        &|n| imp.tensors.get(n).map(|v| v.as_slice()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("\"ff.nope.weight\" matches no weight matrix"),
        "{err}"
    );
}
