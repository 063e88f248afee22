//! `ember-train export HF_DIR` for the modern families: every tensor of the `.ember` equals the
//! safetensors value read by the `safetensors` crate (Gemma's norms + 1), the configuration
//! equals config.json's, and damaged directories give typed errors naming what is wrong.

use emberlm_formats::ember::{EmberFile, MappedFile, TensorData};
use emberlm_formats::meta;
use emberlm_trainer::export::ExportDtype;
use emberlm_trainer::hf::{self, ConvertError, HfDir};
use emberlm_trainer::safetensors_io::write_safetensors_f32;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/families")
        .join(name)
}

/// Every f32 tensor of the directory's shards, by Hugging Face name.
fn read_all(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                assert_eq!(view.dtype(), safetensors::Dtype::F32);
                let v = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                out.insert(name, (view.shape().to_vec(), v));
            }
        }
    }
    out
}

/// An ember name, its Hugging Face name (after the base prefix; `!` for a root name), and whether
/// Gemma's (1 + w) applies.
type Pair = (&'static str, &'static str, bool);

#[test]
fn every_tensor_is_the_hugging_face_value() {
    let tmp = tempfile::tempdir().unwrap();
    let names: [(&str, &str, &[Pair]); 3] = [
        (
            "llama",
            "model.",
            &[
                ("tok_emb.weight", "embed_tokens.weight", false),
                (
                    "blocks.1.attn.k.weight",
                    "layers.1.self_attn.k_proj.weight",
                    false,
                ),
                (
                    "blocks.0.mlp_norm.weight",
                    "layers.0.post_attention_layernorm.weight",
                    false,
                ),
                ("head.weight", "!lm_head.weight", false),
            ],
        ),
        (
            "qwen2",
            "model.",
            &[
                (
                    "blocks.0.attn.v.bias",
                    "layers.0.self_attn.v_proj.bias",
                    false,
                ),
                ("final_norm.weight", "norm.weight", false),
            ],
        ),
        (
            "gemma3",
            "model.",
            &[
                (
                    "blocks.3.attn_post_norm.weight",
                    "layers.3.post_attention_layernorm.weight",
                    true,
                ),
                (
                    "blocks.2.mlp_norm.weight",
                    "layers.2.pre_feedforward_layernorm.weight",
                    true,
                ),
                (
                    "blocks.0.attn.q_norm.weight",
                    "layers.0.self_attn.q_norm.weight",
                    true,
                ),
                (
                    "blocks.1.mlp.gate.weight",
                    "layers.1.mlp.gate_proj.weight",
                    false,
                ),
            ],
        ),
    ];
    for (family, prefix, pairs) in names {
        let dir = fixture(family);
        let hf = HfDir::open(&dir).unwrap();
        let out = tmp.path().join(format!("{family}.ember"));
        let done = hf::convert(&hf, ExportDtype::F32, &out, &mut |_| Ok(())).unwrap();
        let map = MappedFile::open(&out).unwrap();
        let file = EmberFile::parse(map.bytes()).unwrap();
        assert_eq!(meta::get_model_config(&file.header).unwrap(), done.config);
        assert_eq!(file.header.tensors.len(), done.tensors);
        let source = read_all(&dir);
        // Every tensor of the file but a tied head was used.
        let tied = usize::from(done.config.tied_head && source.contains_key("lm_head.weight"));
        assert_eq!(source.len(), done.tensors + tied, "{family}");
        for &(ember, hf_name, plus_one) in pairs {
            let hf_name = match hf_name.strip_prefix('!') {
                Some(root) => root.to_string(),
                None => format!("{prefix}{hf_name}"),
            };
            let (shape, want) = &source[&hf_name];
            let e = file.header.tensor(ember).unwrap();
            assert_eq!(e.shape, shape.iter().map(|&d| d as u64).collect::<Vec<_>>());
            let TensorData::F32(got) = file.data(e).unwrap() else {
                panic!("{ember} is not f32");
            };
            for (g, w) in got.iter().zip(want) {
                let w = if plus_one { w + 1.0 } else { *w };
                assert_eq!(g.to_bits(), w.to_bits(), "{family} {ember}");
            }
        }
    }
}

/// A copy of a fixture directory to damage.
fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

/// Rewrites `dir/model.safetensors` with `edit` applied to its tensor list.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
    let mut all = read_all(dir);
    edit(&mut all);
    let shapes: Vec<(String, Vec<usize>)> = all
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    let values: Vec<&Vec<f32>> = all.values().map(|(_, v)| v).collect();
    write_safetensors_f32(
        &dir.join("model.safetensors"),
        &BTreeMap::new(),
        &shapes,
        |i, w| {
            for v in values[i] {
                w.write_all(&v.to_le_bytes())?;
            }
            Ok(())
        },
    )
    .unwrap();
}

fn convert_err(dir: &Path) -> ConvertError {
    let out = dir.join("out.ember");
    let r =
        HfDir::open(dir).and_then(|hf| hf::convert(&hf, ExportDtype::F16, &out, &mut |_| Ok(())));
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    r.unwrap_err()
}

