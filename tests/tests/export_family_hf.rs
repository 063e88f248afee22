//! A model of the modern families keeps what its Hugging Face directory says besides the weights:
//! `ember-train import` copies the directory's tokenizer, generation and configuration files into
//! the checkpoint's `hf/`, every later checkpoint carries them, and `ember-train export` of the
//! checkpoint writes the same chat template, special tokens and end-of-reply ids (and the same
//! tensors) as `ember-train export` of the directory itself.
//!
//! The models are the tiny ones of tests/fixtures/families (written by transformers, see
//! make_families.py there), given a ChatML template and end-of-reply ids here.

mod chatml_util;

use argh::FromArgs;
use chatml_util::{CHATML, grow_fixture};
use emberlm_formats::ember::{Header, MappedFile, Value, parse_header};
use emberlm_trainer::checkpoint;
use emberlm_trainer::cli::{self, Args, CliError, Console, Outcome};
use emberlm_trainer::dist::Single;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FAMILIES: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/families")
        .join(name)
}

/// Runs `ember-train ARGS` in this process.
fn train(args: &[&str]) -> Result<Outcome, CliError> {
    let parsed = Args::from_args(&["ember-train"], args)
        .unwrap_or_else(|e| panic!("{args:?}: {}", e.output));
    let (mut log, mut out) = (Vec::new(), Vec::new());
    cli::run(
        parsed,
        &mut Console {
            log: &mut log,
            out: &mut out,
            tty: false,
        },
        &Single,
    )
}

fn ok(args: &[&str]) -> Outcome {
    train(args).unwrap_or_else(|e| panic!("ember-train {}: {e}", args.join(" ")))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of fixture `name` in `to` with a chat template (in `tokenizer_config.json`, or for
/// Gemma in `chat_template.jinja` as transformers 5 saves it), special tokens and end-of-reply
/// ids.
fn with_chat(name: &str, to: &Path) -> PathBuf {
    let d = to.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    let mut tc = serde_json::json!({
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": "<|endoftext|>",
        "bos_token": null,
    });
    if name == "gemma3" {
        std::fs::write(d.join("chat_template.jinja"), CHATML).unwrap();
    } else {
        tc["chat_template"] = CHATML.into();
    }
    std::fs::write(d.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        d.join("special_tokens_map.json"),
        r#"{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    std::fs::write(
        d.join("generation_config.json"),
        r#"{"eos_token_id": [3, 7], "bos_token_id": 1, "pad_token_id": 0}"#,
    )
    .unwrap();
    d
}

/// The metadata of a `.ember` file other than `provenance.*` (where the model came from), by
/// key, and every tensor's bytes by name.
fn contents(path: &Path) -> (BTreeMap<String, Value>, BTreeMap<String, Vec<u8>>) {
    let map = MappedFile::open(path).unwrap();
    let bytes = map.bytes();
    let h: Header = parse_header(bytes).unwrap();
    let meta = h
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("provenance."))
        .cloned()
        .collect();
    let tensors = h
        .tensors
        .iter()
        .map(|t| {
            let at = (h.data_start + t.offset) as usize;
            (t.name.clone(), bytes[at..at + t.size as usize].to_vec())
        })
        .collect();
    (meta, tensors)
}

/// import → `hf/` holds the directory's files verbatim; export of the checkpoint == export of the
/// directory, metadata (chat template, special tokens, end-of-reply and start ids) and tensors;
/// `pretrain --init` carries `hf/` to its checkpoints, and their export still has the template.
#[test]
fn imported_checkpoints_export_the_chat_template_and_end_ids() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let src = with_chat(name, tmp.path());
        let ck = tmp.path().join(format!("{name}-ckpt"));
        ok(&["import", "--from", s(&src), "--out", s(&ck)]);
        for f in [
            "config.json",
            "generation_config.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert_eq!(
                std::fs::read(ck.join("hf").join(f)).unwrap(),
                std::fs::read(src.join(f)).unwrap(),
                "{name}: hf/{f}"
            );
        }
        assert_eq!(
            ck.join("hf/chat_template.jinja").is_file(),
            name == "gemma3",
            "{name}"
        );
        let extras = checkpoint::hf_extras(&ck).unwrap().unwrap();
        assert_eq!(extras.chat.as_ref().unwrap().source, CHATML, "{name}");
        assert_eq!((extras.eos_ids, extras.bos_id), (vec![3, 7], Some(1)));

        let from_dir = tmp.path().join(format!("{name}-dir.ember"));
        let from_ckpt = tmp.path().join(format!("{name}-ckpt.ember"));
        for dtype in ["f32", "int8"] {
            ok(&["export", s(&src), "--dtype", dtype, "--out", s(&from_dir)]);
            ok(&["export", s(&ck), "--dtype", dtype, "--out", s(&from_ckpt)]);
            let (want, got) = (contents(&from_dir), contents(&from_ckpt));
            assert!(want.0.contains_key("chat.template"), "{name}: {:?}", want.0);
            assert!(want.0.contains_key("generation.eos_ids"), "{name}");
            assert_eq!(got.0, want.0, "{name} {dtype}: metadata");
            assert_eq!(got.1, want.1, "{name} {dtype}: tensors");
        }
    }
    // A checkpoint without hf/ has no extras (and its export no template).
    let ck = tmp.path().join("llama-ckpt");
    std::fs::remove_dir_all(ck.join("hf")).unwrap();
    assert!(checkpoint::hf_extras(&ck).unwrap().is_none());
    let out = tmp.path().join("bare.ember");
    ok(&["export", s(&ck), "--dtype", "f32", "--out", s(&out)]);
    assert!(!contents(&out).0.contains_key("chat.template"));
    // A damaged file in hf/ is an error naming it.
    let ck = tmp.path().join("qwen2-ckpt");
    std::fs::write(
        ck.join("hf/generation_config.json"),
        "{\"eos_token_id\": 101}",
    )
    .unwrap();
    let e = checkpoint::hf_extras(&ck).unwrap_err().to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("101"),
        "{e}"
    );
    let e = train(&["export", s(&ck), "--dtype", "f32", "--out", s(&out)]).unwrap_err();
    assert!(e.to_string().contains("101"), "{e}");
}

