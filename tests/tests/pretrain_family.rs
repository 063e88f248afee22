//! `ember-train pretrain --arch llama|qwen2|qwen3|gemma3`: a fresh model of the modern families
//! starts at the chance loss ln V and learns; a run cut in two and resumed ends with the same
//! weights, optimizer state included, bit for bit, as one uninterrupted run; the checkpoint
//! exports to a `.ember` that `ember` runs and describes as that architecture; flags that do not
//! fit the architecture are usage errors. (The families' gradients themselves are checked
//! against PyTorch in `trainer/tests/family_golden.rs`.)

mod hostile_util;

use hostile_util::{bin, check_one_line_error, scratch, train_tokenizer, write_random_words};
use std::path::Path;
use std::process::{Command, Output};

fn pretrain(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(bin("ember-train"));
    c.arg("pretrain").args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().unwrap()
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A 300-id tokenizer and a text of random words.
fn corpus(d: &Path) {
    write_random_words(&d.join("text.txt"), 3_000, 7);
    train_tokenizer(&d.join("text.txt"), &d.join("tok.ember"));
}

const SHAPE: &[&str] = &[
    "--layers",
    "2",
    "--heads",
    "4",
    "--dim",
    "32",
    "--context",
    "16",
    "--batch",
    "4",
    "--eval-every",
    "1000",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "4",
    "--lr",
    "3e-3",
    "--threads",
    "2",
    "--json",
];

#[test]
fn each_family_learns_from_the_chance_loss() {
    let dir = scratch("pretrain-family");
    let d: &Path = &dir;
    corpus(d);
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let out = d.join(arch);
        let mut args = vec!["--arch", arch, "--steps", "40"];
        args.extend_from_slice(SHAPE);
        let j = json_of(&pretrain(
            &args,
            &[
                Path::new("--data"),
                &d.join("text.txt"),
                Path::new("--tokenizer"),
                &d.join("tok.ember"),
                Path::new("--out"),
                &out,
            ],
        ));
        assert_eq!(j["arch"], arch);
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("checkpoints/step-00000040/trainer.json")).unwrap(),
        )
        .unwrap();
        // Step 1's loss, before any update: N(0, 0.02) weights predict nearly uniformly.
        let first = state["first_loss"].as_f64().unwrap();
        assert!(
            (first - 300f64.ln()).abs() < 0.05,
            "{arch}: first loss {first}"
        );
        assert_eq!(state["family"]["arch"], arch);
        let last = j["train_loss"].as_f64().unwrap();
        assert!(last < first - 0.5, "{arch}: {first} -> {last}");

        // Export and run.
        let ember = d.join(format!("{arch}.ember"));
        let o = Command::new(bin("ember-train"))
            .args(["export"])
            .arg(out.join("checkpoints/latest").parent().unwrap())
            .args(["--dtype", "int8", "--out"])
            .arg(&ember)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new(bin("ember"))
            .arg("inspect")
            .arg(&ember)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&format!("{arch}:")), "{text}");
        let o = Command::new(bin("ember"))
            .arg("generate")
            .arg(&ember)
            .args(["--prompt", "the", "--max-tokens", "5", "--temperature", "0"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = scratch("pretrain-family-resume");
    let d: &Path = &dir;
    corpus(d);
    let data: [&Path; 4] = [
        Path::new("--data"),
        &d.join("text.txt"),
        Path::new("--tokenizer"),
        &d.join("tok.ember"),
    ];
    let with = |steps: &str, out: &Path| {
        let mut args = vec!["--arch", "gemma3", "--steps", steps, "--grad-accum", "2"];
        args.extend_from_slice(SHAPE);
        let mut extra = data.to_vec();
        extra.push(Path::new("--out"));
        extra.push(out);
        json_of(&pretrain(&args, &extra))
    };
    with("6", &d.join("whole"));
    with("3", &d.join("cut"));
    let o = Command::new(bin("ember-train"))
        .args(["pretrain", "--resume"])
        .arg(d.join("cut"))
        .args(["--steps", "6", "--json"])
        .output()
        .unwrap();
    json_of(&o);
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(d.join("whole/checkpoints/step-00000006").join(f)).unwrap();
        let b = std::fs::read(d.join("cut/checkpoints/step-00000006").join(f)).unwrap();
        assert!(a == b, "{f} differs after resuming");
    }
    // A GPT-2-only command says what the checkpoint is.
    let o = Command::new(bin("ember-train"))
        .arg("eval")
        .arg(d.join("whole"))
        .args(["--data"])
        .arg(d.join("text.txt"))
        .output()
        .unwrap();
    if let Some(why) = check_one_line_error("ember-train", &o, "gemma3") {
        panic!("eval of a gemma3 checkpoint: {why}");
    }
}

