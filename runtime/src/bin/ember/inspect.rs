//! `ember inspect`: what a model (or tokenizer) file holds.

use super::*;

#[derive(FromArgs, Debug)]
/// Show a model file's metadata, tensors and sizes.
#[argh(subcommand, name = "inspect")]
pub(crate) struct InspectArgs {
    /// the model file (.ember)
    #[argh(positional)]
    model: PathBuf,
    /// print one JSON object
    #[argh(switch)]
    json: bool,
}

fn describe(v: &Value) -> String {
    let list = |n: usize, f: &dyn Fn(usize) -> String| {
        let shown: Vec<String> = (0..n.min(8)).map(f).collect();
        format!(
            "[{}{}] ({} items)",
            shown.join(", "),
            if n > 8 { ", …" } else { "" },
            n
        )
    };
    match v {
        Value::Str(s) if s.len() > 120 => {
            let cut = (0..=100)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            format!("{:?}… ({} bytes)", &s[..cut], s.len())
        }
        Value::Str(s) => format!("{s:?}"),
        Value::Bytes(b) => format!("<{} bytes>", b.len()),
        Value::Array(Array::Str(a)) => list(a.len(), &|i| format!("{:?}", a[i])),
        Value::Array(Array::U32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::U64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::I32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::I64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::F32(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::F64(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::Array(Array::Bool(a)) => list(a.len(), &|i| a[i].to_string()),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}

pub(crate) fn inspect(a: InspectArgs) -> Result<()> {
    let t0 = Instant::now();
    let model = open(&a.model)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let h = model.header();
    let cfg = model.config();
    let weights: u64 = h.tensors.iter().map(|t| t.numel()).sum();
    if a.json {
        let meta: Vec<String> = h
            .metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(&describe(v))))
            .collect();
        let tensors: Vec<String> = h
            .tensors
            .iter()
            .map(|t| {
                let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
                format!(
                    "{{\"name\":{},\"dtype\":\"{}\",\"shape\":[{}],\"bytes\":{}}}",
                    json_str(&t.name),
                    t.dtype.name(),
                    shape.join(","),
                    t.size
                )
            })
            .collect();
        println!(
            "{{\"file_bytes\":{},\"parameters\":{},\"bytes_per_token\":{},\"load_ms\":{},\"metadata\":{{{}}},\"tensors\":[{}]}}",
            model.file_size(),
            weights,
            model.bytes_per_token(),
            num(load_ms),
            meta.join(","),
            tensors.join(",")
        );
        return Ok(());
    }
    println!("{}", a.model.display());
    println!(
        "  GPT-2: {} layers, {} heads, dim {}, context {}, vocabulary {}, qkv bias {}, tied head {}",
        cfg.n_layers,
        cfg.n_heads,
        cfg.dim,
        cfg.context_length,
        cfg.vocab_size,
        cfg.qkv_bias,
        cfg.tied_head
    );
    if let Task::Classifier {
        labels,
        readout,
        pad_id,
        length,
    } = model.task()
    {
        let readout = match readout {
            Readout::Last => "last",
            Readout::LastReal => "last-real",
        };
        println!(
            "  classifier: {} labels {labels:?}, readout {readout}, length {}, pad id {pad_id}",
            labels.len(),
            length.map_or("none (context)".to_string(), |n| n.to_string())
        );
    }
    println!(
        "  {} tensors, {} parameters, {} bytes on disk, {} bytes read per token, opened in {:.2} ms",
        h.tensors.len(),
        weights,
        model.file_size(),
        model.bytes_per_token(),
        load_ms
    );
    println!("metadata:");
    for (k, v) in &h.metadata {
        println!("  {k:<28} {}", describe(v));
    }
    println!("tensors:");
    for t in &h.tensors {
        println!(
            "  {:<32} {:<4} {:<16} {:>12} bytes",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.size
        );
    }
    Ok(())
}