#[test]
fn damaged_directories_give_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let d = copy_fixture("qwen2", &t.join("missing"));
    rewrite(&d, |m| {
        m.remove("model.norm.weight");
    });
    let e = convert_err(&d);
    assert!(
        matches!(&e, ConvertError::MissingTensor { name, .. } if name == "model.norm.weight"),
        "{e}"
    );

    let d = copy_fixture("qwen2", &t.join("extra"));
    rewrite(&d, |m| {
        m.insert(
            "model.layers.0.mlp.experts.0.w1.weight".into(),
            (vec![2], vec![0.0, 1.0]),
        );
    });
    let e = convert_err(&d);
    assert!(
        matches!(&e, ConvertError::UnexpectedTensor { name } if name.contains("experts")),
        "{e}"
    );

    let d = copy_fixture("qwen3", &t.join("shape"));
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 80", "\"intermediate_size\": 81"),
    )
    .unwrap();
    let e = convert_err(&d);
    assert!(
        matches!(&e, ConvertError::Shape { name, .. } if name.contains("mlp")),
        "{e}"
    );

    let d = copy_fixture("qwen3", &t.join("family"));
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"qwen3\"", "\"qwen3_moe\""),
    )
    .unwrap();
    let e = convert_err(&d);
    assert!(
        e.to_string().contains("model_type") && e.to_string().contains("qwen3_moe"),
        "{e}"
    );

    let d = copy_fixture("llama", &t.join("index"));
    let index = std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap();
    let evil = index.replacen(
        "\"model-00001-of-00004.safetensors\"",
        "\"../model-00001-of-00004.safetensors\"",
        1,
    );
    std::fs::write(d.join("model.safetensors.index.json"), evil).unwrap();
    let e = convert_err(&d);
    assert!(
        matches!(&e, ConvertError::Json { message, .. } if message.contains("not a file name")),
        "{e}"
    );

    let d = copy_fixture("gemma3", &t.join("truncated"));
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    assert!(matches!(convert_err(&d), ConvertError::Import(_)));

    let d = copy_fixture("gemma3", &t.join("json"));
    std::fs::write(d.join("config.json"), "{\"model_type\": \"gemma3_text\", ").unwrap();
    assert!(matches!(convert_err(&d), ConvertError::Json { .. }));
}

#[test]
fn chat_template_and_end_of_reply_tokens_travel_into_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("qwen2", tmp.path());
    let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                  {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let tc = serde_json::json!({
        "chat_template": chatml,
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": "<|endoftext|>",
    });
    std::fs::write(d.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        d.join("generation_config.json"),
        r#"{"eos_token_id": [3, 7], "bos_token_id": 1}"#,
    )
    .unwrap();
    let out = tmp.path().join("q.ember");
    hf::convert(
        &HfDir::open(&d).unwrap(),
        ExportDtype::F16,
        &out,
        &mut |_| Ok(()),
    )
    .unwrap();
    let map = MappedFile::open(&out).unwrap();
    let h = EmberFile::parse(map.bytes()).unwrap().header;
    let chat = meta::get_chat_template(&h).unwrap().unwrap();
    assert_eq!(chat.source, chatml);
    assert_eq!(chat.special.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(chat.special.pad_token.as_deref(), Some("<|endoftext|>"));
    let g = meta::get_generation(&h, 101).unwrap();
    assert_eq!((g.eos_ids, g.bos_id), (vec![3, 7], Some(1)));

    // A template that does not compile, and an id beyond the vocabulary, are refused.
    std::fs::write(d.join("chat_template.jinja"), "{% for m in messages %}").unwrap();
    assert!(convert_err(&d).to_string().contains("chat_template"));
    std::fs::remove_file(d.join("chat_template.jinja")).unwrap();
    std::fs::write(d.join("generation_config.json"), r#"{"eos_token_id": 101}"#).unwrap();
    assert!(convert_err(&d).to_string().contains("101"));
}

/// `tokenizer.json` travels into the file (a tokenizer of 1003 ids on the tiny Qwen2 with its
/// embedding grown to 1003 rows, as real checkpoints pad their vocabulary); one with more ids than
/// the model is refused.
#[test]
fn tokenizer_json_travels_into_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = copy_fixture("qwen2", tmp.path());
    let tok_src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../formats/tests/fixtures/hf_tokenizers/qwen2.json");
    std::fs::copy(&tok_src, d.join("tokenizer.json")).unwrap();
    assert!(
        convert_err(&d)
            .to_string()
            .contains("more than the model's vocabulary of 101")
    );
    rewrite(&d, |m| {
        let (shape, v) = m.get_mut("model.embed_tokens.weight").unwrap();
        shape[0] = 1003;
        v.resize(1003 * shape[1], 0.01);
    });
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"vocab_size\": 101", "\"vocab_size\": 1003"),
    )
    .unwrap();
    let out = tmp.path().join("q.ember");
    hf::convert(
        &HfDir::open(&d).unwrap(),
        ExportDtype::F32,
        &out,
        &mut |_| Ok(()),
    )
    .unwrap();
    let map = MappedFile::open(&out).unwrap();
    let h = EmberFile::parse(map.bytes()).unwrap().header;
    let stored = meta::get_tokenizer(&h).unwrap().unwrap();
    let direct = emberlm_formats::tokenizer::Tokenizer::from_hf_json_file(&tok_src).unwrap();
    let text = "Hello, world! 1234 naïve   spaces\n日本";
    let special = emberlm_formats::tokenizer::SpecialTokens::Allow;
    assert_eq!(
        stored.encode_to_vec(text, special),
        direct.encode_to_vec(text, special)
    );
    assert_eq!(stored.vocab_size(), direct.vocab_size());
}