#[test]
fn flags_that_do_not_fit_the_architecture_are_usage_errors() {
    let dir = scratch("pretrain-family-flags");
    let d: &Path = &dir;
    std::fs::write(d.join("t.txt"), "some text ".repeat(200)).unwrap();
    for (args, needle) in [
        (&["--kv-heads", "2"][..], "--arch"),
        (&["--arch", "falcon"][..], "unknown architecture"),
        (&["--arch", "llama", "--qkv-bias"][..], "--qkv-bias"),
        (&["--arch", "llama", "--dropout", "0.1"][..], "dropout"),
        (
            &["--arch", "llama", "--heads", "4", "--kv-heads", "3"][..],
            "multiple",
        ),
        (&["--arch", "llama", "--config", "qwen3-0.6b"][..], "qwen3"),
        (&["--config", "mistral-7b"][..], "unknown model preset"),
    ] {
        let o = pretrain(
            args,
            &[
                Path::new("--data"),
                &d.join("t.txt"),
                Path::new("--out"),
                &d.join("o"),
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if let Some(why) = check_one_line_error("ember-train", &o, needle) {
            panic!("{args:?}: {why}");
        }
    }
}

/// `ember score --tokens` of a model: its log-probabilities, as printed.
fn score(ember: &Path) -> String {
    let o = Command::new(bin("ember"))
        .arg("score")
        .arg(ember)
        .args(["--tokens", "1,5,7,9,11,3,4,60,2,17,33", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["logprobs"].to_string()
}

#[test]
fn imported_families_export_the_same_model_as_their_directory() {
    let dir = scratch("import-family");
    let d: &Path = &dir;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families");
    for fam in ["llama", "qwen2", "qwen3", "gemma3", "gemma3-bf16"] {
        let hf = fixtures.join(fam);
        let ck = d.join(format!("{fam}-ck"));
        let run = |args: &[&std::ffi::OsStr]| {
            let o = Command::new(bin("ember-train"))
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{fam}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(&[
            "import".as_ref(),
            "--from".as_ref(),
            hf.as_os_str(),
            "--out".as_ref(),
            ck.as_os_str(),
        ]);
        let (direct, via) = (
            d.join(format!("{fam}.ember")),
            d.join(format!("{fam}-ck.ember")),
        );
        for (src, out) in [(&hf, &direct), (&ck, &via)] {
            run(&[
                "export".as_ref(),
                src.as_os_str(),
                "--dtype".as_ref(),
                "f32".as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ]);
        }
        assert_eq!(score(&direct), score(&via), "{fam}");
    }
}

#[test]
fn a_family_checkpoint_continues_training_with_init() {
    let dir = scratch("pretrain-family-init");
    let d: &Path = &dir;
    corpus(d);
    let mut args = vec!["--arch", "qwen3", "--steps", "20"];
    args.extend_from_slice(SHAPE);
    let first = json_of(&pretrain(
        &args,
        &[
            Path::new("--data"),
            &d.join("text.txt"),
            Path::new("--tokenizer"),
            &d.join("tok.ember"),
            Path::new("--out"),
            &d.join("a"),
        ],
    ));
    let o = Command::new(bin("ember-train"))
        .args(["pretrain", "--init"])
        .arg(d.join("a/checkpoints/step-00000020"))
        .args(["--data"])
        .arg(d.join("text.txt"))
        .args([
            "--steps",
            "20",
            "--context",
            "16",
            "--batch",
            "4",
            "--lr",
            "3e-3",
        ])
        .args([
            "--eval-every",
            "1000",
            "--sample-tokens",
            "0",
            "--json",
            "--out",
        ])
        .arg(d.join("b"))
        .output()
        .unwrap();
    let second = json_of(&o);
    assert_eq!(second["arch"], "qwen3");
    // It starts where the first run ended, not from scratch.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(d.join("b/checkpoints/step-00000020/trainer.json")).unwrap(),
    )
    .unwrap();
    let start = state["first_loss"].as_f64().unwrap();
    let end_of_first = first["train_loss"].as_f64().unwrap();
    assert!(start < 300f64.ln() - 0.5, "{start}");
    assert!(
        (start - end_of_first).abs() < 0.5,
        "{start} vs {end_of_first}"
    );
}
