//! A loaded model: the validated header and typed views of every weight, read in place from a
//! memory map or a borrowed byte slice. Loading copies and converts no tensor data.
//!
//! Letters: V vocabulary, T context, C embedding dim, L layers, H heads, K classes, Hkv key/value
//! heads, D head dim, F a gated MLP's hidden units.
//!
//! Every family loads through [`meta::get_model_config`]: GPT-2 blocks resolve into [`Layer`]
//! (fused q/k/v, LayerNorm with shifts, biases), the other families' into [`Block`] (separate
//! q/k/v, RMSNorm scales, optional biases, q/k norms and post norms, gate/up/down). Which tensors
//! a block has comes from the family's description (`arch::tensors`), never from names here.

use crate::error::RuntimeError;
use crate::kernels::{Kernels, Q4Matrix, Q6Matrix, Q8Matrix};
use emberlm_formats::arch::Arch;
use emberlm_formats::arch::{self, Role};
use emberlm_formats::config::ModelConfig;
use emberlm_formats::ember::{DType, EmberFile, FormatError, Header, TensorData, TensorEntry};
use emberlm_formats::meta::{self, PromptTemplate, Task};
use emberlm_formats::tokenizer::Tokenizer;

pub use crate::kernels::Mat;

impl Mat<'_> {
    /// y (R) = W x (C), on the kernels' threads.
    pub fn matvec(&self, k: &Kernels, x: &[f32], y: &mut [f32]) {
        match *self {
            Mat::F32(w) => k.matvec_f32(w, x, y),
            Mat::F16(w) => k.matvec_f16(w, x, y),
            Mat::Q8(w) => k.matvec_q8(w, x, y),
            Mat::Q4(w) => k.matvec_q4(w, x, y),
            Mat::Q6(w) => k.matvec_q6(w, x, y),
        }
    }

    /// y = W x as int8 decode computes it where W is int8, int4 or int6: x quantized to int8
    /// blocks into `xq`, `xd` (at least C and C / 32 long), then the SIMD int × int8 kernel on
    /// this thread; f32 and f16 weights as [`Mat::matvec`]. Prefill's last-token logits use it:
    /// the int6 head of an int4 file has no fast kernel for f32 inputs, and its reference one
    /// took as long as the rest of a GPT-2 prefill's products (`perf`, 2026-12-05).
    pub fn matvec_int8_input(
        &self,
        k: &Kernels,
        x: &[f32],
        (xq, xd): (&mut [i8], &mut [f32]),
        y: &mut [f32],
    ) {
        let c = x.len();
        let (xq, xd) = (
            &mut xq[..c],
            &mut xd[..c.div_ceil(crate::kernels::Q8_BLOCK)],
        );
        match *self {
            Mat::Q8(w) => {
                k.quantize_q8(x, xq, xd);
                k.matvec_q8q8_rows(w, xq, xd, y, 0)
            }
            Mat::Q4(w) => {
                k.quantize_q8(x, xq, xd);
                k.matvec_q4q8_rows(w, xq, xd, y, 0)
            }
            Mat::Q6(w) => {
                k.quantize_q8(x, xq, xd);
                k.matvec_q6q8_rows(w, xq, xd, y, 0)
            }
            Mat::F32(_) | Mat::F16(_) => self.matvec(k, x, y),
        }
    }

    /// Row `r` as f32 into `out` (C), e.g. an embedding lookup.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let c = out.len();
        match *self {
            Mat::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Mat::F16(w) => {
                for (o, h) in out.iter_mut().zip(&w[r * c..(r + 1) * c]) {
                    *o = h.to_f32();
                }
            }
            Mat::Q8(w) => w.dequantize_row(r, out),
            Mat::Q4(w) => w.dequantize_row(r, out),
            Mat::Q6(w) => w.dequantize_row(r, out),
        }
    }
}

/// Where a tensor lives in the file: resolved once at load, viewed on use.
#[derive(Clone, Copy, Debug)]
struct Slot {
    index: usize,
    rows: usize,
    cols: usize,
}