/// `hf/` travels through training: `pretrain --init` of an imported checkpoint and `--resume` of
/// that run both write it byte for byte, and the export of the resumed run keeps the template.
#[test]
fn training_runs_carry_the_hugging_face_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = with_tokenizer("qwen3", tmp.path());
    let ck = tmp.path().join("ckpt");
    ok(&["import", "--from", s(&src), "--out", s(&ck)]);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "Every effort moves you forward. ".repeat(40)).unwrap();
    let run = tmp.path().join("run");
    let common = [
        "--steps",
        "2",
        "--batch",
        "1",
        "--context",
        "8",
        "--eval-every",
        "1",
    ];
    let mut args = vec![
        "pretrain",
        "--init",
        s(&ck),
        "--data",
        s(&text),
        "--out",
        s(&run),
    ];
    args.extend(common);
    ok(&args);
    let same = |dir: &Path| {
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            assert_eq!(
                std::fs::read(dir.join("hf").join(f)).unwrap(),
                std::fs::read(src.join(f)).unwrap(),
                "{}: hf/{f}",
                dir.display()
            );
        }
    };
    same(&checkpoint::resolve(&run).unwrap());
    same(&run.join("checkpoints/best"));
    ok(&["pretrain", "--resume", s(&run), "--steps", "3"]);
    let last = checkpoint::resolve(&run).unwrap();
    assert!(last.ends_with("step-00000003"), "{}", last.display());
    same(&last);
    let out = tmp.path().join("trained.ember");
    ok(&["export", s(&run), "--dtype", "f32", "--out", s(&out)]);
    let (meta, _) = contents(&out);
    assert_eq!(meta.get("chat.template"), Some(&Value::Str(CHATML.into())));
}

