//! `ember chat` on a converted Hugging Face model: its own chat template renders the conversation
//! (the session holds exactly the rendered conversation plus the answers), and answers stop at the
//! ids of `generation_config.json`'s `eos_token_id`.
//!
//! The model is the tiny Qwen2 of tests/fixtures/families with the small Qwen2 tokenizer.json of
//! the formats tests (its embedding grown to the tokenizer's 1003 ids) and a ChatML template. Its
//! final norm is zeroed, so every logit is 0 and greedy decoding always picks id 0: with 0 among
//! the end ids the answer stops at once ("eos"), without it the answer runs to --max-tokens.

mod hostile_util;

use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_formats::meta::SpecialStrings;
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_trainer::safetensors_io::write_safetensors_f32;
use hostile_util::{bin, scratch};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn tokenizer_json() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../formats/tests/fixtures/hf_tokenizers/qwen2.json")
}

/// Writes the Hugging Face directory with `eos` as generation_config's eos_token_id.
fn write_model(dir: &Path, eos: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families/qwen2");
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut shape = view.shape().to_vec();
        let mut v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if name == "model.embed_tokens.weight" {
            shape[0] = 1003;
            v.extend((v.len()..1003 * shape[1]).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3));
        }
        if name == "model.norm.weight" {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
        tensors.push((name, shape, v));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: Vec<(String, Vec<usize>)> =
        tensors.iter().map(|t| (t.0.clone(), t.1.clone())).collect();
    write_safetensors_f32(
        &dir.join("model.safetensors"),
        &BTreeMap::new(),
        &shapes,
        |i, w| {
            tensors[i]
                .2
                .iter()
                .try_for_each(|x| w.write_all(&x.to_le_bytes()))
        },
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"vocab_size\": 101", "\"vocab_size\": 1003"),
    )
    .unwrap();
    std::fs::copy(tokenizer_json(), dir.join("tokenizer.json")).unwrap();
    let tc = serde_json::json!({"chat_template": CHATML, "eos_token": "<|im_end|>"});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        format!("{{\"eos_token_id\": {eos}}}"),
    )
    .unwrap();
}

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
    write_model(&d.join("stops"), "[1002, 0]");
    write_model(&d.join("runs"), "1002");
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
