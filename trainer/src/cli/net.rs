//! The model a training command runs: GPT-2, or one of the modern families (Llama, Qwen2,
//! Qwen3, Gemma 3). One enum, so that pretraining and fine-tuning drive both through the same
//! loop, tuner and checkpoints.

use super::sample;
use super::train_loop::Trainable;
use crate::family::{FamilyModel, Lora};
use crate::finetune::data::IGNORE;
use crate::finetune::tune::Tunable;
use crate::model::{Gpt, Mode, ModelError, TensorInfo};
use emberlm_formats::tokenizer::Tokenizer;

/// The model being trained: GPT-2, or one of the modern families.
#[derive(Debug)]
pub(crate) enum Net {
    Gpt(Gpt),
    Family(FamilyModel),
}

impl Trainable for Net {
    fn params(&self) -> &[f32] {
        match self {
            Net::Gpt(m) => m.params(),
            Net::Family(m) => m.params(),
        }
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        match self {
            Net::Gpt(m) => m.grads_mut(),
            Net::Family(m) => m.grads_mut(),
        }
    }
}

impl Net {
    /// Forward and backward of a (b, t) batch (dropout seeded by `seed` for GPT-2); the loss
    /// (NaN when every target is ignored: [`Net::tune_batch`]).
    pub(crate) fn train_batch(
        &mut self,
        x: &[u32],
        y: &[i32],
        bt: (usize, usize),
        seed: u64,
    ) -> Result<f32, String> {
        Ok(self.tune_batch(x, y, bt, seed)?.unwrap_or(f32::NAN))
    }

    /// The loss of a (b, t) batch, nothing trained (NaN when every target is ignored).
    pub(crate) fn eval_loss(
        &mut self,
        x: &[u32],
        y: &[i32],
        bt: (usize, usize),
    ) -> Result<f32, String> {
        Ok(self.tune_eval(x, y, bt)?.unwrap_or(f32::NAN))
    }

    pub(crate) fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        match self {
            Net::Gpt(m) => m.params_and_grads(),
            Net::Family(m) => m.params_and_grads(),
        }
    }

    pub(crate) fn greedy(
        &self,
        tok: &Tokenizer,
        prompt: &str,
        n: usize,
        threads: usize,
    ) -> Result<String, String> {
        match self {
            Net::Gpt(m) => sample::greedy(m, tok, prompt, n, threads),
            Net::Family(m) => sample::greedy_family(m, tok, prompt, n, threads),
        }
    }
}

impl Net {
    /// Forward and backward of a (b, t) batch of fine-tuning data (dropout seeded by `seed` for
    /// GPT-2): the mean loss, or `None` when every target is ignored (nothing to learn from).
    pub(crate) fn tune_batch(
        &mut self,
        x: &[u32],
        y: &[i32],
        (b, t): (usize, usize),
        seed: u64,
    ) -> Result<Option<f32>, String> {
        match self {
            Net::Gpt(m) => match m.forward(x, Some(y), b, t, Mode::Train { seed }) {
                Ok(l) => {
                    let loss = l.unwrap_or(f32::NAN);
                    if loss.is_finite() {
                        m.backward().map_err(|e| e.to_string())?;
                    }
                    Ok(Some(loss))
                }
                Err(ModelError::NoTargets) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            Net::Family(m) => {
                if y.iter().all(|&v| v == IGNORE) {
                    return Ok(None);
                }
                Ok(Some(m.train_batch(x, y, b) as f32))
            }
        }
    }

    /// The mean loss of a (b, t) batch with dropout off, or `None` when every target is
    /// ignored.
    pub(crate) fn tune_eval(
        &mut self,
        x: &[u32],
        y: &[i32],
        (b, t): (usize, usize),
    ) -> Result<Option<f32>, String> {
        match self {
            Net::Gpt(m) => match m.forward(x, Some(y), b, t, Mode::Eval) {
                Ok(l) => Ok(Some(l.unwrap_or(f32::NAN))),
                Err(ModelError::NoTargets) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            Net::Family(m) => {
                if y.iter().all(|&v| v == IGNORE) {
                    return Ok(None);
                }
                Ok(Some(m.loss(x, y, b) as f32))
            }
        }
    }

    /// Frees the buffers a family model keeps between steps (see
    /// [`FamilyModel::release_buffers`]); GPT-2 keeps none.
    pub(crate) fn release_buffers(&mut self) {
        if let Net::Family(m) = self {
            m.release_buffers();
        }
    }

    /// The model as an in-memory f32 `.ember` file, for the runtime (LoRA adapters that the
    /// model runs directly merged into it).
    pub(crate) fn ember_bytes(&self) -> Result<sample::EmberBuf, String> {
        match self {
            Net::Gpt(m) => sample::ember_bytes(m),
            Net::Family(m) => sample::family_ember_bytes(m),
        }
    }

    /// The parameters a checkpoint stores: LoRA adapters that the model runs directly merged
    /// into a copy (the checkpoint holds the merged model, as with merging LoRA).
    pub(crate) fn merged_params(&self) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Net::Gpt(m) => std::borrow::Cow::Borrowed(m.params()),
            Net::Family(m) => m.merged_params(),
        }
    }

    /// Every tensor's name and shape, in buffer order (a checkpoint's `shapes`).
    pub(crate) fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensor_infos()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect()
    }
}

impl Tunable for Net {
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        match self {
            Net::Gpt(m) => m.tensors().to_vec(),
            Net::Family(m) => m.tensor_infos(),
        }
    }
    fn n_layers(&self) -> usize {
        match self {
            Net::Gpt(m) => m.config().n_layers,
            Net::Family(m) => m.config().n_layers,
        }
    }
    fn params(&self) -> &[f32] {
        Trainable::params(self)
    }
    fn params_mut(&mut self) -> &mut [f32] {
        match self {
            Net::Gpt(m) => m.params_mut(),
            Net::Family(m) => m.params_mut(),
        }
    }
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        Net::params_and_grads(self)
    }
    fn set_grad_from_layer(&mut self, layer: usize) {
        if let Net::Gpt(m) = self {
            m.grad_from_layer = layer;
        }
    }
    fn attach_lora(&mut self, lora: Lora) -> Result<(), Lora> {
        match self {
            Net::Gpt(_) => Err(lora),
            Net::Family(m) => Tunable::attach_lora(m, lora),
        }
    }
    fn lora_mut(&mut self) -> Option<&mut Lora> {
        match self {
            Net::Gpt(_) => None,
            Net::Family(m) => m.lora_mut(),
        }
    }
    fn merge_lora(&mut self) {
        if let Net::Family(m) = self {
            m.merge_lora();
        }
    }
}

impl crate::finetune::instruct::BatchLoss for Net {
    fn batch_loss(&mut self, b: &crate::finetune::data::Batch) -> Result<Option<f32>, String> {
        self.tune_eval(&b.inputs, &b.targets, (b.batch, b.len))
    }
}

impl crate::finetune::classify::ClassifierLogits for Net {
    fn outputs(&self) -> usize {
        match self {
            Net::Gpt(m) => m.outputs(),
            Net::Family(m) => crate::finetune::classify::ClassifierLogits::outputs(m),
        }
    }
    fn eval_logits(&mut self, inputs: &[u32], b: usize, t: usize) -> Result<Vec<f32>, String> {
        match self {
            Net::Gpt(m) => m.eval_logits(inputs, b, t),
            Net::Family(m) => m.eval_logits(inputs, b, t),
        }
    }
}