/// The tokenizer of the formats tests for `name`'s family (Qwen's for both Qwen fixtures).
fn tokenizer_of(name: &str) -> PathBuf {
    let file = match name {
        "llama" => "llama3.json",
        "gemma3" => "gemma.json",
        _ => "qwen2.json",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../formats/tests/fixtures/hf_tokenizers")
        .join(file)
}

/// [`with_chat`] with a `tokenizer.json`: the fixture's embedding (and untied head) grown from
/// 101 rows to the tokenizer's size with deterministic values, in one `model.safetensors`.
fn with_tokenizer(name: &str, to: &Path) -> PathBuf {
    let d = with_chat(name, to);
    let tok = emberlm_formats::tokenizer::Tokenizer::from_hf_json_file(tokenizer_of(name)).unwrap();
    grow_fixture(&d, &d, tok.vocab_size(), false);
    std::fs::copy(tokenizer_of(name), d.join("tokenizer.json")).unwrap();
    d
}

/// Every tensor of a checkpoint's `model.safetensors` as f32 values, by name.
fn params(ck: &Path) -> BTreeMap<String, Vec<f32>> {
    let file =
        emberlm_trainer::import::SafetensorsFile::open(&ck.join("model.safetensors")).unwrap();
    file.names()
        .into_iter()
        .map(|n| {
            let v = file.read_f32(&n).unwrap();
            (n, v)
        })
        .collect()
}

/// import FIXTURE → export-safetensors → import again: the same configuration and bit-identical
/// parameters for all four fixtures (Llama's four shards, Qwen2's biases, Qwen3's q/k norms,
/// Gemma's 1 + w norms and tied head); `hf/` comes back too. `--dtype bf16` of the f32 fixtures
/// writes exactly the bf16 fixtures transformers made from them (Gemma's norms, which the
/// checkpoint holds as 1 + w, within one bf16 step).
#[test]
fn export_safetensors_then_import_gives_the_same_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let src = with_chat(name, tmp.path());
        let ck = tmp.path().join(format!("{name}-ckpt"));
        ok(&["import", "--from", s(&src), "--out", s(&ck)]);
        let out = tmp.path().join(format!("{name}-hf"));
        let o = ok(&["export-safetensors", s(&ck), "--out", s(&out), "--json"]);
        assert_eq!(o.json["arch"], name, "{}", o.json);
        let tied = name == "qwen2" || name == "gemma3";
        let file =
            emberlm_trainer::import::SafetensorsFile::open(&out.join("model.safetensors")).unwrap();
        assert_eq!(file.contains("lm_head.weight"), !tied, "{name}");
        assert!(
            file.contains("model.layers.1.self_attn.o_proj.weight"),
            "{name}"
        );
        let back = tmp.path().join(format!("{name}-back"));
        ok(&["import", "--from", s(&out), "--out", s(&back)]);
        let (a, b) = (params(&ck), params(&back));
        assert_eq!(a.len(), b.len(), "{name}");
        for (n, v) in &a {
            let w = &b[n];
            let same =
                v.len() == w.len() && v.iter().zip(w).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{name}: {n} differs after export-safetensors → import"
            );
        }
        let family = |d: &Path| checkpoint::load(d, false).unwrap().state.family;
        assert_eq!(family(&ck), family(&back), "{name}");
        for f in [
            "generation_config.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            assert_eq!(
                std::fs::read(out.join(f)).unwrap(),
                std::fs::read(src.join(f)).unwrap(),
                "{name}: {f}"
            );
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["dtype"], "float32");

        // bf16: transformers' own rounding of the same weights (tests/fixtures/families/*-bf16).
        let out16 = tmp.path().join(format!("{name}-bf16"));
        ok(&[
            "export-safetensors",
            s(&ck),
            "--dtype",
            "bf16",
            "--out",
            s(&out16),
        ]);
        let got = emberlm_trainer::import::SafetensorsFile::open(&out16.join("model.safetensors"))
            .unwrap();
        let want = emberlm_trainer::import::SafetensorsFile::open(
            &fixture(&format!("{name}-bf16")).join("model.safetensors"),
        )
        .unwrap();
        let mut names = got.names();
        names.sort();
        let mut want_names = want.names();
        want_names.sort();
        assert_eq!(names, want_names, "{name}");
        for n in &names {
            let (g, w) = (got.read_f32(n).unwrap(), want.read_f32(n).unwrap());
            let gemma_norm = name == "gemma3" && n.contains("norm");
            for (i, (x, y)) in g.iter().zip(&w).enumerate() {
                let step = half::bf16::from_f32(*y).to_f32().abs() / 128.0;
                let close = if gemma_norm {
                    (x - y).abs() <= step
                } else {
                    x == y
                };
                assert!(close, "{name} bf16 {n}[{i}]: {x} vs transformers' {y}");
            }
        }
    }
}

