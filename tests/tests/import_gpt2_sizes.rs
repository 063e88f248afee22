//! GPT-2 at its real sizes: the shape tables of the four sizes against parameter counts that
//! PyTorch computed (tests/fixtures/book_tiny/param_counts.json, written by make_book_tiny.py, and
//! the book's printed counts), a random GPT-2 124M-shaped Hugging Face file built at run time and
//! imported by streaming, and (ignored by default: 13 GB of disk) the peak memory of importing a
//! 1558M-shaped file.

use emberlm_formats::config::GptConfig;
use emberlm_trainer::export_safetensors::{hf_config_json, write_safetensors_f32};
use emberlm_trainer::import::{Layout, SafetensorsFile, import_to_safetensors, layout_shapes};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIZES: [&str; 4] = ["124m", "355m", "774m", "1558m"];

fn counts() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/book_tiny/param_counts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn total(shapes: &[(String, Vec<usize>)]) -> usize {
    shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

fn openai(size: &str) -> GptConfig {
    GptConfig {
        qkv_bias: true,
        tied_head: true,
        ..GptConfig::preset(size).unwrap()
    }
}

#[test]
fn shape_tables_of_the_four_sizes_match_pytorch_and_the_book() {
    let c = counts();
    // The book's printed totals (ch04): untied head, no qkv bias.
    let book_printed = [163_009_536usize, 406_212_608, 838_220_800, 1_637_792_000];
    for (size, printed) in SIZES.into_iter().zip(book_printed) {
        let book = GptConfig::preset(size).unwrap();
        let n = total(&layout_shapes(&book, Layout::Book));
        assert_eq!(n, printed, "{size} book");
        assert_eq!(
            n as u64,
            c["book"][size].as_u64().unwrap(),
            "{size} book (PyTorch)"
        );
        assert_eq!(book.param_count(), n, "{size} canonical");

        let with_bias = GptConfig {
            qkv_bias: true,
            ..book
        };
        let n = total(&layout_shapes(&with_bias, Layout::Book));
        assert_eq!(
            n as u64,
            c["book_qkv_bias"][size].as_u64().unwrap(),
            "{size} book qkv_bias"
        );

        // OpenAI's weights in transformers: qkv bias, tied head (counted once).
        let hf = openai(size);
        let n = total(&layout_shapes(&hf, Layout::HuggingFace));
        assert_eq!(n as u64, c["hf"][size].as_u64().unwrap(), "{size} hf");
        assert_eq!(hf.param_count(), n, "{size} canonical tied");
    }
    // transformers' GPT2LMHeadModel().num_parameters(), checked by make_book_tiny.py.
    assert_eq!(
        total(&layout_shapes(&openai("124m"), Layout::HuggingFace)),
        124_439_808
    );
}

#[test]
fn hugging_face_124m_names_and_shapes_are_what_save_pretrained_writes() {
    let want: BTreeMap<String, Vec<usize>> = counts()["hf_safetensors_tensors"]["124m"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let shape = e[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (e[0].as_str().unwrap().to_string(), shape.collect())
        })
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = layout_shapes(&openai("124m"), Layout::HuggingFace)
        .into_iter()
        .collect();
    assert_eq!(ours, want);
}

/// A fresh, uniquely named directory `emberlm-imp-<name>-*` in the temp directory, removed with
/// everything in it when the returned guard drops (also when the test panics).
fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-imp-{name}-"))
        .tempdir()
        .unwrap()
}

/// The canonical (name, index) a value of a Hugging Face tensor goes to, worked out here from
/// Hugging Face's conventions (Conv1D [in, out] → [out, in]), independently of the importer.
fn canonical_of(hf: &str) -> (String, bool) {
    let map = |s: &str| -> String {
        match s {
            "ln_1.weight" => "norm1.scale",
            "ln_1.bias" => "norm1.shift",
            "ln_2.weight" => "norm2.scale",
            "ln_2.bias" => "norm2.shift",
            "attn.c_attn.weight" => "att.qkv.weight",
            "attn.c_attn.bias" => "att.qkv.bias",
            "attn.c_proj.weight" => "att.proj.weight",
            "attn.c_proj.bias" => "att.proj.bias",
            "mlp.c_fc.weight" => "ff.fc.weight",
            "mlp.c_fc.bias" => "ff.fc.bias",
            "mlp.c_proj.weight" => "ff.proj.weight",
            "mlp.c_proj.bias" => "ff.proj.bias",
            other => panic!("{other}"),
        }
        .to_string()
    };
    match hf {
        "wte.weight" => ("tok_emb.weight".into(), false),
        "wpe.weight" => ("pos_emb.weight".into(), false),
        "ln_f.weight" => ("final_norm.scale".into(), false),
        "ln_f.bias" => ("final_norm.shift".into(), false),
        _ => {
            let rest = hf.strip_prefix("h.").unwrap();
            let (i, s) = rest.split_once('.').unwrap();
            (
                format!("blocks.{i}.{}", map(s)),
                s.ends_with("weight") && !s.starts_with("ln"),
            )
        }
    }
}

