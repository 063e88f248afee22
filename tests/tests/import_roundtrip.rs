//! Import → export → import round trips for both layouts (bit-identical), the exported files
//! compared byte for byte with the PyTorch-written fixtures through the `safetensors` crate (not
//! emberlm's reader), streaming import == in-memory import, and the exported config.json files.

use emberlm_formats::config::GptConfig;
use emberlm_trainer::export_safetensors::{export_safetensors, export_safetensors_from_file};
use emberlm_trainer::import::{
    Imported, Layout, SafetensorsFile, import_safetensors, import_to_safetensors,
};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fresh, uniquely named directory `emberlm-imp-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-imp-{name}-"))
        .tempdir()
        .unwrap()
}

/// (fixture dir, heads to pass, layout)
fn sources() -> Vec<(PathBuf, Option<usize>, Layout)> {
    vec![
        (fixtures().join("hf_tiny"), None, Layout::HuggingFace),
        (fixtures().join("book_tiny/plain"), Some(4), Layout::Book),
        (fixtures().join("book_tiny/qkv_bias"), Some(4), Layout::Book),
    ]
}

fn export_in_memory(imp: &Imported, layout: Layout, dir: &Path) {
    export_safetensors(&imp.config, layout, dir, &mut |n| {
        imp.tensors.get(n).map(|v| Cow::Borrowed(v.as_slice()))
    })
    .unwrap();
}

/// Bit patterns, so that -0.0 / NaN payload differences count.
fn bits(t: &BTreeMap<String, Vec<f32>>) -> BTreeMap<String, Vec<u32>> {
    t.iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// Every tensor of a safetensors file as (dtype, shape, raw bytes), read by the `safetensors` crate.
fn raw_tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                (
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            )
        })
        .collect()
}

#[test]
fn import_export_import_is_bit_identical_for_both_layouts() {
    for (src, heads, layout) in sources() {
        let a = import_safetensors(&src, heads).unwrap();
        assert_eq!(a.layout, layout);
        let tmp = tempdir(&format!(
            "rt-{}",
            src.file_name().unwrap().to_string_lossy()
        ));
        let dir = tmp.path();
        export_in_memory(&a, layout, dir);
        // No --heads needed the second time: config.json beside the export records them.
        let b = import_safetensors(dir, None).unwrap();
        assert_eq!(b.layout, layout, "{}", src.display());
        assert_eq!(b.config, a.config, "{}", src.display());
        assert!(bits(&b.tensors) == bits(&a.tensors), "{}", src.display());
    }
}

/// The export writes exactly the tensors PyTorch wrote (same names, F32, shapes, bytes), minus
/// the book's mask buffers, which the export leaves out by design.
#[test]
fn exports_equal_the_pytorch_written_files_tensor_for_tensor() {
    for (src, heads, layout) in sources() {
        let imp = import_safetensors(&src, heads).unwrap();
        let tmp = tempdir(&format!(
            "bytes-{}",
            src.file_name().unwrap().to_string_lossy()
        ));
        let dir = tmp.path();
        export_in_memory(&imp, layout, dir);
        let mut original = raw_tensors(&src.join("model.safetensors"));
        original.retain(|k, _| !k.ends_with("att.mask"));
        let exported = raw_tensors(&dir.join("model.safetensors"));
        assert_eq!(
            exported.keys().collect::<Vec<_>>(),
            original.keys().collect::<Vec<_>>(),
            "{}",
            src.display()
        );
        for (k, v) in &original {
            assert!(exported[k] == *v, "{}: {k}", src.display());
        }
        // PyTorch tools look for this entry.
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
    }
}

#[test]
fn streaming_import_writes_what_the_in_memory_import_returns() {
    for (src, heads, _) in sources() {
        let imp = import_safetensors(&src, heads).unwrap();
        let tmp = tempdir(&format!(
            "stream-{}",
            src.file_name().unwrap().to_string_lossy()
        ));
        let dir = tmp.path();
        let out = dir.join("model.safetensors");
        let summary = import_to_safetensors(&src, &out, heads).unwrap();
        assert_eq!(summary.config, imp.config);
        assert_eq!(summary.layout, imp.layout);
        assert_eq!(summary.ignored, imp.ignored);
        assert_eq!(summary.tensors, imp.config.tensor_shapes().len());
        assert_eq!(summary.parameters, imp.config.param_count());
        assert_eq!(summary.bytes, std::fs::metadata(&out).unwrap().len());
        // Read back by the safetensors crate: canonical names, shapes and f32 values, in order.
        let written = raw_tensors(&out);
        assert_eq!(written.len(), imp.tensors.len());
        for (name, shape) in imp.config.tensor_shapes() {
            let (dtype, s, data) = &written[&name];
            assert_eq!((dtype.as_str(), s), ("F32", &shape), "{name}");
            let values: Vec<u32> = data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let want: Vec<u32> = imp.tensors[&name].iter().map(|x| x.to_bits()).collect();
            assert!(values == want, "{name}");
        }
        // The configuration travels in __metadata__ ...
        let file = SafetensorsFile::open(&out).unwrap();
        assert_eq!(file.gpt_config().unwrap(), Some(imp.config));
        assert_eq!(
            file.names(),
            imp.config
                .tensor_shapes()
                .into_iter()
                .map(|x| x.0)
                .collect::<Vec<_>>()
        );
        // ... so the file exports without being told it, streaming, to the same bytes as the
        // in-memory export.
        for layout in [Layout::HuggingFace, Layout::Book] {
            let a = dir.join(format!("mem-{}", layout.name()));
            let b = dir.join(format!("file-{}", layout.name()));
            export_in_memory(&imp, layout, &a);
            export_safetensors_from_file(&out, None, layout, &b).unwrap();
            for f in ["model.safetensors", "config.json"] {
                assert!(
                    std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
                    "{} {layout:?} {f}",
                    src.display()
                );
            }
        }
    }
}

#[test]
fn cross_layout_exports_keep_the_function() {
    // Hugging Face (tied, qkv bias) → book: out_head is a copy of tok_emb, every weight equal.
    let hf = import_safetensors(&fixtures().join("hf_tiny"), None).unwrap();
    let tmp = tempdir("cross");
    let dir = tmp.path();
    export_in_memory(&hf, Layout::Book, &dir.join("book"));
    let book = import_safetensors(&dir.join("book"), None).unwrap();
    assert_eq!(book.layout, Layout::Book);
    assert!(book.config.qkv_bias);
    assert!(
        !book.config.tied_head,
        "the book's GPTModel keeps a separate out_head"
    );
    assert_eq!(
        book.tensors["out_head.weight"],
        hf.tensors["tok_emb.weight"]
    );
    for (k, v) in &hf.tensors {
        assert!(book.tensors[k] == *v, "{k}");
    }
    // The book without qkv bias (untied) → Hugging Face: zero c_attn biases, an lm_head.
    let plain = import_safetensors(&fixtures().join("book_tiny/plain"), Some(4)).unwrap();
    export_in_memory(&plain, Layout::HuggingFace, &dir.join("hf"));
    let back = import_safetensors(&dir.join("hf"), None).unwrap();
    assert_eq!(back.layout, Layout::HuggingFace);
    assert!(back.config.qkv_bias && !back.config.tied_head);
    for (k, v) in &back.tensors {
        match plain.tensors.get(k) {
            Some(p) => assert!(p == v, "{k}"),
            None => {
                assert!(k.ends_with("att.qkv.bias"), "{k}");
                assert!(v.iter().all(|&x| x == 0.0), "{k}");
            }
        }
    }
}

#[test]
fn exported_config_json_files_say_what_pytorch_needs() {
    let cfg = GptConfig {
        qkv_bias: true,
        tied_head: true,
        ..GptConfig::preset("124m").unwrap()
    };
    // The JSON builders for OpenAI's 124M configuration.
    let hf = emberlm_trainer::export_safetensors::hf_config_json(&cfg);
    for (k, v) in [
        ("n_embd", 768u64),
        ("n_layer", 12),
        ("n_head", 12),
        ("n_positions", 1024),
        ("vocab_size", 50257),
        ("eos_token_id", 50256),
    ] {
        assert_eq!(hf[k].as_u64(), Some(v), "{k}");
    }
    assert_eq!(hf["activation_function"], "gelu_new");
    assert_eq!(hf["layer_norm_epsilon"].as_f64(), Some(1e-5));
    assert_eq!(hf["tie_word_embeddings"], true);
    assert_eq!(hf["model_type"], "gpt2");
    assert_eq!(hf["architectures"][0], "GPT2LMHeadModel");
    let book = emberlm_trainer::export_safetensors::book_config_json(&cfg);
    assert_eq!(book["emb_dim"], 768);
    assert_eq!(book["n_heads"], 12);
    assert_eq!(book["n_layers"], 12);
    assert_eq!(book["context_length"], 1024);
    assert_eq!(book["qkv_bias"], true);

    // The files on disk: an untied model says so.
    let plain = import_safetensors(&fixtures().join("book_tiny/plain"), Some(4)).unwrap();
    let tmp = tempdir("cfgjson");
    let dir = tmp.path();
    export_in_memory(&plain, Layout::HuggingFace, dir);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(j["tie_word_embeddings"], false);
    assert_eq!(j["n_head"], 4);
    assert_eq!(j["n_positions"], 32);
    assert!(
        j["eos_token_id"].is_null(),
        "vocabulary of 97: no GPT-2 end token"
    );
}

/// Writes every fixture in both layouts for tests/fixtures/check_export_loads.py, which loads them
/// with transformers and the book's GPTModel. With `EMBER_EXPORT_DIR` set the directories are
/// written there and kept (`DIR/<fixture>-<layout>/`); otherwise into a temp dir, then removed.
#[test]
fn exports_for_the_pytorch_load_check() {
    // `_tmp` removes the temp dir when it drops (also when the test panics).
    let (base, _tmp) = match std::env::var_os("EMBER_EXPORT_DIR") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempdir("for-check");
            (t.path().to_path_buf(), Some(t))
        }
    };
    for (src, heads, _) in sources() {
        let imp = import_safetensors(&src, heads).unwrap();
        let name = src.file_name().unwrap().to_string_lossy().to_string();
        for layout in [Layout::HuggingFace, Layout::Book] {
            let dir = base.join(format!("{name}-{}", layout.name()));
            export_in_memory(&imp, layout, &dir);
            assert!(dir.join("model.safetensors").is_file() && dir.join("config.json").is_file());
        }
    }
}