/// What the command refuses, with the reason: the book's layout for a family, an unknown dtype,
/// a directory whose index would shadow the new weights; a from-scratch model (no `hf/`)
/// still exports, without tokenizer files.
#[test]
fn export_safetensors_of_a_family_refuses_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ckpt");
    ok(&["import", "--from", s(&fixture("qwen3")), "--out", s(&ck)]);
    let out = tmp.path().join("out");
    let e = train(&[
        "export-safetensors",
        s(&ck),
        "--layout",
        "book",
        "--out",
        s(&out),
    ]);
    let e = e.unwrap_err();
    assert!(
        matches!(e, CliError::Usage(_)) && e.to_string().contains("--layout hf"),
        "{e}"
    );
    let e = train(&[
        "export-safetensors",
        s(&ck),
        "--dtype",
        "int8",
        "--out",
        s(&out),
    ]);
    assert!(e.unwrap_err().to_string().contains("bf16"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors.index.json"), "{}").unwrap();
    let e = train(&["export-safetensors", s(&ck), "--out", s(&out)]).unwrap_err();
    assert!(
        e.to_string().contains("model.safetensors.index.json"),
        "{e}"
    );
    std::fs::remove_dir_all(ck.join("hf")).unwrap();
    let out = tmp.path().join("bare");
    let o = ok(&["export-safetensors", s(&ck), "--out", s(&out), "--json"]);
    assert_eq!(o.json["files"], serde_json::json!([]));
    assert!(out.join("config.json").is_file() && !out.join("tokenizer_config.json").exists());
}

/// transformers loads every export (tests/fixtures/families/check_hf_export.py): for each family
/// the plain fixture (logits against transformers' own expected.json and against the fixture
/// directory), the fixture with a tokenizer and chat template (AutoTokenizer: same ids, same
/// rendered chat, same end ids), and that model after three `pretrain --init` steps (logits
/// against the trainer's own forward pass). Skips loudly without python3 + torch + transformers,
/// unless EMBER_REQUIRE_TRANSFORMERS is set (CI), where that is a failure. With
/// EMBER_EXPORT_DIR set the directories are kept there.
#[test]
fn transformers_loads_the_exports() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families/check_hf_export.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var_os("EMBER_REQUIRE_TRANSFORMERS").is_none(),
            "EMBER_REQUIRE_TRANSFORMERS is set but {python} cannot import torch and transformers: {why}"
        );
        eprintln!(
            "SKIPPED transformers_loads_the_exports: {python} cannot import torch and transformers ({why})"
        );
        return;
    }
    let (base, _tmp) = match std::env::var_os("EMBER_EXPORT_DIR") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&base).unwrap();
    let text = base.join("text.txt");
    std::fs::write(
        &text,
        "Every effort moves you forward, step by step. ".repeat(60),
    )
    .unwrap();
    let mut cases = Vec::new();
    for name in FAMILIES {
        let ck = base.join(format!("{name}-ckpt"));
        let out = base.join(format!("{name}-hf"));
        ok(&["import", "--from", s(&fixture(name)), "--out", s(&ck)]);
        ok(&["export-safetensors", s(&ck), "--out", s(&out)]);
        cases.push(serde_json::json!({
            "name": name, "exported": out, "reference": fixture(name),
            "expected": fixture(name).join("expected.json"),
        }));

        let src = with_tokenizer(name, &base.join("sources"));
        let ck = base.join(format!("{name}-tok-ckpt"));
        let out = base.join(format!("{name}-tok-hf"));
        ok(&["import", "--from", s(&src), "--out", s(&ck)]);
        ok(&["export-safetensors", s(&ck), "--out", s(&out)]);
        cases.push(serde_json::json!({
            "name": format!("{name} with tokenizer"), "exported": out, "reference": src,
            "tokenizer": true,
        }));

        let run = base.join(format!("{name}-run"));
        ok(&[
            "pretrain",
            "--init",
            s(&ck),
            "--data",
            s(&text),
            "--steps",
            "3",
            "--batch",
            "2",
            "--context",
            "16",
            "--lr",
            "0.01",
            "--out",
            s(&run),
        ]);
        let trained = checkpoint::load(&run, false).unwrap();
        assert_eq!(trained.state.step, 3);
        assert_ne!(
            trained.params,
            checkpoint::load(&ck, false).unwrap().params,
            "{name}: training changed nothing"
        );
        let cfg = trained.family.unwrap();
        let tokens: Vec<u32> = [5u32, 17, 42, 3, 96, 0, 11, 64, 23, 8, 77, 31].to_vec();
        let targets: Vec<i32> = tokens[1..]
            .iter()
            .map(|&t| t as i32)
            .chain([-100])
            .collect();
        let layout = emberlm_trainer::family::Layout::new(&cfg);
        let step =
            emberlm_trainer::family::forward_loss(&layout, &trained.params, &tokens, &targets, 1);
        let v = cfg.vocab_size;
        let logits: Vec<Vec<f32>> = step.logits.chunks(v).map(<[f32]>::to_vec).collect();
        let expected = base.join(format!("{name}-trained-expected.json"));
        std::fs::write(
            &expected,
            serde_json::json!({"tokens": tokens, "logits": logits}).to_string(),
        )
        .unwrap();
        let out = base.join(format!("{name}-trained-hf"));
        ok(&["export-safetensors", s(&run), "--out", s(&out)]);
        cases.push(serde_json::json!({
            "name": format!("{name} after 3 training steps"), "exported": out,
            "expected": expected,
        }));
    }
    // A Llama trained from scratch here (GPT-2's tokenizer, no hf/): the trainer's logits, and
    // GPT2Tokenizer reading the exported vocab.json + merges.txt gives ember's ids.
    let run = base.join("scratch-llama-run");
    ok(&[
        "pretrain",
        "--arch",
        "llama",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--dim",
        "16",
        "--ffn-dim",
        "32",
        "--context",
        "16",
        "--batch",
        "2",
        "--steps",
        "2",
        "--data",
        s(&text),
        "--out",
        s(&run),
    ]);
    let trained = checkpoint::load(&run, false).unwrap();
    assert!(trained.state.hf.is_none());
    let cfg = trained.family.unwrap();
    let tokens: Vec<u32> = vec![464, 3797, 318, 257, 1332, 13, 50256, 15496];
    let targets: Vec<i32> = tokens[1..]
        .iter()
        .map(|&t| t as i32)
        .chain([-100])
        .collect();
    let layout = emberlm_trainer::family::Layout::new(&cfg);
    let step =
        emberlm_trainer::family::forward_loss(&layout, &trained.params, &tokens, &targets, 1);
    let logits: Vec<Vec<f32>> = step
        .logits
        .chunks(cfg.vocab_size)
        .map(<[f32]>::to_vec)
        .collect();
    let text_probe = "Every effort moves you. Hello, world!";
    let mut ids = Vec::new();
    trained.tokenizer.as_ref().unwrap().encode_ordinary(
        text_probe,
        &mut Default::default(),
        &mut ids,
    );
    let expected = base.join("scratch-llama-expected.json");
    std::fs::write(
        &expected,
        serde_json::json!({"tokens": tokens, "logits": logits, "text": text_probe, "ids": ids})
            .to_string(),
    )
    .unwrap();
    let out = base.join("scratch-llama-hf");
    let o = ok(&["export-safetensors", s(&run), "--out", s(&out), "--json"]);
    assert_eq!(
        o.json["files"],
        serde_json::json!(["vocab.json", "merges.txt", "tokenizer_config.json"])
    );
    cases.push(serde_json::json!({
        "name": "llama trained from scratch", "exported": out, "expected": expected,
    }));
    std::fs::write(
        base.join("cases.json"),
        serde_json::to_string_pretty(&cases).unwrap(),
    )
    .unwrap();
    let o = std::process::Command::new(&python)
        .arg(&script)
        .arg(&base)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{report}");
    assert!(o.status.success(), "{}: {report}", script.display());
    assert!(
        report.contains(&format!("all {} cases passed", cases.len())),
        "{report}"
    );
}