/// A random 124M GPT-2 in the hub's layout (no `transformer.` prefix, f16 here to save time and
/// disk, with the old `h.N.attn.bias` mask buffers), built from the names and shapes PyTorch
/// reported, written with the `safetensors` crate, imported by streaming, and checked value by
/// value.
#[test]
fn random_gpt2_124m_hugging_face_file_imports_every_tensor() {
    let tmp = tempdir("124m");
    let dir = tmp.path();
    let mut rng = emberlm_testkit::Rng(0x9e37_79b9_7f4a_7c15);
    let mut source: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for e in counts()["hf_safetensors_tensors"]["124m"]
        .as_array()
        .unwrap()
    {
        let name = e[0]
            .as_str()
            .unwrap()
            .trim_start_matches("transformer.")
            .to_string();
        let shape: Vec<usize> = e[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|_| half::f16::from_f32(rng.small_f32()).to_le_bytes())
            .collect();
        source.insert(name, (shape, bytes));
    }
    let mask: Vec<u8> = (0..1024 * 1024).flat_map(|_| 1f32.to_le_bytes()).collect();
    let mut views: Vec<(String, TensorView<'_>)> = source
        .iter()
        .map(|(n, (s, b))| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    for i in 0..12 {
        views.push((
            format!("h.{i}.attn.bias"),
            TensorView::new(Dtype::F32, vec![1, 1, 1024, 1024], &mask).unwrap(),
        ));
    }
    let src_dir = dir.join("gpt2");
    std::fs::create_dir_all(&src_dir).unwrap();
    safetensors::serialize_to_file(views, None, &src_dir.join("model.safetensors")).unwrap();
    std::fs::write(
        src_dir.join("config.json"),
        hf_config_json(&openai("124m")).to_string(),
    )
    .unwrap();

    let out = dir.join("model.safetensors");
    let summary = import_to_safetensors(&src_dir, &out, None).unwrap();
    assert_eq!(summary.config, openai("124m"));
    assert_eq!(summary.layout, Layout::HuggingFace);
    assert_eq!(summary.parameters, 124_439_808);
    let mut ignored = summary.ignored.clone();
    ignored.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("h.{i}.attn.bias")).collect();
    want.sort();
    assert_eq!(ignored, want);

    // Every canonical name and shape, and nothing else (read by the safetensors crate).
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut got: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype(), Dtype::F32, "{n}");
            (n, t.shape().to_vec())
        })
        .collect();
    got.sort();
    let mut expect = GptConfig::tensor_shapes(&openai("124m"));
    expect.sort();
    assert_eq!(got, expect);

    // Every value where Hugging Face's conventions put it.
    for (name, (shape, raw)) in &source {
        let (canon, conv1d) = canonical_of(name);
        let t = st.tensor(&canon).unwrap();
        let data = t.data();
        let value = |k: usize| f32::from_le_bytes(data[4 * k..4 * k + 4].try_into().unwrap());
        let cols = if conv1d { shape[1] } else { 1 };
        let rows = if conv1d { shape[0] } else { 1 };
        for (k, h) in raw.chunks_exact(2).enumerate() {
            let want = half::f16::from_le_bytes([h[0], h[1]]).to_f32();
            let at = if conv1d {
                (k % cols) * rows + k / cols
            } else {
                k
            };
            assert!(value(at) == want, "{name}[{k}] -> {canon}[{at}]");
        }
    }
}