#[derive(Clone, Copy, Debug)]
struct LayerSlots {
    norm1: (Slot, Slot),
    qkv_w: Slot,
    qkv_b: Option<Slot>,
    proj_w: Slot,
    proj_b: Slot,
    norm2: (Slot, Slot),
    fc_w: Slot,
    fc_b: Slot,
    fcp_w: Slot,
    fcp_b: Slot,
}

/// One GPT-2 block's weights (the other families': [`Block`]).
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    /// LayerNorm 1 scale and shift (C).
    pub norm1: (&'a [f32], &'a [f32]),
    /// Fused q, k, v projection (3C, C).
    pub qkv_w: Mat<'a>,
    /// Its bias (3C), if the model has one.
    pub qkv_b: Option<&'a [f32]>,
    /// Attention output projection (C, C).
    pub proj_w: Mat<'a>,
    /// Its bias (C).
    pub proj_b: &'a [f32],
    /// LayerNorm 2 scale and shift (C).
    pub norm2: (&'a [f32], &'a [f32]),
    /// Feed-forward expansion (4C, C).
    pub fc_w: Mat<'a>,
    /// Its bias (4C).
    pub fc_b: &'a [f32],
    /// Feed-forward projection (C, 4C).
    pub fcp_w: Mat<'a>,
    /// Its bias (C).
    pub fcp_b: &'a [f32],
}

#[derive(Clone, Copy, Debug)]
struct BlockSlots {
    attn_norm: Slot,
    q: Slot,
    k: Slot,
    v: Slot,
    q_bias: Option<Slot>,
    k_bias: Option<Slot>,
    v_bias: Option<Slot>,
    q_norm: Option<Slot>,
    k_norm: Option<Slot>,
    out: Slot,
    attn_post_norm: Option<Slot>,
    mlp_norm: Slot,
    gate: Slot,
    up: Slot,
    down: Slot,
    mlp_post_norm: Option<Slot>,
}

/// One block of a Llama-style family (Llama, Qwen2, Qwen3, Gemma 3). Norms are RMSNorm scales
/// (Gemma's 1 + w already added in the file).
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    /// The norm before attention (C).
    pub attn_norm: &'a [f32],
    /// Query projection (H·D, C).
    pub q: Mat<'a>,
    /// Key projection (Hkv·D, C).
    pub k: Mat<'a>,
    /// Value projection (Hkv·D, C).
    pub v: Mat<'a>,
    /// Query bias (H·D) (Qwen2).
    pub q_bias: Option<&'a [f32]>,
    /// Key bias (Hkv·D) (Qwen2).
    pub k_bias: Option<&'a [f32]>,
    /// Value bias (Hkv·D) (Qwen2).
    pub v_bias: Option<&'a [f32]>,
    /// Per-head query norm scale (D) (Qwen3, Gemma 3).
    pub q_norm: Option<&'a [f32]>,
    /// Per-head key norm scale (D) (Qwen3, Gemma 3).
    pub k_norm: Option<&'a [f32]>,
    /// Attention output projection (C, H·D).
    pub out: Mat<'a>,
    /// Norm of the attention output before the residual add (C) (Gemma 3).
    pub attn_post_norm: Option<&'a [f32]>,
    /// The norm before the MLP (C).
    pub mlp_norm: &'a [f32],
    /// Gate projection (F, C).
    pub gate: Mat<'a>,
    /// Up projection (F, C).
    pub up: Mat<'a>,
    /// Down projection (C, F).
    pub down: Mat<'a>,
    /// Norm of the MLP output before the residual add (C) (Gemma 3).
    pub mlp_post_norm: Option<&'a [f32]>,
}

/// The metadata keys a [`Model`] does not keep in its [`Model::header`]: the tokenizer's
/// vocabulary and merges, megabytes that only [`Model::tokenizer`] reads (from the file).
///
/// Opening a model parses past them without copying them
/// ([`emberlm_formats::ember::parse_header_except`]: their framing, lengths and bounds are
/// checked as every other value's, so a file that lies about them is refused at open), and builds
/// nothing from them. Their contents (token ends in order and inside the token bytes, merge ids
/// inside the vocabulary) are checked when the tokenizer is first asked for, which then returns
/// a typed error, every time it is asked, and never panics. A model run on token ids never pays
/// for its tokenizer: opening Llama 3's 3.6 MB of tables took 2–76 ms on a loaded host, skipping
/// them takes none of that.
pub const TOKENIZER_TABLES: [&str; 3] = [
    "tokenizer.tokens",
    "tokenizer.token_ends",
    "tokenizer.merges",
];

