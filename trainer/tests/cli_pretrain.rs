//! `ember-train pretrain` through the real binary: JSON contract, bit-exact resume, Ctrl-C,
//! and the bad-input cases (each one clear line on stderr, exit code 1 or 2, no panic).

mod cli_util;
use cli_util::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// The train/val losses of loss.csv (step, train, val), parsed back to f32 bit patterns.
fn losses(dir: &std::path::Path) -> Vec<(u64, u32, u32)> {
    let csv = std::fs::read_to_string(dir.join("loss.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("step,epoch,tokens_seen,lr,train_loss,val_loss")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[0].parse().unwrap(),
                f[4].parse::<f32>().unwrap().to_bits(),
                f[5].parse::<f32>().unwrap().to_bits(),
            )
        })
        .collect()
}

fn final_model(dir: &std::path::Path) -> Vec<u8> {
    let ck = emberlm_trainer::checkpoint::resolve(dir).unwrap();
    std::fs::read(ck.join("model.safetensors")).unwrap()
}

#[test]
fn json_has_the_contract_keys_and_the_loss_falls() {
    let d = scratch("json");
    let args = tiny_args(&[
        "--steps",
        "12",
        "--eval-every",
        "4",
        "--out",
        "run",
        "--json",
        "--lr",
        "1e-2",
        "--init-scheme",
        "gpt2",
    ]);
    let j = run_json(&d, &args);
    for k in [
        "train_loss",
        "val_loss",
        "tokens_per_s",
        "steps",
        "epochs",
        "wall_seconds",
        "out_dir",
        "checkpoint",
        "loss_csv",
        "loss_plot",
    ] {
        assert!(j.get(k).is_some(), "missing key {k}: {j}");
    }
    assert_eq!(j["steps"], 12);
    assert!(j["tokens_per_s"].as_f64().unwrap() > 0.0);
    let rows = losses(&d.join("run"));
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 5, 9, 12]
    );
    let first = f32::from_bits(rows[0].1);
    let last = f32::from_bits(rows[3].1);
    assert!(last < first - 0.5, "train loss {first} -> {last}");
    assert_eq!(j["train_loss"].as_f64().unwrap() as f32, last);
    assert!(d.join("run/loss.svg").is_file());
    let ck = std::path::PathBuf::from(j["checkpoint"].as_str().unwrap());
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer.json",
        "tokenizer.ember",
    ] {
        assert!(d.join(&ck).join(f).is_file(), "{f}");
    }
    // A second run on the same data reads the token cache.
    let out = run(&d, &tiny_args(&["--steps", "1", "--out", "run2"]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("read from the cache"), "{err}");
}

