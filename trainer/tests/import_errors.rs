//! Import errors: each names the tensor, the expected and found shapes and the likely cause (the
//! book's readers' most common failures: a transposed weight, the context length, qkv bias), and
//! broken files give typed errors, never panics. Bad files are built at run time from the
//! committed fixtures with the `safetensors` crate.

use emberlm_trainer::import::{
    Hint, ImportError, Layout, import_safetensors, import_to_safetensors,
};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// name → (dtype, shape, little-endian bytes)
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// The Hugging Face and book fixtures, shared with the cross-crate parity tests in `tests/`.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn load(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

fn hf() -> Tensors {
    load(&fixtures().join("hf_tiny/model.safetensors"))
}

fn book() -> Tensors {
    load(&fixtures().join("book_tiny/qkv_bias/model.safetensors"))
}

fn hf_config() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("hf_tiny/config.json")).unwrap())
        .unwrap()
}

/// Writes `tensors` (and `config`) into a fresh directory named after the case, removed when the
/// returned guard drops (also when the test panics).
fn write(case: &str, tensors: &Tensors, config: Option<&serde_json::Value>) -> tempfile::TempDir {
    let tmp = tempdir(case);
    let dir = tmp.path();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    }
    tmp
}

/// A fresh, uniquely named directory `emberlm-imp-err-<name>-*` in the temp directory, removed
/// with everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-imp-err-{name}-"))
        .tempdir()
        .unwrap()
}

/// Transposes a 2-D F32 tensor in place (the bytes and the shape).
fn transpose(t: &mut (Dtype, Vec<usize>, Vec<u8>)) {
    let (r, c) = (t.1[0], t.1[1]);
    let mut out = vec![0u8; t.2.len()];
    for i in 0..r {
        for j in 0..c {
            let (src, dst) = ((i * c + j) * 4, (j * r + i) * 4);
            out[dst..dst + 4].copy_from_slice(&t.2[src..src + 4]);
        }
    }
    t.1 = vec![c, r];
    t.2 = out;
}

fn import_err(dir: &Path, heads: Option<usize>) -> ImportError {
    import_safetensors(dir, heads).unwrap_err()
}

#[test]
fn transposed_hugging_face_weight_says_transposed() {
    let mut t = hf();
    transpose(t.get_mut("transformer.h.1.mlp.c_fc.weight").unwrap());
    let tmp = write("hf-transposed", &t, Some(&hf_config()));
    let dir = tmp.path();
    let e = import_err(dir, None);
    assert_eq!(
        e,
        ImportError::Shape {
            name: "transformer.h.1.mlp.c_fc.weight".into(),
            expected: vec![48, 192],
            found: vec![192, 48],
            hint: Hint::Transposed {
                layout: Layout::HuggingFace
            },
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("h.1.mlp.c_fc.weight")
            && msg.contains("[192, 48]")
            && msg.contains("[48, 192]")
            && msg.contains("transposed"),
        "{msg}"
    );
}

#[test]
fn transposed_book_weight_says_transposed() {
    let mut t = book();
    transpose(t.get_mut("trf_blocks.0.ff.layers.2.weight").unwrap());
    let tmp = write("book-transposed", &t, None);
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, Some(4)),
        ImportError::Shape {
            name: "trf_blocks.0.ff.layers.2.weight".into(),
            expected: vec![48, 192],
            found: vec![192, 48],
            hint: Hint::Transposed {
                layout: Layout::Book
            },
        }
    );
}

#[test]
fn context_length_mismatch_says_context_length() {
    let mut cfg = hf_config();
    cfg["n_positions"] = 1024.into();
    let tmp = write("context", &hf(), Some(&cfg));
    let dir = tmp.path();
    let e = import_err(dir, None);
    assert_eq!(
        e,
        ImportError::Shape {
            name: "transformer.wpe.weight".into(),
            expected: vec![1024, 48],
            found: vec![32, 48],
            hint: Hint::ContextLength {
                config: 1024,
                file: 32
            },
        }
    );
    assert!(e.to_string().contains("context length"), "{e}");
}

