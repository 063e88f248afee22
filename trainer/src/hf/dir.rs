//! A Hugging Face model directory: `config.json`, and the weights as one `model.safetensors` or as
//! shards listed by `model.safetensors.index.json`. Every shard's header is validated when the
//! directory is opened; tensor data is read on demand, one tensor at a time.

use super::ConvertError;
use super::config;
use crate::import::SafetensorsFile;
use emberlm_formats::config::ModelConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Index files larger than this are refused (real ones are a few hundred KiB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// More shards than this are refused.
const MAX_SHARDS: usize = 4096;

/// An opened Hugging Face model directory.
#[derive(Debug)]
pub struct HfDir {
    /// The directory.
    pub dir: PathBuf,
    /// The parsed configuration.
    pub config: ModelConfig,
    /// `config.json`'s `model_type`.
    pub model_type: String,
    /// `config.json` as read (other readers of the directory look things up in it).
    pub config_json: serde_json::Value,
    shards: Vec<SafetensorsFile>,
    /// Tensor name → shard index.
    where_is: BTreeMap<String, usize>,
}

/// Whether `dir` looks like a Hugging Face model directory (a `config.json` and weights, no
/// emberlm checkpoint state).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.is_dir()
        && dir.join("config.json").is_file()
        && !dir.join("trainer.json").exists()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// Reads a JSON file of at most `max` bytes.
pub(crate) fn read_json(path: &Path, max: u64) -> Result<serde_json::Value, ConvertError> {
    let io = |e: std::io::Error| ConvertError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > max {
        return Err(ConvertError::Json {
            path: path.display().to_string(),
            message: format!("{len} bytes is above the cap of {max}"),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&text).map_err(|e| ConvertError::Json {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl HfDir {
    /// Opens `dir`: parses `config.json`, opens every shard and checks that the index names only
    /// shards inside the directory and tensors those shards hold.
    pub fn open(dir: &Path) -> Result<HfDir, ConvertError> {
        let cfg_path = dir.join("config.json");
        let json = read_json(&cfg_path, 1 << 20)?;
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let config = config::parse(&json).map_err(ConvertError::Config)?;
        let index_path = dir.join("model.safetensors.index.json");
        let mut shards = Vec::new();
        let mut where_is = BTreeMap::new();
        if index_path.is_file() {
            let index = read_json(&index_path, MAX_INDEX_BYTES)?;
            let bad = |message: String| ConvertError::Json {
                path: index_path.display().to_string(),
                message,
            };
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
            let mut files: BTreeMap<String, usize> = BTreeMap::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("{name}: the shard is not a string")))?;
                // Shards must be plain file names in this directory.
                let plain = Path::new(file).file_name().and_then(|f| f.to_str()) == Some(file);
                if !plain || file.starts_with('.') {
                    return Err(bad(format!(
                        "{name}: shard {file:?} is not a file name inside the directory"
                    )));
                }
                let next = files.len();
                let i = *files.entry(file.to_string()).or_insert(next);
                if files.len() > MAX_SHARDS {
                    return Err(bad(format!("more than {MAX_SHARDS} shards")));
                }
                where_is.insert(name.clone(), i);
            }
            let mut ordered: Vec<(&String, &usize)> = files.iter().collect();
            ordered.sort_by_key(|(_, i)| **i);
            for (file, _) in ordered {
                shards.push(SafetensorsFile::open(&dir.join(file)).map_err(ConvertError::Import)?);
            }
            for (name, &i) in &where_is {
                if !shards[i].contains(name) {
                    return Err(bad(format!(
                        "{name} is listed in {} but that shard does not hold it",
                        shards[i].path().display()
                    )));
                }
            }
        } else {
            let f = SafetensorsFile::open(&dir.join("model.safetensors"))
                .map_err(ConvertError::Import)?;
            for name in f.names() {
                where_is.insert(name, 0);
            }
            shards.push(f);
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            model_type,
            config_json: json,
            shards,
            where_is,
        })
    }

    /// Every tensor name in the weights.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.where_is.keys().map(String::as_str)
    }

    /// The shard holding `name`.
    pub fn file(&self, name: &str) -> Option<&SafetensorsFile> {
        self.where_is.get(name).map(|&i| &self.shards[i])
    }

    /// The number of weight files.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}
