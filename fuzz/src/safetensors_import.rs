//! The safetensors importer on untrusted files: `SafetensorsFile` (header, every tensor read whole
//! and in part, the recorded configuration), then `import_safetensors` and `import_to_safetensors`
//! on a directory holding `model.safetensors` and, when the input has them, `config.json`,
//! `vocab.json` and `merges.txt`.
//!
//! Input: the four files joined by [`SEP`] (missing parts: no such file).
//!
//! Properties checked on accepted inputs:
//! - a tensor read in two parts equals the tensor read whole;
//! - the in-memory import has every canonical tensor with the configuration's sizes;
//! - the streaming import (`import_to_safetensors`) writes the same values, bit for bit, and
//!   records the same configuration;
//! - exporting the import in the detected layout and importing that again gives the same
//!   configuration and the same bits (a tied book-layout model comes back untied, its head a
//!   copy of the token embedding: the book's layout always has `out_head.weight`).

use super::input::{put, scratch_dir, split};
use emberlm_trainer::export_safetensors::export_safetensors;
use emberlm_trainer::import::{Layout, SafetensorsFile, import_safetensors, import_to_safetensors};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Separates the files in an input.
pub const SEP: &[u8] = b"\n%%FILE%%\n";

/// The file names, in input order.
pub const FILES: [&str; 4] = [
    "model.safetensors",
    "config.json",
    "vocab.json",
    "merges.txt",
];

/// Largest tensor read whole by the raw-reader checks (values).
const MAX_READ: usize = 1 << 22;

fn bits(t: &BTreeMap<String, Vec<f32>>) -> BTreeMap<&str, Vec<u32>> {
    t.iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

/// The target's body.
pub fn run(data: &[u8]) {
    let dir = scratch_dir("safetensors_import");
    let parts = split(data, SEP, FILES.len());
    for (i, name) in FILES.iter().enumerate() {
        put(&dir.join(name), parts.get(i).copied());
    }
    let model = dir.join(FILES[0]);

    // The raw reader.
    if let Ok(f) = SafetensorsFile::open(&model) {
        for name in f.names() {
            let info = f.info(&name).expect("a listed name has an info");
            let numel: usize = info.shape.iter().product();
            if numel > MAX_READ {
                continue;
            }
            if let Ok(whole) = f.read_f32(&name) {
                assert_eq!(whole.len(), numel, "{name}");
                let half = numel / 2;
                let mut tail = vec![0f32; numel - half];
                f.read_f32_range(&name, half, &mut tail)
                    .expect("a readable tensor is readable in part");
                let same = tail
                    .iter()
                    .zip(&whole[half..])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name}: the tail read alone differs from the whole read"
                );
            }
            let mut past = [0f32; 1];
            assert!(f.read_f32_range(&name, numel, &mut past).is_err());
        }
        let _ = f.gpt_config();
        let _ = f.metadata();
    }

    // The importer, in memory.
    let Ok(imp) = import_safetensors(&dir, None) else {
        // The streaming import checks the same things first.
        let out = dir.join("canonical.safetensors");
        assert!(import_to_safetensors(&dir, &out, None).is_err());
        return;
    };
    assert!(imp.config.validate().is_ok());
    let shapes = imp.config.tensor_shapes();
    assert_eq!(imp.tensors.len(), shapes.len());
    for (name, shape) in &shapes {
        let n: usize = shape.iter().product();
        assert_eq!(imp.tensors.get(name).map(Vec::len), Some(n), "{name}");
    }

    // The importer, streaming to a canonical file.
    let out = dir.join("canonical.safetensors");
    let summary = import_to_safetensors(&dir, &out, None)
        .expect("the streaming import accepts what the in-memory import accepts");
    assert_eq!(summary.config, imp.config);
    let canon = SafetensorsFile::open(&out).expect("the canonical file is readable");
    assert_eq!(canon.gpt_config().ok().flatten(), Some(imp.config));
    let mut streamed = BTreeMap::new();
    for (name, _) in &shapes {
        streamed.insert(
            name.clone(),
            canon.read_f32(name).expect("canonical tensor"),
        );
    }
    assert!(
        bits(&streamed) == bits(&imp.tensors),
        "streamed import differs"
    );

    // Export in the detected layout, then import again.
    let rt = dir.join("roundtrip");
    export_safetensors(&imp.config, imp.layout, &rt, &mut |n| {
        imp.tensors.get(n).map(|v| Cow::Borrowed(v.as_slice()))
    })
    .expect("an imported model exports");
    let again = import_safetensors(&rt, None).expect("an exported model imports");
    // The book's layout always has `out_head.weight` (a copy of the token embedding when tied),
    // so a tied book-layout model comes back untied, with that copy.
    let mut expected_cfg = imp.config;
    let mut expected = imp.tensors.clone();
    if imp.layout == Layout::Book && imp.config.tied_head {
        expected_cfg.tied_head = false;
        let tok = expected["tok_emb.weight"].clone();
        expected.insert("out_head.weight".into(), tok);
    }
    assert_eq!(again.config, expected_cfg);
    assert_eq!(again.layout, imp.layout);
    assert!(
        bits(&again.tensors) == bits(&expected),
        "round trip differs"
    );
}