#[test]
fn missing_or_missized_qkv_bias_says_qkv_bias() {
    // A Hugging Face file written from a model without q/k/v biases.
    let mut t = hf();
    t.remove("transformer.h.0.attn.c_attn.bias");
    let tmp = write("hf-no-bias", &t, Some(&hf_config()));
    let dir = tmp.path();
    let e = import_err(dir, None);
    assert_eq!(
        e,
        ImportError::MissingTensor {
            name: "transformer.h.0.attn.c_attn.bias".into(),
            hint: Some(Hint::QkvBias),
        }
    );
    assert!(e.to_string().contains("qkv_bias"), "{e}");

    // A c_attn bias of one third the size (only q's).
    let mut t = hf();
    let b = t.get_mut("transformer.h.1.attn.c_attn.bias").unwrap();
    b.1 = vec![48];
    b.2.truncate(48 * 4);
    let tmp = write("hf-short-bias", &t, Some(&hf_config()));
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::Shape {
            name: "transformer.h.1.attn.c_attn.bias".into(),
            expected: vec![144],
            found: vec![48],
            hint: Hint::QkvBias,
        }
    );

    // The book: a key bias missing in the second block.
    let mut t = book();
    t.remove("trf_blocks.1.att.W_key.bias");
    let tmp = write("book-missing-bias", &t, None);
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, Some(4)),
        ImportError::MissingTensor {
            name: "trf_blocks.1.att.W_key.bias".into(),
            hint: Some(Hint::QkvBias),
        }
    );

    // The book: biases only in the second block (block 0 says qkv_bias=False).
    let mut t = book();
    for n in ["W_query", "W_key", "W_value"] {
        t.remove(&format!("trf_blocks.0.att.{n}.bias"));
    }
    let tmp = write("book-stray-bias", &t, None);
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, Some(4)),
        ImportError::UnexpectedTensor {
            name: "trf_blocks.1.att.W_key.bias".into(),
            hint: Some(Hint::QkvBias),
        }
    );
}

#[test]
fn vocabulary_and_untied_head_mismatches_are_explained() {
    let mut cfg = hf_config();
    cfg["vocab_size"] = 50257.into();
    let tmp = write("vocab", &hf(), Some(&cfg));
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::Shape {
            name: "transformer.wte.weight".into(),
            expected: vec![50257, 48],
            found: vec![97, 48],
            hint: Hint::Vocabulary {
                config: 50257,
                file: 97
            },
        }
    );

    let mut cfg = hf_config();
    cfg["tie_word_embeddings"] = false.into();
    let tmp = write("untied", &hf(), Some(&cfg));
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::MissingTensor {
            name: "lm_head.weight".into(),
            hint: Some(Hint::UntiedHead),
        }
    );
}