enum Storage<'a> {
    #[cfg(feature = "mmap")]
    Mapped(emberlm_formats::ember::MappedFile),
    Borrowed(&'a [u8]),
}

/// A validated model. `Model<'static>` from [`Model::open`] owns its memory map; `Model<'a>` from
/// [`Model::from_bytes`] borrows the caller's bytes. Share one model between sessions and threads
/// by reference (`Model` is `Sync`).
pub struct Model<'a> {
    storage: Storage<'a>,
    header: Header,
    config: ModelConfig,
    task: Task,
    prompt: Option<PromptTemplate>,
    tok_emb: Slot,
    pos_emb: Option<Slot>,
    /// GPT-2's blocks (empty for the other families).
    layers: Vec<LayerSlots>,
    /// The other families' blocks (empty for GPT-2).
    blocks: Vec<BlockSlots>,
    final_norm: (Slot, Option<Slot>),
    head_w: Slot,
    head_b: Option<Slot>,
    tokenizer: std::sync::OnceLock<Result<Option<Tokenizer>, FormatError>>,
}

impl std::fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("task", &self.task)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

#[cfg(feature = "mmap")]
impl Model<'static> {
    /// Memory-maps and validates a model file.
    pub fn open(path: &std::path::Path) -> Result<Model<'static>, RuntimeError> {
        let map = emberlm_formats::ember::MappedFile::open(path)?;
        let header = EmberFile::parse_except(map.bytes(), &TOKENIZER_TABLES)?.header;
        Model::build(Storage::Mapped(map), header)
    }
}

