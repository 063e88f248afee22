//! `ember chat` on a converted Hugging Face model: its own chat template renders the conversation
//! (the session holds exactly the rendered conversation plus the answers), and answers stop at the
//! ids of `generation_config.json`'s `eos_token_id`.
//!
//! The model is chatml_util's tiny Qwen2 with a real tokenizer and a ChatML template. Its
//! final norm is zeroed, so every logit is 0 and greedy decoding always picks id 0: with 0 among
//! the end ids the answer stops at once ("eos"), without it the answer runs to --max-tokens.

mod chatml_util;
mod hostile_util;

use chatml_util::{CHATML, tokenizer_json, write_model};
use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_formats::meta::SpecialStrings;
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use hostile_util::{bin, scratch};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `ember chat --json` on `lines`; returns one JSON object per answer.
fn chat(model: &Path, lines: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut child = Command::new(bin("ember"))
        .arg("chat")
        .arg(model)
        .args(["--json", "--max-tokens", "4", "--system", "Be brief."])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn chat_renders_the_models_template_and_stops_at_its_end_ids() {
    let dir = scratch("chat-template");
    let d: &Path = &dir;
    let export = |name: &str| {
        let o = Command::new(bin("ember-train"))
            .arg("export")
            .arg(d.join(name))
            .args(["--dtype", "f32", "--out"])
            .arg(d.join(format!("{name}.ember")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        d.join(format!("{name}.ember"))
    };
    write_model(&d.join("stops"), "[1002, 0]", true);
    write_model(&d.join("runs"), "1002", true);
    let (stops, runs) = (export("stops"), export("runs"));

    // id 0 is an end id: both answers stop at once, empty.
    let answers = chat(&stops, "Hello there\nAnd again\n", &[]);
    assert_eq!(answers.len(), 2);
    for a in &answers {
        assert_eq!(a["stop"], "eos", "{a}");
        assert_eq!(a["generated_tokens"], 0, "{a}");
    }

    // id 0 is not: the answers run to --max-tokens, and the session holds the rendered
    // conversation (system, user, the first answer's text, user, generation prompt) plus the
    // second answer's tokens.
    let answers = chat(&runs, "Hello there\nAnd again\n", &[]);
    assert_eq!(answers[0]["stop"], "length", "{}", answers[0]);
    assert_eq!(answers[0]["tokens"], serde_json::json!([0, 0, 0, 0]));
    let tok = Tokenizer::from_hf_json_file(tokenizer_json()).unwrap();
    let template = ChatTemplate::new(CHATML, SpecialStrings::default()).unwrap();
    let first_answer = answers[0]["text"].as_str().unwrap();
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hello there"),
        Message::new("assistant", first_answer),
        Message::new("user", "And again"),
    ];
    let rendered = template.render(&conversation, true).unwrap();
    let want = tok.encode_to_vec(&rendered, SpecialTokens::Allow).len() + 4;
    assert_eq!(answers[1]["context_tokens"], want, "{}", answers[1]);
    let first = template.render(&conversation[..2], true).unwrap();
    assert_eq!(
        answers[0]["context_tokens"],
        tok.encode_to_vec(&first, SpecialTokens::Allow).len() + 4
    );
}
