//! `ember-train tokenizer`, `eval`, `export` and `import` through the real binary, and the
//! trainer ↔ runtime parity of every exported dtype.

mod cli_util;
use cli_util::*;
use emberlm_runtime::{Model, Session, SessionOptions};
use emberlm_trainer::checkpoint;
use emberlm_trainer::model::Gpt;

/// f32 export: the runtime's logits equal the trainer's `forward_logits` within this (the
/// issue's trainer-runtime parity bound).
const F32_MAX_ABS: f32 = 1e-4;
/// f16 weights: largest logit difference, relative to the largest |logit|.
const F16_MAX_REL: f32 = 5e-3;
/// int8 weights (blocks of 32 with an f16 scale): largest logit difference, relative.
const INT8_MAX_REL: f32 = 3e-2;

#[test]
fn tokenizer_command_writes_a_loadable_vocabulary() {
    let d = scratch("tokcmd");
    let text = write_sentences(&d, "text.txt", 300);
    let j = run_json(
        &d,
        &[
            "tokenizer",
            "--data",
            text.to_str().unwrap(),
            "--vocab-size",
            "280",
            "--out",
            "tok.ember",
            "--json",
        ],
    );
    assert_eq!(j["vocab_size"], 280);
    let bytes = std::fs::metadata(&text).unwrap().len();
    assert_eq!(j["bytes"].as_u64().unwrap(), bytes);
    let tok = checkpoint::read_tokenizer_file(&d.join("tok.ember")).unwrap();
    assert_eq!(tok.vocab_size(), 280);
    let s = std::fs::read_to_string(&text).unwrap();
    let ids = tok.encode_to_vec(&s, emberlm_formats::tokenizer::SpecialTokens::Allow);
    assert_eq!(j["tokens"].as_u64().unwrap(), ids.len() as u64);
    let bpt = j["bytes_per_token"].as_f64().unwrap();
    assert!((bpt - bytes as f64 / ids.len() as f64).abs() < 1e-9);
    assert!(bpt > 2.0, "24 merges on a ten-word text compress it: {bpt}");
    assert_eq!(tok.decode_to_string(&ids).unwrap(), s);
    // The tokenizer trains a model on the same file.
    let j = run_json(
        &d,
        &[
            "pretrain",
            "--data",
            text.to_str().unwrap(),
            "--tokenizer",
            "tok.ember",
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--context",
            "16",
            "--batch",
            "4",
            "--steps",
            "2",
            "--out",
            "run",
            "--json",
        ],
    );
    assert_eq!(j["config"]["vocab_size"], 280);
    let e = run_err(
        &d,
        &[
            "tokenizer",
            "--data",
            "text.txt",
            "--vocab-size",
            "10",
            "--out",
            "t.ember",
        ],
        2,
    );
    assert!(e.contains("--vocab-size 10"), "{e}");
}