impl<'a> Model<'a> {
    /// Validates a model held in memory. `bytes` must start on a 64-byte boundary (wrap
    /// `include_bytes!` in [`emberlm_formats::ember::Aligned`]).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Model<'a>, RuntimeError> {
        let header = EmberFile::parse_except(bytes, &TOKENIZER_TABLES)?.header;
        Model::build(Storage::Borrowed(bytes), header)
    }

    fn build(storage: Storage<'a>, header: Header) -> Result<Model<'a>, RuntimeError> {
        let config = meta::get_model_config(&header)?;
        let task = meta::get_task(&header)?;
        let prompt = meta::get_prompt(&header)?;
        let classes = match &task {
            Task::LanguageModel => None,
            Task::Classifier { labels, .. } => Some(labels.len()),
        };
        let described = arch::tensors(&config, classes);
        // The slot of the tensor with this role, checked against the description's shape; vectors
        // (norms, biases) must be f32.
        let find = |role: Role, layer: Option<usize>| -> Result<Slot, RuntimeError> {
            let want = arch::find(&described, role, layer).ok_or(RuntimeError::Format(
                FormatError::MissingTensor {
                    name: format!("{role:?} (not in this configuration's description)"),
                },
            ))?;
            let name = want.name.as_str();
            let index = header
                .tensors
                .iter()
                .position(|e| e.name == name)
                .ok_or_else(|| FormatError::MissingTensor {
                    name: name.to_string(),
                })?;
            let e = &header.tensors[index];
            let shape: Vec<u64> = want.shape.iter().map(|&d| d as u64).collect();
            if e.shape != shape {
                return Err(FormatError::WrongShape {
                    tensor: name.to_string(),
                    expected: shape,
                    found: e.shape.clone(),
                }
                .into());
            }
            if !want.desc.is_matrix() && e.dtype != DType::F32 {
                return Err(RuntimeError::UnsupportedDtype {
                    tensor: name.to_string(),
                    dtype: e.dtype.name(),
                    expected: "f32 (norms and biases are never quantized)",
                });
            }
            let (rows, cols) = match want.shape[..] {
                [r, c] => (r, c),
                [c] => (1, c),
                _ => (1, 1),
            };
            Ok(Slot { index, rows, cols })
        };
        let optional = |role: Role, layer: Option<usize>| match arch::find(&described, role, layer)
        {
            Some(_) => find(role, layer).map(Some),
            None => Ok(None),
        };
        let tok_emb = find(Role::TokEmb, None)?;
        let gpt2 = config.arch == Arch::Gpt2;
        let pos_emb = if gpt2 {
            Some(find(Role::PosEmb, None)?)
        } else {
            None
        };
        let mut layers = Vec::new();
        let mut blocks = Vec::new();
        for i in 0..config.n_layers {
            let l = Some(i);
            if !gpt2 {
                blocks.push(BlockSlots {
                    attn_norm: find(Role::AttnNormScale, l)?,
                    q: find(Role::Q, l)?,
                    k: find(Role::K, l)?,
                    v: find(Role::V, l)?,
                    q_bias: optional(Role::QBias, l)?,
                    k_bias: optional(Role::KBias, l)?,
                    v_bias: optional(Role::VBias, l)?,
                    q_norm: optional(Role::QNorm, l)?,
                    k_norm: optional(Role::KNorm, l)?,
                    out: find(Role::AttnOut, l)?,
                    attn_post_norm: optional(Role::AttnPostNorm, l)?,
                    mlp_norm: find(Role::MlpNormScale, l)?,
                    gate: find(Role::MlpGate, l)?,
                    up: find(Role::MlpUp, l)?,
                    down: find(Role::MlpDown, l)?,
                    mlp_post_norm: optional(Role::MlpPostNorm, l)?,
                });
                continue;
            }
            layers.push(LayerSlots {
                norm1: (find(Role::AttnNormScale, l)?, find(Role::AttnNormShift, l)?),
                qkv_w: find(Role::Qkv, l)?,
                qkv_b: optional(Role::QkvBias, l)?,
                proj_w: find(Role::AttnOut, l)?,
                proj_b: find(Role::AttnOutBias, l)?,
                norm2: (find(Role::MlpNormScale, l)?, find(Role::MlpNormShift, l)?),
                fc_w: find(Role::MlpUp, l)?,
                fc_b: find(Role::MlpUpBias, l)?,
                fcp_w: find(Role::MlpDown, l)?,
                fcp_b: find(Role::MlpDownBias, l)?,
            });
        }
        let final_norm = (
            find(Role::FinalNormScale, None)?,
            optional(Role::FinalNormShift, None)?,
        );
        // A tied language-model head reads the token embedding.
        let head_w = optional(Role::Head, None)?.unwrap_or(tok_emb);
        let head_b = optional(Role::HeadBias, None)?;
        let model = Model {
            storage,
            header,
            config,
            task,
            prompt,
            tok_emb,
            pos_emb,
            layers,
            blocks,
            final_norm,
            head_w,
            head_b,
            tokenizer: std::sync::OnceLock::new(),
        };
        // Resolve every view once so that a bad file fails here and not in the middle of a token.
        for e in &model.header.tensors {
            model.data(e)?;
        }
        Ok(model)
    }

    /// The model's bytes: the whole file, in place.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            #[cfg(feature = "mmap")]
            Storage::Mapped(m) => m.bytes(),
            Storage::Borrowed(b) => b,
        }
    }

    fn data(&self, e: &TensorEntry) -> Result<TensorData<'_>, FormatError> {
        let start = (self.header.data_start + e.offset) as usize;
        let raw = self
            .bytes()
            .get(start..start + e.size as usize)
            .unwrap_or_default();
        emberlm_formats::ember::tensor_data(raw, e)
    }

    fn mat(&self, s: Slot) -> Mat<'_> {
        // Every slot was resolved at load, so the view cannot fail here; an impossible failure
        // gives empty slices, which the kernels reject loudly.
        match self.data(&self.header.tensors[s.index]) {
            Ok(TensorData::F32(w)) => Mat::F32(w),
            Ok(TensorData::F16(w)) => Mat::F16(w),
            Ok(TensorData::Q8 { quants, scales }) => Mat::Q8(
                Q8Matrix::new(quants, scales, s.rows, s.cols)
                    .unwrap_or_else(|_| Q8Matrix::new(&[], &[], 0, 0).expect("empty")),
            ),
            Ok(TensorData::Q4 { quants, scales }) => Mat::Q4(
                Q4Matrix::new(quants, scales, s.rows, s.cols)
                    .unwrap_or_else(|_| Q4Matrix::new(&[], &[], 0, 0).expect("empty")),
            ),
            Ok(TensorData::Q6 { quants, scales }) => Mat::Q6(
                Q6Matrix::new(quants, scales, s.rows, s.cols)
                    .unwrap_or_else(|_| Q6Matrix::new(&[], &[], 0, 0).expect("empty")),
            ),
            Err(_) => Mat::F32(&[]),
        }
    }

    fn vector(&self, s: Slot) -> &[f32] {
        match self.mat(s) {
            Mat::F32(w) => w,
            _ => &[],
        }
    }

    /// The configuration (any family; GPT-2's fields keep their names).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The task (language model or classifier).
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The prompt template, if the model was instruction-tuned.
    pub fn prompt_template(&self) -> Option<&PromptTemplate> {
        self.prompt.as_ref()
    }

    /// The tokenizer stored in the file (built on first use from the file's header, read again,
    /// then cached), or `None` when the file has none. A corrupt table is found here, not at
    /// open ([`TOKENIZER_TABLES`]): the error is cached and returned on every call.
    pub fn tokenizer(&self) -> Result<Option<&Tokenizer>, RuntimeError> {
        let build = || meta::get_tokenizer(&EmberFile::parse(self.bytes())?.header);
        match self.tokenizer.get_or_init(build) {
            Ok(t) => Ok(t.as_ref()),
            Err(e) => Err(e.clone().into()),
        }
    }

    /// The file's header (metadata and tensor table) without the tokenizer's tables
    /// ([`TOKENIZER_TABLES`]; [`Model::tokenizer`] reads them, `EmberFile::parse(model.bytes())`
    /// gives the whole header).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Size of the model's bytes (the file).
    pub fn file_size(&self) -> usize {
        self.bytes().len()
    }

    /// Token embedding (V, C).
    pub fn tok_emb(&self) -> Mat<'_> {
        self.mat(self.tok_emb)
    }

    /// Position embedding (T, C): GPT-2 only (the other families rotate queries and keys).
    pub fn pos_emb(&self) -> Option<Mat<'_>> {
        self.pos_emb.map(|s| self.mat(s))
    }

    /// Whether this is a GPT-2 model ([`Model::layer`]) or another family ([`Model::block`]).
    pub fn is_gpt2(&self) -> bool {
        self.config.arch == Arch::Gpt2
    }

    /// Block `i`'s weights, for a Llama-style family.
    ///
    /// # Panics
    /// If `i >= L` or the model is GPT-2 ([`Model::is_gpt2`]; use [`Model::layer`]).
    pub fn block(&self, i: usize) -> Block<'_> {
        let s = &self.blocks[i];
        let v = |o: Option<Slot>| o.map(|b| self.vector(b));
        Block {
            attn_norm: self.vector(s.attn_norm),
            q: self.mat(s.q),
            k: self.mat(s.k),
            v: self.mat(s.v),
            q_bias: v(s.q_bias),
            k_bias: v(s.k_bias),
            v_bias: v(s.v_bias),
            q_norm: v(s.q_norm),
            k_norm: v(s.k_norm),
            out: self.mat(s.out),
            attn_post_norm: v(s.attn_post_norm),
            mlp_norm: self.vector(s.mlp_norm),
            gate: self.mat(s.gate),
            up: self.mat(s.up),
            down: self.mat(s.down),
            mlp_post_norm: v(s.mlp_post_norm),
        }
    }

    /// GPT-2 block `i`'s weights.
    ///
    /// # Panics
    /// If `i >= L` or the model is not GPT-2 ([`Model::is_gpt2`]; use [`Model::block`]).
    pub fn layer(&self, i: usize) -> Layer<'_> {
        let s = &self.layers[i];
        Layer {
            norm1: (self.vector(s.norm1.0), self.vector(s.norm1.1)),
            qkv_w: self.mat(s.qkv_w),
            qkv_b: s.qkv_b.map(|b| self.vector(b)),
            proj_w: self.mat(s.proj_w),
            proj_b: self.vector(s.proj_b),
            norm2: (self.vector(s.norm2.0), self.vector(s.norm2.1)),
            fc_w: self.mat(s.fc_w),
            fc_b: self.vector(s.fc_b),
            fcp_w: self.mat(s.fcp_w),
            fcp_b: self.vector(s.fcp_b),
        }
    }

    /// Final norm scale and shift (C); the shift is empty for RMSNorm families.
    pub fn final_norm(&self) -> (&[f32], &[f32]) {
        (
            self.vector(self.final_norm.0),
            self.final_norm.1.map_or(&[][..], |s| self.vector(s)),
        )
    }

    /// Output head (V, C) for a language model (the token embedding when tied), (K, C) for a
    /// classifier, and its bias (K) for a classifier.
    pub fn head(&self) -> (Mat<'_>, Option<&[f32]>) {
        (self.mat(self.head_w), self.head_b.map(|b| self.vector(b)))
    }

    /// Rows of the output head: V for a language model, K for a classifier.
    pub fn n_outputs(&self) -> usize {
        self.head_w.rows
    }

    /// Floating-point operations (a multiply-add counts 2) of prefilling `tokens` tokens into an
    /// empty cache: every layer matrix once per token, attention over positions 1..=`tokens`
    /// (scores and weighted values: 4·C per cached position per layer), and the head once (logits
    /// at the last position only). Norms, biases and activations are left out (under 0.1%).
    pub fn prefill_flops(&self, tokens: usize) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        let matrix = |s: Slot| 2.0 * s.rows as f64 * s.cols as f64;
        let per_token: f64 = self
            .layers
            .iter()
            .map(|l| matrix(l.qkv_w) + matrix(l.proj_w) + matrix(l.fc_w) + matrix(l.fcp_w))
            .sum::<f64>()
            + self
                .blocks
                .iter()
                .map(|b| {
                    [b.q, b.k, b.v, b.out, b.gate, b.up, b.down]
                        .map(matrix)
                        .iter()
                        .sum::<f64>()
                })
                .sum::<f64>();
        // Attention: 4·H·D per cached position (= 4·C for GPT-2); sliding windows left out.
        let (t, c) = (tokens as f64, self.config.q_dim() as f64);
        let attention = self.layers.len() as f64 * 4.0 * c * t * (t + 1.0) / 2.0;
        per_token * t + attention + matrix(self.head_w)
    }

    /// Bytes of weights read to decode one token: every matrix once, the head in full, one row
    /// of each embedding (the figure decode bandwidth is measured against).
    pub fn bytes_per_token(&self) -> u64 {
        let size = |s: Slot| self.header.tensors[s.index].size;
        let mut total = 0;
        for l in &self.layers {
            for s in [
                l.qkv_w, l.proj_w, l.fc_w, l.fcp_w, l.proj_b, l.fc_b, l.fcp_b,
            ] {
                total += size(s);
            }
            total += size(l.norm1.0) + size(l.norm1.1) + size(l.norm2.0) + size(l.norm2.1);
            total += l.qkv_b.map_or(0, size);
        }
        for b in &self.blocks {
            let vectors = [b.q_bias, b.k_bias, b.v_bias, b.q_norm, b.k_norm];
            let post = [b.attn_post_norm, b.mlp_post_norm];
            for s in [
                b.attn_norm,
                b.q,
                b.k,
                b.v,
                b.out,
                b.mlp_norm,
                b.gate,
                b.up,
                b.down,
            ] {
                total += size(s);
            }
            total += vectors
                .iter()
                .chain(&post)
                .flatten()
                .map(|&s| size(s))
                .sum::<u64>();
        }
        total += size(self.head_w);
        total += size(self.tok_emb) / self.tok_emb.rows.max(1) as u64;
        if let Some(p) = self.pos_emb {
            total += size(p) / p.rows.max(1) as u64;
        }
        total
    }
}
