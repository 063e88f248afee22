//! `ember inspect`: what a model (or tokenizer) file holds.

use super::*;

#[derive(FromArgs, Debug)]
/// Show a model file's metadata, tensors and sizes; or a tokenizer file's (from
/// `ember-train tokenizer`) vocabulary, merges and special tokens.
#[argh(subcommand, name = "inspect")]
pub(crate) struct InspectArgs {
    /// the model or tokenizer file (.ember)
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

/// `ember inspect` of a tokenizer-only file (`ember-train tokenizer`).
fn inspect_tokenizer(
    a: &InspectArgs,
    tok: &Tokenizer,
    h: &emberlm_formats::ember::Header,
) -> Result<()> {
    let specials: Vec<(&str, u32)> = tok.specials().collect();
    // Byte-level BPE: the 256 byte tokens, then one token per merge, then the special tokens.
    let merges = tok.vocab_size().saturating_sub(256 + specials.len());
    let bytes = std::fs::metadata(&a.model).map_or(0, |m| m.len());
    if a.json {
        let meta: serde_json::Map<String, serde_json::Value> = h
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), describe(v).into()))
            .collect();
        let special: serde_json::Map<String, serde_json::Value> = specials
            .iter()
            .map(|(n, id)| (n.to_string(), (*id).into()))
            .collect();
        let j = serde_json::json!({
            "kind": "tokenizer",
            "file_bytes": bytes,
            "vocab_size": tok.vocab_size(),
            "merges": merges,
            "special_tokens": special,
            "metadata": meta,
        });
        println!("{j}");
        return Ok(());
    }
    println!("{}", a.model.display());
    println!(
        "  tokenizer (no model): vocabulary {}, {merges} merges, {} special tokens, {bytes} bytes on disk",
        tok.vocab_size(),
        specials.len()
    );
    for (name, id) in &specials {
        println!("  special {name:<24} id {id}");
    }
    println!("metadata:");
    for (k, v) in &h.metadata {
        println!("  {k:<28} {}", describe(v));
    }
    Ok(())
}

pub(crate) fn inspect(a: InspectArgs) -> Result<()> {
    let t0 = Instant::now();
    let model = match open(&a.model) {
        Ok(m) => m,
        Err(e) => {
            return match tokenizer_file(&a.model) {
                Some((tok, h)) => inspect_tokenizer(&a, &tok, &h),
                None => Err(e),
            };
        }
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The whole header: the model's own leaves the tokenizer's tables out.
    let header = emberlm_formats::ember::EmberFile::parse(model.bytes())
        .map_err(|e| format!("{}: {e}", a.model.display()))?
        .header;
    let h = &header;
    let cfg = model.config();
    let weights: u64 = h.tensors.iter().map(|t| t.numel()).sum();
    if a.json {
        let meta: serde_json::Map<String, serde_json::Value> = h
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), describe(v).into()))
            .collect();
        let tensors: Vec<serde_json::Value> = h
            .tensors
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "bytes": t.size,
                })
            })
            .collect();
        let j = serde_json::json!({
            "kind": "model",
            "family": cfg.arch.name(),
            "config": config_json(cfg),
            "file_bytes": model.file_size(),
            "parameters": weights,
            "bytes_per_token": model.bytes_per_token(),
            "load_ms": load_ms,
            "metadata": meta,
            "tensors": tensors,
        });
        println!("{j}");
        return Ok(());
    }
    println!("{}", a.model.display());
    if !model.is_gpt2() {
        println!("  {}", family_line(cfg));
    } else {
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
    }
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

/// The family and its settings on one line (`ember inspect`, text).
fn family_line(cfg: &ModelConfig) -> String {
    let rope = cfg.rope.map_or("none".to_string(), |r| {
        format!(
            "θ {} (local {}), scaling {:?}",
            r.theta, r.local_theta, r.scaling
        )
    });
    let sliding = cfg.sliding.map_or("none".to_string(), |s| {
        format!("window {}, every {}-th layer global", s.window, s.every)
    });
    format!(
        "{}: {} layers, {} heads ({} key/value), head dim {}, dim {}, ffn {}, context {}, \
         vocabulary {}, mlp {:?}, norm eps {}, rope {rope}, sliding {sliding}, qkv bias {}, \
         qk norm {}, post norms {}, tied head {}, embed scale {}, query scale {}",
        cfg.arch.name(),
        cfg.n_layers,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.dim,
        cfg.ffn_dim,
        cfg.context_length,
        cfg.vocab_size,
        cfg.mlp,
        cfg.norm_eps,
        cfg.qkv_bias,
        cfg.qk_norm,
        cfg.post_norms,
        cfg.tied_head,
        cfg.embed_scale,
        cfg.query_scale
    )
}

/// Every setting of the configuration, for `ember inspect --json` (`config`).
fn config_json(cfg: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.context_length,
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_dim": cfg.ffn_dim,
        "norm": format!("{:?}", cfg.norm),
        "norm_eps": cfg.norm_eps,
        "mlp": format!("{:?}", cfg.mlp),
        "rope": cfg.rope.map(|r| serde_json::json!({
            "theta": r.theta,
            "local_theta": r.local_theta,
            "scaling": format!("{:?}", r.scaling),
        })),
        "qkv_bias": cfg.qkv_bias,
        "qk_norm": cfg.qk_norm,
        "post_norms": cfg.post_norms,
        "tied_head": cfg.tied_head,
        "embed_scale": cfg.embed_scale,
        "query_scale": cfg.query_scale,
        "sliding": cfg.sliding.map(|s| serde_json::json!({"window": s.window, "every": s.every})),
    })
}
