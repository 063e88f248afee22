//! What the parity suites against transformers share: the expected outputs a fixture script
//! wrote (`expected.json`: tokens, logits, loss, greedy continuation), logits token by token, the
//! mean next-token loss and the logit error relative to the largest |logit|.
#![allow(dead_code)]

use emberlm_runtime::{Model, Session, SessionOptions};
use std::path::Path;

/// A fixture's `expected.json`.
pub struct Expected {
    pub tokens: Vec<u32>,
    pub loss: f64,
    pub logits: Vec<Vec<f32>>,
    pub greedy_prompt: Vec<u32>,
    pub greedy_tokens: Vec<u32>,
}

/// The `expected.json` of fixture directory `dir`.
pub fn expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| {
        j[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    Expected {
        tokens: ids("tokens"),
        loss: j["loss"].as_f64().unwrap(),
        logits: j["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
        greedy_prompt: ids("greedy_prompt"),
        greedy_tokens: ids("greedy_tokens"),
    }
}

/// A fresh directory `emberlm-<name>-*` in the temp directory, removed when the guard drops.
pub fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("emberlm-{name}-"))
        .tempdir()
        .unwrap()
}

/// Logits at every position, fed one token at a time.
pub fn stepwise_logits(model: &Model<'_>, tokens: &[u32], opts: &SessionOptions) -> Vec<Vec<f32>> {
    let mut s = Session::new(model, opts).unwrap();
    tokens
        .iter()
        .map(|&t| s.step(t).unwrap().to_vec())
        .collect()
}

pub fn loss(logits: &[Vec<f32>], tokens: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &target) in logits.iter().zip(&tokens[1..]) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        total += lse - row[target as usize] as f64;
    }
    total / (tokens.len() - 1) as f64
}

pub fn max_rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}