#[test]
fn configuration_problems_name_the_field() {
    // n_layer disagrees with the blocks in the file.
    let mut cfg = hf_config();
    cfg["n_layer"] = 3.into();
    let tmp = write("n-layer", &hf(), Some(&cfg));
    let dir = tmp.path();
    match import_err(dir, None) {
        ImportError::Config(m) => {
            assert!(m.contains("n_layer is 3") && m.contains("2 blocks"), "{m}")
        }
        e => panic!("{e:?}"),
    }

    // Another activation.
    let mut cfg = hf_config();
    cfg["activation_function"] = "relu".into();
    let tmp = write("act", &hf(), Some(&cfg));
    let dir = tmp.path();
    match import_err(dir, None) {
        ImportError::Config(m) => assert!(m.contains("activation_function \"relu\""), "{m}"),
        e => panic!("{e:?}"),
    }

    // The book's files do not record the heads, and 48 is not a GPT-2 width.
    let tmp = write("heads", &book(), None);
    let dir = tmp.path();
    match import_err(dir, None) {
        ImportError::Config(m) => assert!(m.contains("--heads") && m.contains("emb_dim 48"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn foreign_tensors_and_dtypes_are_refused() {
    // A classification head would be dropped silently: refuse it.
    let mut t = hf();
    t.insert(
        "score.weight".into(),
        (Dtype::F32, vec![2, 48], vec![0; 2 * 48 * 4]),
    );
    let tmp = write("foreign", &t, Some(&hf_config()));
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::UnexpectedTensor {
            name: "score.weight".into(),
            hint: None
        }
    );

    let mut t = hf();
    t.get_mut("transformer.ln_f.bias").unwrap().0 = Dtype::I32;
    let tmp = write("dtype", &t, Some(&hf_config()));
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::Dtype {
            name: "transformer.ln_f.bias".into(),
            dtype: "I32".into()
        }
    );

    let mut t = Tensors::new();
    t.insert("encoder.weight".into(), (Dtype::F32, vec![2], vec![0; 8]));
    let tmp = write("layout", &t, None);
    let dir = tmp.path();
    assert_eq!(
        import_err(dir, None),
        ImportError::UnknownLayout {
            sample: vec!["encoder.weight".into()]
        }
    );
}

/// Hugging Face's hub files carry `h.N.attn.bias` mask buffers and (sometimes) a tied
/// `lm_head.weight`; both are skipped and reported. F16 and BF16 sources import too.
#[test]
fn buffers_tied_heads_and_half_precision_are_accepted() {
    let mut t: Tensors = hf()
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("transformer.").to_string(), v))
        .collect();
    for i in 0..2 {
        t.insert(
            format!("h.{i}.attn.bias"),
            (Dtype::U8, vec![1, 1, 32, 32], vec![1; 1024]),
        );
    }
    let wte = t["wte.weight"].clone();
    t.insert("lm_head.weight".into(), wte);
    // ln_f in F16 and BF16: values that both represent exactly.
    let halves: Vec<f32> = (0..48).map(|i| 1.0 + i as f32 / 64.0).collect();
    let f16b: Vec<u8> = halves
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16b: Vec<u8> = halves
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    t.insert("ln_f.weight".into(), (Dtype::F16, vec![48], f16b));
    t.insert("ln_f.bias".into(), (Dtype::BF16, vec![48], bf16b));
    let tmp = write("hub", &t, Some(&hf_config()));
    let dir = tmp.path();
    let mut imp = import_safetensors(dir, None).unwrap();
    imp.ignored.sort();
    assert_eq!(
        imp.ignored,
        vec!["h.0.attn.bias", "h.1.attn.bias", "lm_head.weight"]
    );
    assert!(imp.config.tied_head);
    assert_eq!(imp.tensors["final_norm.scale"], halves);
    assert_eq!(imp.tensors["final_norm.shift"], halves);
}

#[test]
fn broken_files_give_typed_errors_and_leave_no_output() {
    let tmp = tempdir("broken");
    let dir = tmp.path();
    let good = std::fs::read(fixtures().join("hf_tiny/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "short",
            good[..5].to_vec(),
            "shorter than the 8-byte header length",
        ),
        (
            "huge-header",
            [u64::MAX.to_le_bytes().as_slice(), &good[8..]].concat(),
            "above the cap",
        ),
        (
            "past-end",
            [(good.len() as u64).to_le_bytes().as_slice(), &good[8..]].concat(),
            "runs past the end",
        ),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "bytes of tensor data but the file holds",
        ),
        (
            "trailing",
            [good.as_slice(), &[0u8; 4]].concat(),
            "bytes of tensor data but the file holds",
        ),
        (
            "bad-json",
            [&good[..8], &vec![b'x'; n][..], &good[8 + n..]].concat(),
            "header:",
        ),
    ];
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    for (case, bytes, want) in cases {
        let path = dir.join(format!("{case}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        match import_safetensors(&path, None) {
            Err(ImportError::Safetensors { path: p, message }) => {
                assert!(p.ends_with(&format!("{case}.safetensors")), "{case}: {p}");
                assert!(message.contains(want), "{case}: {message}");
            }
            other => panic!("{case}: {other:?}"),
        }
        // The streaming import fails the same way and leaves the previous output alone.
        assert!(import_to_safetensors(&path, &out, None).is_err(), "{case}");
        assert_eq!(std::fs::read(&out).unwrap(), b"previous", "{case}");
    }
    // A shape error is found before anything is written.
    let mut t = hf();
    transpose(t.get_mut("transformer.h.0.attn.c_proj.weight").unwrap()); // square: not detectable
    transpose(t.get_mut("transformer.h.0.mlp.c_proj.weight").unwrap());
    let bad_tmp = write("atomic", &t, Some(&hf_config()));
    let bad = bad_tmp.path();
    assert!(matches!(
        import_to_safetensors(bad, &out, None),
        Err(ImportError::Shape {
            hint: Hint::Transposed { .. },
            ..
        })
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A missing path names it.
    match import_safetensors(&dir.join("nope"), None) {
        Err(ImportError::Io { path, .. }) => assert!(path.ends_with("nope")),
        other => panic!("{other:?}"),
    }
}
