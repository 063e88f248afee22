//! `ember-train export`: a checkpoint, or a Hugging Face model directory, as a `.ember` file
//! (f32, f16, int8 or int4).

use super::{CliError, Console, ExportArgs, Outcome, failed};
use crate::export::{ExportDtype, ExportMeta, Keep, export_ember_keep};
use crate::{checkpoint, hf, import};
use crate::{note, say};
use emberlm_formats::meta::Task;
use serde_json::json;
use std::time::Instant;

/// `ember-train export CKPT --dtype f32|f16|int8|int4 [--keep-f16 NAME]... [--keep-int8 NAME]...
/// --out MODEL.ember`.
pub fn export(a: ExportArgs, con: &mut Console<'_>) -> Result<Outcome, CliError> {
    let dtype: ExportDtype = a
        .dtype
        .parse()
        .map_err(|e| CliError::Usage(format!("--dtype: {e}")))?;
    let keep = keep_of(&a, dtype)?;
    if hf::is_hf_dir(&a.checkpoint) {
        return export_hf(&a, dtype, &keep, con);
    }
    let l = checkpoint::load(&a.checkpoint, false).map_err(|e| failed(e.to_string()))?;
    let mut provenance = vec![
        ("source".to_string(), l.dir.display().to_string()),
        ("steps".to_string(), l.state.step.to_string()),
        ("tokens_seen".to_string(), l.state.tokens_seen.to_string()),
    ];
    if !l.state.data.is_empty() {
        let d: Vec<String> = l
            .state
            .data
            .iter()
            .map(|d| format!("{} ({})", d.path, d.hash))
            .collect();
        provenance.push(("data".to_string(), d.join(", ")));
    }
    if let Some(r) = l.state.history.last() {
        provenance.push(("val_loss".to_string(), r.val_loss.to_string()));
    }
    if let Some(fc) = &l.family {
        // A model of the modern families trained here: its tensors in file order.
        let model = crate::family::FamilyModel::from_params(fc, l.params.clone())
            .map_err(|e| failed(format!("{}: {e}", l.dir.display())))?;
        // An imported model's chat template and end-of-reply ids, from its `hf/`.
        let extras = checkpoint::hf_extras(&l.dir).map_err(|e| failed(e.to_string()))?;
        let t0 = Instant::now();
        let bytes = crate::export::export_family_ember_with(
            &a.out,
            fc,
            &model.tensors(),
            l.tokenizer.as_ref(),
            extras.as_ref(),
            None,
            dtype,
            &keep,
            &provenance,
        )
        .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
        note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
        say!(
            con,
            "{}: {} bytes ({:.1} MB, {}, {})",
            a.out.display(),
            bytes,
            bytes as f64 / 1e6,
            fc.arch.name(),
            dtype.name()
        );
        return Ok(Outcome {
            json: json!({"out": a.out, "bytes": bytes, "dtype": dtype.name(), "arch": fc.arch.name()}),
            exit_code: 0,
        });
    }
    let task = match &l.state.classifier {
        Some(c) => c.task().map_err(failed)?,
        None => Task::LanguageModel,
    };
    let meta = ExportMeta {
        config: l.config,
        task,
        prompt: None,
        tokenizer: l.tokenizer.as_ref(),
        provenance,
    };
    let mut offsets = std::collections::HashMap::new();
    let mut off = 0usize;
    for (name, shape) in checkpoint::tensor_shapes(&l.config, l.state.classifier.as_ref()) {
        let n: usize = shape.iter().product();
        offsets.insert(name, off..off + n);
        off += n;
    }
    let params = &l.params;
    let t0 = Instant::now();
    let bytes = export_ember_keep(&a.out, &meta, dtype, &keep, &|n| {
        offsets.get(n).and_then(|r| params.get(r.clone()))
    })
    .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
    note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
    say!(
        con,
        "{}: {} bytes ({:.1} MB, {})",
        a.out.display(),
        bytes,
        bytes as f64 / 1e6,
        dtype.name()
    );
    Ok(Outcome {
        json: json!({"out": a.out, "bytes": bytes, "dtype": dtype.name()}),
        exit_code: 0,
    })
}

