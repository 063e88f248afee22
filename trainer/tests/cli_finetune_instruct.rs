//! `ember-train finetune instruct` through the real binary: Ctrl-C (issue 22, item 6). The rest
//! of the command is tested in process by `tests/tests/finetune_instruct.rs`.

mod cli_util;

use cli_util::{KillOnDrop, cmd, run_json, scratch};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// The first Ctrl-C says at once that the run is stopping, saves the model so far with its
/// curves, names them, and exits 130; the checkpoint loads.
#[test]
fn ctrl_c_saves_the_model_so_far_and_exits_130() {
    let d = scratch("instruct-sigint");
    // A GPT-2-vocabulary model (instruction tuning pads and stops with <|endoftext|>).
    let text: String = (0..200)
        .map(|i| format!("the cat sat on mat number {i} and then it slept. "))
        .collect();
    std::fs::write(d.join("lm.txt"), text).unwrap();
    run_json(
        &d,
        &[
            "pretrain",
            "--data",
            "lm.txt",
            "--layers",
            "1",
            "--heads",
            "2",
            "--dim",
            "16",
            "--context",
            "32",
            "--batch",
            "2",
            "--steps",
            "1",
            "--out",
            "lm",
            "--json",
        ],
    );
    let entries: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Count to {i}."),
                "input": "",
                "output": format!("{i}."),
            })
        })
        .collect();
    std::fs::write(d.join("a.json"), serde_json::to_string(&entries).unwrap()).unwrap();
    let mut child = KillOnDrop::new(
        cmd(
            &d,
            &[
                "finetune",
                "instruct",
                "--init",
                "lm",
                "--data",
                "a.json",
                "--out",
                "ft",
                "--epochs",
                "100000",
                "--batch",
                "2",
                "--eval-every",
                "1000000",
                "--json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
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
    let text = rest.join("\n");
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("Ctrl-C: stopping"), "{text}");
    assert!(text.contains("saved the model so far"), "{text}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["interrupted"], true, "{j}");
    let ck = j["checkpoint"].as_str().unwrap();
    let l = emberlm_trainer::checkpoint::load(&d.join(ck), false).unwrap();
    assert_eq!(l.state.step, j["steps"].as_u64().unwrap());
    assert!(d.join("ft/loss.csv").is_file());
}