#[test]
fn resume_is_bit_for_bit_identical_to_an_uninterrupted_run() {
    let d = scratch("resume");
    // Dropout, gradient accumulation, clipping, warmup and several epochs are all in play.
    let common = [
        "--eval-every",
        "1",
        "--grad-accum",
        "2",
        "--clip",
        "0.5",
        "--warmup-steps",
        "3",
        "--dropout",
        "0.2",
        "--stride",
        "128",
        "--lr",
        "2e-3",
    ];
    let mut a = tiny_args(&common);
    a.extend_from_slice(&["--steps", "14", "--out", "straight"]);
    run_json(&d, &[a.as_slice(), &["--json"]].concat());
    let mut b = tiny_args(&common);
    b.extend_from_slice(&["--steps", "6", "--out", "split"]);
    run_json(&d, &[b.as_slice(), &["--json"]].concat());
    let j = run_json(
        &d,
        &["pretrain", "--resume", "split", "--steps", "14", "--json"],
    );
    assert_eq!(j["steps"], 14);
    let straight = losses(&d.join("straight"));
    let split = losses(&d.join("split"));
    assert_eq!(straight.len(), 14);
    assert_eq!(straight, split, "loss.csv differs after resume");
    assert!(
        final_model(&d.join("straight")) == final_model(&d.join("split")),
        "final parameters differ"
    );
    // Changing a fixed setting on resume is refused.
    let e = run_err(&d, &["pretrain", "--resume", "split", "--lr", "1"], 2);
    assert!(e.contains("--lr cannot be changed on --resume"), "{e}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_run_resumes() {
    let d = scratch("sigint");
    let args = tiny_args(&[
        "--steps",
        "100000",
        "--eval-every",
        "1",
        "--out",
        "run",
        "--json",
    ]);
    let mut child = KillOnDrop::new(
        cmd(&d, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Wait until the first step has been logged.
    loop {
        let l = lines
            .next()
            .expect("stderr closed before the first step")
            .unwrap();
        if l.starts_with("step ") {
            break;
        }
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{rest:?}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], true);
    let steps = j["steps"].as_u64().unwrap();
    assert!((1..100000).contains(&steps));
    let text = rest.join("\n");
    assert!(text.contains("ember-train pretrain --resume run"), "{text}");
    let ck = emberlm_trainer::checkpoint::load(&d.join("run"), true).unwrap();
    assert_eq!(ck.state.step, steps);
    let target = (steps + 2).to_string();
    let j = run_json(
        &d,
        &["pretrain", "--resume", "run", "--steps", &target, "--json"],
    );
    assert_eq!(j["steps"].as_u64().unwrap(), steps + 2);
}

#[test]
fn bad_data_files_are_one_clear_line() {
    let d = scratch("baddata");
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("latin1.txt"), b"na\xefve caf\xe9").unwrap();
    std::fs::write(d.join("short.txt"), "A few words only.").unwrap();
    std::fs::create_dir_all(d.join("adir")).unwrap();
    let cases: &[(&str, &str)] = &[
        ("empty.txt", "empty.txt: the file is empty"),
        ("latin1.txt", "latin1.txt: invalid UTF-8 at byte offset 2"),
        ("adir", "adir: is a directory"),
        ("missing.txt", "missing.txt: no such file or directory"),
        ("short.txt", "tokens, need at least context+1 = 17"),
    ];
    for (file, want) in cases {
        let args = [
            "pretrain",
            "--data",
            file,
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--context",
            "16",
            "--steps",
            "1",
        ];
        let e = run_err(&d, &args, 1);
        assert!(e.contains(want), "{file}: {e}");
        assert!(e.contains("--data"), "{file}: names the flag: {e}");
    }
}

#[test]
fn bad_settings_are_refused_before_training() {
    let d = scratch("badsettings");
    let text = write_sentences(&d, "text.txt", 400);
    let text = text.to_str().unwrap();
    // A batch that cannot fit in memory: said before allocating anything.
    let e = run_err(
        &d,
        &[
            "pretrain", "--data", text, "--config", "1558m", "--batch", "100000", "--steps", "1",
        ],
        1,
    );
    assert!(
        e.contains("--batch 100000") && e.contains("available"),
        "{e}"
    );
    // A window longer than the model's context.
    run_json(
        &d,
        &tiny_args(&["--steps", "1", "--out", "small", "--json"]),
    );
    let e = run_err(
        &d,
        &[
            "pretrain",
            "--init",
            "small",
            "--context",
            "64",
            "--steps",
            "1",
        ],
        2,
    );
    assert!(
        e.contains("--context 64 is larger than the model's context length 16"),
        "{e}"
    );
    // Usage errors.
    let e = run_err(&d, &["pretrain", "--epochs", "1", "--steps", "1"], 2);
    assert!(e.contains("--epochs or --steps"), "{e}");
    // Under --json a failure is still one JSON object on stdout.
    let out = run(&d, &["pretrain", "--epochs", "1", "--steps", "1", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["error"].as_str().unwrap().contains("--epochs or --steps"),
        "{j}"
    );
    assert_eq!(j["exit_code"], 2);
    let e = run_err(&d, &["pretrain", "--no-such-flag"], 2);
    assert!(e.contains("no-such-flag"), "{e}");
    let e = run_err(&d, &tiny_args(&["--schedule", "linear"]), 2);
    assert!(e.contains("--schedule"), "{e}");
    // An existing run is not overwritten.
    let e = run_err(&d, &tiny_args(&["--out", "small", "--steps", "1"]), 2);
    assert!(e.contains("already holds a training run"), "{e}");
}

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let d = scratch("diverge");
    let args = tiny_args(&[
        "--lr",
        "1000",
        "--steps",
        "50",
        "--checkpoint-every",
        "1",
        "--out",
        "run",
    ]);
    let e = run_err(&d, &args, 1);
    assert!(e.contains("training diverged at step"), "{e}");
    assert!(e.contains("lower --lr") && e.contains("--clip"), "{e}");
    assert!(e.contains("The last good checkpoint is intact"), "{e}");
    let ck = emberlm_trainer::checkpoint::load(&d.join("run"), true).unwrap();
    assert!(ck.params.iter().all(|v| v.is_finite()));
}

/// Issue 22, item 14: the checkpoint with the lowest validation loss is kept as
/// `checkpoints/best` (it is the evaluation with the minimum of loss.csv, not the last one), the
/// end-of-run hint exports it, and `--json` names it.
#[test]
fn the_best_checkpoint_by_validation_loss_is_kept() {
    let d = scratch("best");
    // A high learning rate on a tiny text overfits quickly: the last evaluation is rarely the best.
    let j = run_json(
        &d,
        &tiny_args(&[
            "--steps",
            "40",
            "--eval-every",
            "2",
            "--lr",
            "3e-2",
            "--out",
            "run",
            "--json",
        ]),
    );
    let rows = losses(&d.join("run"));
    let (min_step, min_val) = rows
        .iter()
        .map(|&(s, _, v)| (s, f32::from_bits(v)))
        .filter(|(_, v)| v.is_finite())
        .fold((0, f32::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    assert_eq!(j["best_step"], min_step, "{j}");
    let best = j["best_val_loss"].as_f64().unwrap() as f32;
    assert_eq!(best.to_bits(), min_val.to_bits(), "{j}");
    let dir = j["best_checkpoint"].as_str().unwrap();
    assert!(dir.ends_with("checkpoints/best"), "{dir}");
    let ck = emberlm_trainer::checkpoint::load(&d.join(dir), false).unwrap();
    assert_eq!(ck.state.step, min_step);
    assert!(ck.moments.is_none());
    // The best checkpoint is not a place to resume from (no optimizer state), but exports.
    run_json(
        &d,
        &[
            "export",
            dir,
            "--dtype",
            "f32",
            "--out",
            "best.ember",
            "--json",
        ],
    );
    // The human summary says which checkpoint to export.
    let out = run(&d, &["pretrain", "--resume", "run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("best checkpoint (lowest validation loss): run/checkpoints/best"),
        "{text}"
    );
    assert!(
        text.contains(" export run/checkpoints/best --dtype"),
        "{text}"
    );
}

/// Issue 22, item 12: resuming a finished run says so and how to extend it (not "0 tokens/s").
#[test]
fn resuming_a_finished_run_says_how_to_extend_it() {
    let d = scratch("finished");
    run_json(&d, &tiny_args(&["--steps", "3", "--out", "run", "--json"]));
    let out = run(&d, &["pretrain", "--resume", "run"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run already finished at step 3 of 3")
            && text.contains("--steps M with M greater than 3"),
        "{text}"
    );
    assert!(!text.contains("tokens/s"), "{text}");
    let j = run_json(&d, &["pretrain", "--resume", "run", "--json"]);
    assert_eq!(j["already_finished"], true);
    let j = run_json(
        &d,
        &["pretrain", "--resume", "run", "--steps", "4", "--json"],
    );
    assert_eq!(
        (j["steps"].as_u64(), j["already_finished"].as_bool()),
        (Some(4), Some(false))
    );
}

/// Issue 22, item 12: the end-of-run hints name programs that run: without `ember` on PATH (a
/// `cargo run` user), the binaries beside the running `ember-train`.
#[test]
fn hints_name_the_binaries_beside_ember_train_when_not_on_path() {
    let d = scratch("hints");
    let out = cmd(&d, &tiny_args(&["--steps", "2", "--out", "run"]))
        .env("PATH", d.join("empty-path"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = std::path::Path::new(bin()).parent().unwrap();
    for name in ["ember-train export", "ember generate"] {
        let want = format!("{}/{name}", dir.display());
        assert!(text.contains(&want), "{want:?} not in {text}");
    }
}

/// The standard deviation of a checkpoint's tensor, or `None` when the file lacks it.
fn tensor_std(dir: &std::path::Path, name: &str) -> Option<f64> {
    let bytes = final_model(dir);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).ok()?;
    let v: Vec<f64> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Some((v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
}

#[test]
fn untied_head_and_embedding_std_reach_a_fresh_llama() {
    let d = scratch("embedstd");
    // Issue 18: a Llama-style model trained from scratch learns past the unigram loss with its
    // own head and an embedding drawn N(0, 1), the default without a preset; --tied-head (and
    // the presets) tie the head and draw the embedding N(0, 0.02), as transformers.
    let fixed = ["--arch", "llama", "--steps", "1", "--lr", "1e-6", "--json"];
    for (flags, out) in [
        (&[][..], "default"),
        (&["--untied-head", "--embed-std", "0.5"][..], "half"),
        (&["--tied-head"][..], "tied"),
    ] {
        let mut a = tiny_args(&fixed);
        a.extend(flags);
        a.extend(["--out", out]);
        run_json(&d, &a);
    }
    // A few thousand draws: their std is within 10 % of the asked one.
    for (out, want) in [("default", 1.0), ("half", 0.5), ("tied", 0.02)] {
        let e = tensor_std(&d.join(out), "tok_emb.weight").unwrap();
        assert!(
            (e - want).abs() < 0.1 * want,
            "{out}: embedding std {e}, want {want}"
        );
    }
    for out in ["default", "half"] {
        let h = tensor_std(&d.join(out), "head.weight").expect("an own head");
        assert!((h - 0.02).abs() < 0.002, "{out}: head std {h}");
    }
    assert!(tensor_std(&d.join("tied"), "head.weight").is_none());
    // A wide embedding with a tied head, or the flags on GPT-2, are usage errors.
    for (extra, want) in [
        (
            &["--arch", "llama", "--tied-head", "--embed-std", "1"][..],
            "--untied-head",
        ),
        (
            &["--arch", "llama", "--tied-head", "--untied-head"][..],
            "not both",
        ),
        (&["--untied-head"][..], "modern families"),
        (&["--embed-std", "0.5"][..], "modern families"),
        (
            &["--arch", "llama", "--embed-std", "0"][..],
            "must be positive",
        ),
    ] {
        let mut a = tiny_args(extra);
        a.extend(["--steps", "1"]);
        let e = run_err(&d, &a, 2);
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}