#[test]
fn eval_reports_loss_perplexity_and_tokens() {
    let d = scratch("evalcmd");
    run_json(&d, &tiny_args(&["--steps", "3", "--out", "run", "--json"]));
    let text = write_sentences(&d, "held-out.txt", 50);
    let j = run_json(
        &d,
        &["eval", "run", "--data", text.to_str().unwrap(), "--json"],
    );
    let loss = j["loss"].as_f64().unwrap();
    let ppl = j["perplexity"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 20.0, "{loss}");
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
    // Independent count: windows of 16 with stride 16 over the checkpoint tokenizer's ids.
    let ck = checkpoint::load(&d.join("run"), false).unwrap();
    let s = std::fs::read_to_string(&text).unwrap();
    let n = ck
        .tokenizer
        .as_ref()
        .unwrap()
        .encode_to_vec(&s, emberlm_formats::tokenizer::SpecialTokens::Allow)
        .len();
    let windows = (0..n - 16).step_by(16).count();
    assert_eq!(j["tokens"].as_u64().unwrap(), (windows * 16) as u64);
    // And the loss itself, recomputed in-process window by window.
    let mut m = Gpt::from_params(ck.config, ck.params).unwrap();
    let ids = ck
        .tokenizer
        .as_ref()
        .unwrap()
        .encode_to_vec(&s, emberlm_formats::tokenizer::SpecialTokens::Allow);
    let mut sum = 0f64;
    for w in 0..windows {
        let x: Vec<u32> = ids[w * 16..w * 16 + 16].to_vec();
        let y: Vec<i32> = ids[w * 16 + 1..w * 16 + 17]
            .iter()
            .map(|&v| v as i32)
            .collect();
        let l = m
            .forward(&x, Some(&y), 1, 16, emberlm_trainer::model::Mode::Eval)
            .unwrap()
            .unwrap();
        sum += l as f64;
    }
    let want = sum / windows as f64;
    assert!((loss - want).abs() < 1e-4, "{loss} vs {want}");
    let e = run_err(&d, &["eval", "nowhere", "--data", "held-out.txt"], 1);
    assert!(e.contains("not a checkpoint"), "{e}");
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn export_of_every_dtype_matches_the_trainer_logits() {
    let d = scratch("export");
    run_json(
        &d,
        &tiny_args(&[
            "--steps",
            "20",
            "--lr",
            "3e-3",
            "--qkv-bias",
            "--out",
            "run",
            "--json",
        ]),
    );
    let ck = checkpoint::load(&d.join("run"), false).unwrap();
    let cfg = ck.config;
    let prompt = "The trainer saves a checkpoint at the end of every epoch";
    let ids = ck
        .tokenizer
        .as_ref()
        .unwrap()
        .encode_to_vec(prompt, emberlm_formats::tokenizer::SpecialTokens::Allow);
    let ids = &ids[..ids.len().min(cfg.context_length)];
    let t = ids.len();
    let mut m = Gpt::from_params(cfg, ck.params.clone()).unwrap();
    let want = m.forward_logits(ids, 1, t).unwrap().to_vec();
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut sizes = Vec::new();
    for (dtype, limit) in [
        ("f32", F32_MAX_ABS),
        ("f16", F16_MAX_REL * scale),
        ("int8", INT8_MAX_REL * scale),
    ] {
        let file = format!("model-{dtype}.ember");
        let j = run_json(
            &d,
            &["export", "run", "--dtype", dtype, "--out", &file, "--json"],
        );
        assert_eq!(j["dtype"], dtype);
        let bytes = j["bytes"].as_u64().unwrap();
        assert_eq!(bytes, std::fs::metadata(d.join(&file)).unwrap().len());
        sizes.push(bytes);
        let model = Model::open(&d.join(&file)).unwrap();
        assert_eq!(*model.config(), cfg.into());
        let tok = model
            .tokenizer()
            .unwrap()
            .expect("the export embeds the tokenizer");
        assert_eq!(tok.to_parts(), ck.tokenizer.as_ref().unwrap().to_parts());
        let mut s = Session::new(&model, &SessionOptions::default()).unwrap();
        let mut got = Vec::with_capacity(want.len());
        for &id in ids {
            got.extend_from_slice(s.step(id).unwrap());
        }
        let err = max_abs(&got, &want);
        assert!(
            err <= limit,
            "{dtype}: max |runtime - trainer| = {err} > {limit}"
        );
        eprintln!(
            "{dtype} parity: max abs diff {err:e} (limit {limit:e}, max |logit| {scale}) over {} logits",
            want.len()
        );
    }
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "{sizes:?}");
    let e = run_err(
        &d,
        &["export", "run", "--dtype", "bf16", "--out", "x.ember"],
        2,
    );
    assert!(e.contains("--dtype"), "{e}");
}