/// A Hugging Face directory: GPT-2 through the importer (in memory, as `import` + `export` would),
/// the other families streamed tensor by tensor ([`hf::convert`]).
fn export_hf(
    a: &ExportArgs,
    dtype: ExportDtype,
    keep: &Keep,
    con: &mut Console<'_>,
) -> Result<Outcome, CliError> {
    let t0 = Instant::now();
    let cfg_json = hf::dir::read_json(&a.checkpoint.join("config.json"), 1 << 20)
        .map_err(|e| failed(e.to_string()))?;
    if cfg_json.get("model_type").and_then(|v| v.as_str()) == Some("gpt2") {
        let imp =
            import::import_safetensors(&a.checkpoint, None).map_err(|e| failed(e.to_string()))?;
        let meta = ExportMeta {
            config: imp.config,
            task: Task::LanguageModel,
            prompt: None,
            tokenizer: imp.tokenizer.as_ref(),
            provenance: vec![(
                "source".to_string(),
                format!("{} (Hugging Face gpt2)", imp.weights_path.display()),
            )],
        };
        let bytes = export_ember_keep(&a.out, &meta, dtype, keep, &|n| {
            imp.tensors.get(n).map(Vec::as_slice)
        })
        .map_err(|e| failed(format!("--out {}: {e}", a.out.display())))?;
        return finish(a, con, dtype, bytes, "gpt2", t0);
    }
    let dir = hf::HfDir::open(&a.checkpoint).map_err(|e| failed(e.to_string()))?;
    let done =
        hf::convert_keep(&dir, dtype, keep, &a.out, &mut |_| Ok(())).map_err(|e| match e {
            hf::ConvertError::Format(e) => failed(format!("--out {}: {e}", a.out.display())),
            e => failed(e.to_string()),
        })?;
    note!(
        con,
        "{}: {} ({} layers, dim {}, {} weight file{})",
        a.checkpoint.display(),
        dir.config.arch.name(),
        dir.config.n_layers,
        dir.config.dim,
        dir.shard_count(),
        if dir.shard_count() == 1 { "" } else { "s" }
    );
    for i in &done.ignored {
        note!(con, "left out: {i}");
    }
    finish(a, con, dtype, done.bytes, done.config.arch.name(), t0)
}

/// The `--keep-f16`, `--keep-int8` and `--keep-q6` names; the last two only with int4, `none`
/// alone.
fn keep_of(a: &ExportArgs, dtype: ExportDtype) -> Result<Keep, CliError> {
    let list = |option: &str, what: &str, given: &[String]| match given {
        [] => Ok(None),
        [n] if n == "none" => Ok(Some(Vec::new())),
        names if names.iter().any(|n| n == "none") => Err(CliError::Usage(format!(
            "--{option} none keeps no matrix at {what}: give it alone"
        ))),
        names => Ok(Some(names.to_vec())),
    };
    let int8 = list("keep-int8", "int8", &a.keep_int8)?;
    let q6 = list("keep-q6", "6 bits", &a.keep_q6)?;
    if (int8.is_some() || q6.is_some()) && dtype != ExportDtype::Int4 {
        let option = if int8.is_some() {
            "keep-int8"
        } else {
            "keep-q6"
        };
        return Err(CliError::Usage(format!(
            "--{option} applies to --dtype int4 only (this export is {})",
            dtype.name()
        )));
    }
    Ok(Keep {
        f16: a.keep_f16.clone(),
        int8,
        q6,
    })
}

fn finish(
    a: &ExportArgs,
    con: &mut Console<'_>,
    dtype: ExportDtype,
    bytes: u64,
    arch: &str,
    t0: Instant,
) -> Result<Outcome, CliError> {
    note!(con, "exported in {:.1}s", t0.elapsed().as_secs_f64());
    say!(
        con,
        "{}: {} bytes ({:.1} MB, {}, {arch})",
        a.out.display(),
        bytes,
        bytes as f64 / 1e6,
        dtype.name()
    );
    Ok(Outcome {
        json: json!({"out": a.out, "bytes": bytes, "dtype": dtype.name(), "arch": arch}),
        exit_code: 0,
    })
}
