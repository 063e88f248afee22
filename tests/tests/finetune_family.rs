//! `finetune instruct` on an imported modern-family model with its own chat template: LoRA (and
//! full fine-tuning) learn to answer, the export carries the template, and `ember chat` — the
//! runtime, rendering the template with its own code — gives the trained answer.
//!
//! The model is chatml_util's tiny Qwen2 (a real tokenizer, a ChatML template, `<|im_end|>` as the
//! end of a reply). The data is one instruction repeated, so a few dozen steps memorise the reply.
//! Its head is the tied random embedding: adapters on the linear layers alone bring the reply's
//! loss from 10.3 to 2.4 but cannot lift `<|im_end|>` over every other row of that head, so the
//! LoRA test adapts the embedding (and with it the head) too.

mod chatml_util;
mod hostile_util;

use chatml_util::write_model;
use hostile_util::{bin, scratch};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const REPLY: &str = "the lord shall speak";

fn run(args: &[&str], dir: &Path) -> serde_json::Value {
    let o = Command::new(bin("ember-train"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ember-train {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Imports the model and writes the data; returns the checkpoint's path.
fn setup(d: &Path) {
    write_model(&d.join("hf"), "1002", false);
    run(&["import", "--from", "hf", "--out", "ckpt", "--json"], d);
    let items: Vec<serde_json::Value> = (0..20)
        .map(|_| serde_json::json!({"instruction": "Say it", "input": "", "output": REPLY}))
        .collect();
    std::fs::write(d.join("data.json"), serde_json::to_vec(&items).unwrap()).unwrap();
}

/// `ember chat --json` on one line; the answer's JSON.
fn chat(model: &Path, line: &str) -> serde_json::Value {
    let mut child = Command::new(bin("ember"))
        .arg("chat")
        .arg(model)
        .args(["--json", "--max-tokens", "12"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// LoRA's trainable parameters on every linear layer and the embedding at rank r, from
/// config.json's shapes: Σ r·(in + out) over q, k, v, o, gate, up, down of every layer, and
/// r·(V + C) for the embedding (the head is tied to it: its adapter adapts the head too).
fn lora_count(hf: &Path, r: u64) -> u64 {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    let get = |k: &str| c[k].as_u64().unwrap();
    let (d, f, l) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("num_hidden_layers"),
    );
    let hd = d / get("num_attention_heads");
    let (q, kv) = (
        get("num_attention_heads") * hd,
        get("num_key_value_heads") * hd,
    );
    let per_layer = (d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d);
    r * (per_layer * l + get("vocab_size") + d)
}

#[test]
fn lora_instruction_tuning_learns_the_reply_and_ember_chat_gives_it() {
    let dir = scratch("finetune-family-lora");
    let d: &Path = &dir;

    setup(d);
    let j = run(
        &[
            "finetune",
            "instruct",
            "--init",
            "ckpt",
            "--data",
            "data.json",
            "--out",
            "lora",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "all,emb",
            "--lr",
            "0.01",
            "--weight-decay",
            "0",
            "--batch",
            "4",
            "--epochs",
            "25",
            "--eval-every",
            "100",
            "--max-new-tokens",
            "12",
            "--mask-prompt",
            "--json",
        ],
        d,
    );
    assert_eq!(j["template"], "chat", "{j}");
    assert_eq!(
        j["trainable_params"].as_u64().unwrap(),
        lora_count(&d.join("hf"), 8),
        "{j}"
    );
    let (before, after) = (
        j["initial_val_loss"].as_f64().unwrap(),
        j["val_loss"].as_f64().unwrap(),
    );
    assert!(after < 0.1 * before, "val loss {before} -> {after}");
    let responses: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(d.join("lora/responses.json")).unwrap()).unwrap();
    assert_eq!(responses[0]["model_response"], REPLY, "{responses:?}");
    // The runtime renders the template itself and stops at <|im_end|>.
    let a = chat(&d.join("lora/model.ember"), "Say it");
    assert_eq!(a["text"], REPLY, "{a}");
    assert_eq!(a["stop"], "eos", "{a}");
}

#[test]
fn full_fine_tuning_of_a_family_checkpoint_learns_the_reply_too() {
    let dir = scratch("finetune-family-full");
    let d: &Path = &dir;
    setup(d);
    let j = run(
        &[
            "finetune",
            "instruct",
            "--init",
            "ckpt",
            "--data",
            "data.json",
            "--out",
            "full",
            "--lr",
            "0.003",
            "--weight-decay",
            "0",
            "--batch",
            "4",
            "--epochs",
            "10",
            "--eval-every",
            "100",
            "--max-new-tokens",
            "12",
            "--json",
        ],
        d,
    );
    assert_eq!(j["trainable_params"], j["parameters"], "{j}");
    let a = chat(&d.join("full/model.ember"), "Say it");
    assert_eq!(a["text"], REPLY, "{a}");
    // The checkpoint is a family checkpoint again: it exports, and continues to fine-tune.
    run(
        &[
            "export",
            "full",
            "--dtype",
            "int8",
            "--out",
            "again.ember",
            "--json",
        ],
        d,
    );
    let a = chat(&d.join("again.ember"), "Say it");
    assert_eq!(a["stop"], "eos", "{a}");
}

#[test]
fn alpaca_template_on_a_family_and_bad_template_flags() {
    let dir = scratch("finetune-family-flags");
    let d: &Path = &dir;
    setup(d);
    let o = Command::new(bin("ember-train"))
        .args([
            "finetune",
            "instruct",
            "--init",
            "ckpt",
            "--data",
            "data.json",
            "--out",
            "x",
            "--template",
            "jinja",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--template \"jinja\""));
    let j = run(
        &[
            "finetune",
            "instruct",
            "--init",
            "ckpt",
            "--data",
            "data.json",
            "--out",
            "alp",
            "--template",
            "alpaca",
            "--lora-rank",
            "2",
            "--lora-targets",
            "q_proj,v_proj",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        d,
    );
    assert_eq!(j["template"], "alpaca", "{j}");
    // q (48 → 48) and v (48 → 24) of 2 layers at rank 2.
    assert_eq!(
        j["trainable_params"],
        2 * 2 * ((48 + 48) + (48 + 24)),
        "{j}"
    );
}