/// A random GPT-2 in Hugging Face's layout (Conv1D weights stored [in, out]), vocabulary 50257
/// so that GPT-2's tokenizer fits, C = 8, one block, 16 positions, no config.json.
fn write_hf_gpt2(dir: &std::path::Path) {
    use safetensors::{Dtype, tensor::TensorView};
    let (v, p, c) = (50257usize, 16usize, 8usize);
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("wte.weight", vec![v, c]),
        ("wpe.weight", vec![p, c]),
        ("h.0.ln_1.weight", vec![c]),
        ("h.0.ln_1.bias", vec![c]),
        ("h.0.attn.c_attn.weight", vec![c, 3 * c]),
        ("h.0.attn.c_attn.bias", vec![3 * c]),
        ("h.0.attn.c_proj.weight", vec![c, c]),
        ("h.0.attn.c_proj.bias", vec![c]),
        ("h.0.ln_2.weight", vec![c]),
        ("h.0.ln_2.bias", vec![c]),
        ("h.0.mlp.c_fc.weight", vec![c, 4 * c]),
        ("h.0.mlp.c_fc.bias", vec![4 * c]),
        ("h.0.mlp.c_proj.weight", vec![4 * c, c]),
        ("h.0.mlp.c_proj.bias", vec![c]),
        ("ln_f.weight", vec![c]),
        ("ln_f.bias", vec![c]),
    ];
    let mut seed = 7u64;
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            (0..len)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    if n.contains("ln_") && n.ends_with("weight") {
                        1.0 + 0.1 * u
                    } else {
                        0.1 * u
                    }
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(d)).unwrap(),
            )
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn import_writes_a_checkpoint_that_trains_exports_and_evaluates() {
    let d = scratch("import");
    write_hf_gpt2(&d.join("hf"));
    let j = run_json(
        &d,
        &[
            "import", "--from", "hf", "--heads", "2", "--out", "gpt", "--json",
        ],
    );
    assert_eq!(j["layout"], "HuggingFace");
    assert_eq!(j["tokenizer"], "gpt2");
    let ck = checkpoint::load(&d.join("gpt"), false).unwrap();
    assert_eq!(ck.state.kind, "import");
    assert!(ck.config.tied_head && ck.config.qkv_bias);
    assert_eq!(ck.config.context_length, 16);
    // Resuming an import is refused (no optimizer state); --init starts a run from it.
    let e = run_err(&d, &["pretrain", "--resume", "gpt"], 1);
    assert!(e.contains("--init"), "{e}");
    let text = write_sentences(&d, "text.txt", 200);
    let j = run_json(
        &d,
        &[
            "pretrain",
            "--init",
            "gpt",
            "--data",
            text.to_str().unwrap(),
            "--steps",
            "2",
            "--batch",
            "2",
            "--out",
            "tuned",
            "--json",
        ],
    );
    assert_eq!(j["config"]["vocab_size"], 50257);
    let j = run_json(&d, &["eval", "tuned", "--data", "text.txt", "--json"]);
    assert!(j["loss"].as_f64().unwrap().is_finite());
    // Our own checkpoints need no import: a checkpoint directory, a file in one and a run's
    // `latest` pointer are all refused with the way to use them.
    let latest = std::fs::read_dir(d.join("tuned"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("latest").is_file())
        .map(|p| p.join("latest"));
    let mut ours = vec![d.join("gpt"), d.join("gpt").join("model.safetensors")];
    ours.push(latest.expect("a pretrain run keeps a `latest` pointer beside its checkpoints"));
    for from in &ours {
        let e = run_err(
            &d,
            &["import", "--from", from.to_str().unwrap(), "--out", "again"],
            1,
        );
        assert!(e.contains("needs no import"), "{}: {e}", from.display());
    }
    assert!(!d.join("again").exists());
    let j = run_json(
        &d,
        &[
            "export",
            "gpt",
            "--dtype",
            "f16",
            "--out",
            "gpt.ember",
            "--json",
        ],
    );
    assert!(j["bytes"].as_u64().unwrap() > 0);
    assert!(Model::open(&d.join("gpt.ember")).is_ok());
    // Back to Hugging Face: weights, config and the tokenizer's vocab.json + merges.txt.
    let j = run_json(
        &d,
        &["export-safetensors", "gpt", "--out", "hf-out", "--json"],
    );
    for key in ["model_file", "config_file", "vocab_file", "merges_file"] {
        let path = j[key].as_str().unwrap_or_else(|| panic!("{key}: {j}"));
        assert!(d.join(path).is_file(), "{key}: {path}");
    }
    let tok = emberlm_formats::tokenizer::Tokenizer::from_hf_files(
        d.join("hf-out/vocab.json"),
        d.join("hf-out/merges.txt"),
    )
    .unwrap();
    assert_eq!(
        tok.to_parts(),
        emberlm_formats::tokenizer::Tokenizer::gpt2().to_parts()
    );
    // A model whose vocabulary (97) is not GPT-2's and that has no vocab.json / merges.txt is
    // imported without a tokenizer (token ids only), not refused.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf_tiny");
    if fixture.join("model.safetensors").is_file() {
        let j = run_json(
            &d,
            &[
                "import",
                "--from",
                fixture.to_str().unwrap(),
                "--out",
                "tiny",
                "--json",
            ],
        );
        assert_eq!(j["tokenizer"], "none", "{j}");
        let ck = checkpoint::load(&d.join("tiny"), false).unwrap();
        assert!(ck.tokenizer.is_none());
        assert_eq!(ck.config.vocab_size, 97);
    }
}

/// Issue 22, item 9: `eval` is not silent: without a terminal, a status line with the windows
/// done, the running loss and an ETA after the first batch; `--json` says how many windows.
#[test]
fn eval_shows_progress_with_an_eta() {
    let d = scratch("evalprogress");
    run_json(&d, &tiny_args(&["--steps", "1", "--out", "run", "--json"]));
    let text = write_sentences(&d, "held-out.txt", 50);
    let out = run(
        &d,
        &["eval", "run", "--data", text.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("window "))
        .unwrap_or_else(|| panic!("no status line: {err}"));
    assert!(line.contains("| loss ") && line.contains("ETA"), "{line}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], false);
    assert!(j["windows"].as_u64().unwrap() > 0);
    assert_eq!(j["windows"], j["total_windows"]);
}

/// Issue 22, item 7: every command's `--help` opens with a sentence for users (what the command
/// does), not a developer's rustdoc ("Flags of ...", intra-doc links); `--version` works.
#[test]
fn help_of_every_command_is_written_for_users() {
    let d = scratch("help");
    let commands: &[&[&str]] = &[
        &[],
        &["pretrain"],
        &["eval"],
        &["tokenizer"],
        &["export"],
        &["import"],
        &["export-safetensors"],
        &["finetune"],
        &["finetune", "classify"],
        &["finetune", "instruct"],
    ];
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let out = run(&d, &args);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        for bad in ["Flags of", "[`", "`ember-train pretrain`"] {
            assert!(!help.contains(bad), "{args:?}: {bad:?} in\n{help}");
        }
        // Usage line, blank line, then the description: a capitalised sentence.
        let desc = help.lines().nth(2).unwrap_or_default();
        assert!(
            desc.starts_with(|ch: char| ch.is_ascii_uppercase())
                || desc.starts_with("ember-train:"),
            "{args:?}: {desc:?}"
        );
    }
    let out = run(&d, &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("ember-train {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Issue 22, item 12: argh's usage errors are one line with single spaces, pointing at the help
/// of the command; `--threads 0` is refused by every command that has the flag (exit code 2).
#[test]
fn usage_errors_are_one_clean_line_and_threads_0_is_refused() {
    let d = scratch("usage");
    let e = run_err(&d, &["export", "run", "--out", "m.ember"], 2);
    assert_eq!(
        e,
        "ember-train: error: Required options not provided: --dtype (see ember-train export --help)"
    );
    let e = run_err(&d, &["finetune", "classify", "--bogus"], 2);
    assert!(!e.contains("  "), "{e}");
    assert!(
        e.ends_with("(see ember-train finetune classify --help)"),
        "{e}"
    );
    for args in [
        &["pretrain", "--threads", "0"][..],
        &["eval", "run", "--data", "t.txt", "--threads", "0"][..],
        &[
            "finetune",
            "classify",
            "--init",
            "run",
            "--data",
            "t.tsv",
            "--out",
            "o",
            "--threads",
            "0",
        ][..],
        &[
            "finetune",
            "instruct",
            "--init",
            "run",
            "--data",
            "t.json",
            "--out",
            "o",
            "--threads",
            "0",
        ][..],
    ] {
        let e = run_err(&d, args, 2);
        assert!(
            e.contains("--threads 0: must be at least 1"),
            "{args:?}: {e}"
        );
    }
}