/// Peak resident memory of the streaming import of a 1558M-shaped Hugging Face file (6.4 GB of
/// f32). Ignored by default (about 13 GB of disk and a few minutes):
///
/// ```text
/// cargo test -p emberlm-tests --test import_gpt2_sizes -- --ignored --nocapture import_1558m
/// ```
///
/// The file is written into `$EMBER_BIG_DIR` (default: the temp dir) and removed at the end unless
/// `EMBER_BIG_KEEP` is set. The import runs in a child process (this test binary, re-run with
/// `EMBER_RSS_CHILD=DIR`), which reports its VmHWM; to measure it from outside as well run
/// `EMBER_RSS_CHILD=DIR /usr/bin/time -v <test binary> --exact import_1558m_peak_rss --ignored`.
#[test]
#[ignore = "writes and reads 13 GB; run with --ignored to measure the streaming import's peak RSS"]
fn import_1558m_peak_rss() {
    /// The bound asserted: a sixth of the 6.4 GB of weights (a few tensors at most).
    const MAX_PEAK_BYTES: u64 = 1 << 30;
    if let Some(src) = std::env::var_os("EMBER_RSS_CHILD") {
        let src = PathBuf::from(src);
        let t = std::time::Instant::now();
        let s = import_to_safetensors(&src, &src.join("imported.safetensors"), None).unwrap();
        println!(
            "imported {} tensors, {} parameters, {} bytes in {:.1} s",
            s.tensors,
            s.parameters,
            s.bytes,
            t.elapsed().as_secs_f64()
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        println!("CHILD {hwm}");
        return;
    }
    let base = std::env::var_os("EMBER_BIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // Removed when `tmp` drops (also when the test panics), unless EMBER_BIG_KEEP is set.
    let keep = std::env::var_os("EMBER_BIG_KEEP").is_some();
    let tmp = tempfile::Builder::new()
        .prefix("emberlm-imp-1558m-")
        .disable_cleanup(keep)
        .tempdir_in(&base)
        .unwrap();
    let dir = tmp.path();
    if keep {
        println!("EMBER_BIG_KEEP: the files stay in {}", dir.display());
    }
    let cfg = openai("1558m");
    let shapes = layout_shapes(&cfg, Layout::HuggingFace);
    let t = std::time::Instant::now();
    let mut rng = emberlm_testkit::Rng(0x2545_f491_4f6c_dd1d);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let src = dir.join("model.safetensors");
    let bytes = write_safetensors_f32(&src, &meta, &shapes, |i, w| {
        let n: usize = shapes[i].1.iter().product();
        let mut buf = Vec::with_capacity(1 << 20);
        let mut left = n;
        while left > 0 {
            let k = left.min(1 << 20);
            buf.clear();
            buf.extend((0..k).map(|_| rng.small_f32()));
            emberlm_formats::ember::write_f32s(w, &buf)?;
            left -= k;
        }
        Ok(())
    })
    .unwrap();
    std::fs::write(dir.join("config.json"), hf_config_json(&cfg).to_string()).unwrap();
    println!(
        "wrote a 1558M-shaped file: {bytes} bytes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "import_1558m_peak_rss",
            "--ignored",
            "--nocapture",
        ])
        .env("EMBER_RSS_CHILD", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kb: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    println!(
        "peak RSS of the import: {:.1} MiB for {:.2} GB of weights",
        kb as f64 / 1024.0,
        bytes as f64 / 1e9
    );
    assert!(kb * 1024 < MAX_PEAK_BYTES, "peak RSS {kb} kB");

    // Spot checks: an embedding row copied, a Conv1D weight transposed.
    let a = SafetensorsFile::open(&src).unwrap();
    let b = SafetensorsFile::open(&dir.join("imported.safetensors")).unwrap();
    let mut x = vec![0.0; 1600];
    let mut y = vec![0.0; 1600];
    a.read_f32_range("transformer.wte.weight", 50256 * 1600, &mut x)
        .unwrap();
    b.read_f32_range("tok_emb.weight", 50256 * 1600, &mut y)
        .unwrap();
    assert_eq!(x, y);
    let (mut u, mut v) = ([0.0f32], [0.0f32]);
    // c_fc [in=1600, out=6400]: element (i=7, j=6399) is canonical row 6399, column 7.
    a.read_f32_range("transformer.h.47.mlp.c_fc.weight", 7 * 6400 + 6399, &mut u)
        .unwrap();
    b.read_f32_range("blocks.47.ff.fc.weight", 6399 * 1600 + 7, &mut v)
        .unwrap();
    assert_eq!(u, v);
}
