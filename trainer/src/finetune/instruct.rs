//! Instruction fine-tuning (the book's chapter 7): Alpaca examples tokenized once, batches collated
//! one at a time to their own longest example (the book's `custom_collate_fn`), the book's loss
//! over a loader (`calc_loss_loader`), and greedy responses from a runtime model that stop at
//! `<|endoftext|>`.
//!
//! Letters: B batch, T the padded length of one batch (at most the maximum length), V vocabulary.

use super::data::{Batch, Instruction, collate, instruction_text};
use crate::model::{Gpt, Mode, ModelError};
use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_formats::ember::write_atomically;
use emberlm_formats::meta::PromptTemplate;
use emberlm_formats::tokenizer::{SpecialTokens, Tokenizer};
use emberlm_runtime::{GenerateOptions, RuntimeError, Sampling, Session, Stop};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::Path;

/// One tokenized example: the prompt followed by the reference output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids of the whole text (prompt + output), without the end token (collate appends it).
    pub ids: Vec<u32>,
    /// Tokens of the prompt alone (the part `--mask-prompt` hides from the loss).
    pub prompt_len: usize,
}

/// Tokenizes every example with `template` (the book's `InstructionDataset`). The prompt is
/// encoded on its own to measure its length; special-token text inside the data is encoded as
/// ordinary text (`SpecialTokens::AsText`), so a stray `<|endoftext|>` in an
/// instruction cannot end the example early.
pub fn encode_examples(
    tok: &Tokenizer,
    template: &PromptTemplate,
    items: &[Instruction],
) -> Vec<Example> {
    items
        .iter()
        .map(|e| {
            let (prompt, full) = instruction_text(template, e);
            let prompt_len = tok.encode_to_vec(&prompt, SpecialTokens::AsText).len();
            let ids = tok.encode_to_vec(&full, SpecialTokens::AsText);
            Example {
                prompt_len: prompt_len.min(ids.len()),
                ids,
            }
        })
        .collect()
}

/// The user's turn of an example in a chat: the instruction, then the input (when there is one)
/// after a blank line, as the book's Alpaca prompt orders them.
pub fn chat_user_text(e: &Instruction) -> String {
    if e.input.is_empty() {
        e.instruction.clone()
    } else {
        format!("{}\n\n{}", e.instruction, e.input)
    }
}

/// Examples rendered with a model's own chat template, tokenized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatExamples {
    /// One per item, each ending just before the reply's end-of-turn token.
    pub examples: Vec<Example>,
    /// The end-of-turn id the replies end with (the collate appends it as the last target, so
    /// it is also the pad id).
    pub end: u32,
}

/// Tokenizes every example with the model's chat template, as `ember chat` renders a
/// conversation: the prompt is the user's turn ([`chat_user_text`]) rendered with the generation
/// prompt, the whole text is the user's turn and the assistant's reply (the reference output)
/// rendered without it; the prompt must be a prefix of the whole (else the template cannot be
/// trained on this way, and the error says so). Both parts are encoded with special tokens
/// allowed (the template's markup is special tokens; so is special-token text inside the data,
/// as in `ember chat`). The reply is cut before its first end-of-turn id (one of `eos`, which
/// must not be empty): the collate appends that id as the last target, as the book appends
/// `<|endoftext|>`. A template whose replies end with no id of `eos` keeps its text whole and
/// ends with `eos[0]`.
pub fn encode_chat_examples(
    tok: &Tokenizer,
    chat: &ChatTemplate,
    eos: &[u32],
    items: &[Instruction],
) -> Result<ChatExamples, String> {
    let mut examples = Vec::with_capacity(items.len());
    let mut end = None;
    for (n, e) in items.iter().enumerate() {
        let user = Message::new("user", chat_user_text(e));
        let prompt = chat
            .render(std::slice::from_ref(&user), true)
            .map_err(|err| format!("example {n}: the chat template: {err}"))?;
        let full = chat
            .render(&[user, Message::new("assistant", e.output.clone())], false)
            .map_err(|err| format!("example {n}: the chat template: {err}"))?;
        let Some(reply) = full.strip_prefix(prompt.as_str()) else {
            return Err(format!(
                "example {n}: the chat template renders the reply in a way that does not continue \
                 its generation prompt, so it cannot be trained on as prompt + reply; use \
                 --template alpaca"
            ));
        };
        let mut ids = tok.encode_to_vec(&prompt, SpecialTokens::Allow);
        let prompt_len = ids.len();
        let reply_ids = tok.encode_to_vec(reply, SpecialTokens::Allow);
        match reply_ids.iter().position(|id| eos.contains(id)) {
            Some(i) => {
                end.get_or_insert(reply_ids[i]);
                ids.extend_from_slice(&reply_ids[..i]);
            }
            None => ids.extend_from_slice(&reply_ids),
        }
        examples.push(Example { ids, prompt_len });
    }
    let end = match end.or(eos.first().copied()) {
        Some(e) => e,
        None => return Err("the model names no end-of-turn token (eos)".into()),
    };
    Ok(ChatExamples { examples, end })
}

/// How a batch is built from examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRule {
    /// The pad and end id (`<|endoftext|>`, 50256 for GPT-2's vocabulary).
    pub pad: u32,
    /// Ignore the prompt's tokens in the loss (the book's exercise 7.2).
    pub mask_prompt: bool,
    /// Truncate inputs and targets to this many positions (the book's `allowed_max_length`).
    pub max_len: usize,
}

/// The batch of examples `idx` (B = `idx.len()`), inputs and targets (B, T) with T = the longest
/// example + 1, capped at `rule.max_len`.
pub fn make_batch(examples: &[Example], idx: &[usize], rule: &BatchRule) -> Batch {
    let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| examples[i].ids.clone()).collect();
    let prompt_lens: Vec<usize> = idx.iter().map(|&i| examples[i].prompt_len).collect();
    collate(
        &seqs,
        rule.pad,
        rule.mask_prompt.then_some(prompt_lens.as_slice()),
        Some(rule.max_len),
    )
}

/// Batches a loader of `n` examples yields with batch size `b` (PyTorch's `DataLoader`: the last
/// partial batch is dropped when `drop_last`, as the book does for training).
pub fn num_batches(n: usize, b: usize, drop_last: bool) -> usize {
    match (b, drop_last) {
        (0, _) => 0,
        (_, true) => n / b,
        (_, false) => n.div_ceil(b),
    }
}

/// The indices of batch `i` of `order` (batches of `b`; the last one may be shorter).
pub fn batch_indices(order: &[usize], i: usize, b: usize) -> &[usize] {
    let start = (i * b).min(order.len());
    &order[start..((i + 1) * b).min(order.len())]
}

/// A model that gives the mean loss of a batch with dropout off: `None` when every target of the
/// batch is ignored.
pub trait BatchLoss {
    /// The batch's mean loss.
    fn batch_loss(&mut self, batch: &Batch) -> Result<Option<f32>, String>;
}

impl BatchLoss for Gpt {
    fn batch_loss(&mut self, b: &Batch) -> Result<Option<f32>, String> {
        match self.forward(&b.inputs, Some(&b.targets), b.batch, b.len, Mode::Eval) {
            Ok(l) => Ok(Some(l.unwrap_or(f32::NAN))),
            Err(ModelError::NoTargets) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The book's `calc_loss_loader`: the mean of the per-batch mean losses (dropout off) over the
/// first `max_batches` batches (all when `None`) of `examples` taken in `order`. NaN when there is
/// no batch. A batch whose targets are all ignored (possible only with `--mask-prompt` and a
/// truncation that cuts every response) has no loss and is left out of the mean.
pub fn mean_loss<M: BatchLoss + ?Sized>(
    model: &mut M,
    examples: &[Example],
    order: &[usize],
    b: usize,
    max_batches: Option<usize>,
    drop_last: bool,
    rule: &BatchRule,
) -> Result<f32, String> {
    let mut nb = num_batches(order.len(), b, drop_last);
    if let Some(m) = max_batches {
        nb = nb.min(m);
    }
    let (mut sum, mut count) = (0f64, 0usize);
    for i in 0..nb {
        let batch = make_batch(examples, batch_indices(order, i, b), rule);
        if let Some(l) = model.batch_loss(&batch)? {
            sum += l as f64;
            count += 1;
        }
    }
    Ok(if count == 0 {
        f32::NAN
    } else {
        (sum / count as f64) as f32
    })
}

/// One line of `responses.json` (the book's `instruction-data-with-response.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The task.
    pub instruction: String,
    /// The input (may be empty).
    pub input: String,
    /// The reference output from the data.
    pub output: String,
    /// What the fine-tuned model answered (greedy, up to `<|endoftext|>`).
    pub model_response: String,
}

/// The greedy continuation of `prompt` by `session`'s model, up to `max_new` tokens, stopping
/// before `eot` (the book's `generate(..., eos_id=50256)` with greedy decoding), decoded with
/// `tok` and cleaned as the book does (`"### Response:"` removed, whitespace trimmed).
///
/// The session is reset first. A prompt longer than the session's context keeps its last
/// `context` tokens (the book crops the same way); when the context fills during generation,
/// the runtime drops the oldest half of the tokens and continues. Ids the tokenizer does not know
/// (a padded vocabulary) decode as U+FFFD.
pub fn respond(
    session: &mut Session<'_, '_>,
    tok: &Tokenizer,
    prompt: &str,
    eot: u32,
    max_new: usize,
) -> Result<String, RuntimeError> {
    session.reset();
    let mut ids = tok.encode_to_vec(prompt, SpecialTokens::AsText);
    if ids.is_empty() {
        ids.push(eot);
    }
    let ctx = session.context();
    if ids.len() > ctx {
        ids.drain(..ids.len() - ctx);
    }
    let mut out = Vec::with_capacity(max_new);
    session.generate(
        &ids,
        &Sampling::default(),
        &GenerateOptions {
            max_tokens: max_new,
            stop: Stop::Token(eot),
            slide: true,
        },
        |t| {
            out.push(t);
            ControlFlow::Continue(())
        },
    )?;
    let mut bytes = Vec::new();
    for id in out {
        bytes.extend_from_slice(tok.token_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.replace("### Response:", "").trim().to_string())
}

/// The greedy continuation of the token ids `prompt` by `session`'s model, up to `max_new`
/// tokens, stopping before any id of `stops`, decoded with `tok` and trimmed. As [`respond`]
/// for prompts already rendered and tokenized (a chat template's).
pub fn respond_ids(
    session: &mut Session<'_, '_>,
    tok: &Tokenizer,
    prompt: &[u32],
    stops: &[u32],
    max_new: usize,
) -> Result<String, RuntimeError> {
    session.reset();
    let ctx = session.context();
    let ids = &prompt[prompt.len().saturating_sub(ctx)..];
    let mut out = Vec::with_capacity(max_new);
    session.generate(
        ids,
        &Sampling::default(),
        &GenerateOptions {
            max_tokens: max_new,
            stop: Stop::None,
            slide: true,
        },
        |t| {
            if stops.contains(&t) {
                return ControlFlow::Break(());
            }
            out.push(t);
            ControlFlow::Continue(())
        },
    )?;
    let mut bytes = Vec::new();
    for id in out {
        bytes.extend_from_slice(tok.token_bytes(id).unwrap_or("\u{FFFD}".as_bytes()));
    }
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

/// Writes `responses` as a pretty JSON array to `path` atomically (temporary file + rename).
pub fn write_responses(path: &Path, responses: &[Response]) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(responses).map_err(std::io::Error::other)?;
    write_atomically(path, |w| {
        w.write_all(&json)?;
        w.write_all(b"\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::data::{IGNORE, PAD_ID};
    use emberlm_formats::config::GptConfig;

    fn ex(ids: &[u32], prompt_len: usize) -> Example {
        Example {
            ids: ids.to_vec(),
            prompt_len,
        }
    }

    #[test]
    fn batches_are_as_long_as_their_longest_example() {
        let e = [ex(&[1, 2], 1), ex(&[3, 4, 5, 6, 7, 8], 2), ex(&[9], 1)];
        let rule = BatchRule {
            pad: PAD_ID,
            mask_prompt: false,
            max_len: 100,
        };
        // Batch of examples 0 and 2: longest 2, so T = 2 (3 after the appended end, minus one).
        let b = make_batch(&e, &[0, 2], &rule);
        assert_eq!((b.batch, b.len), (2, 2));
        assert_eq!(b.inputs, vec![1, 2, 9, PAD_ID]);
        assert_eq!(b.targets, vec![2, PAD_ID as i32, PAD_ID as i32, IGNORE]);
        // Example 1 alone: T = 6; capped at 4 by the rule.
        let b = make_batch(&e, &[1], &BatchRule { max_len: 4, ..rule });
        assert_eq!((b.batch, b.len), (1, 4));
        assert_eq!(b.inputs, vec![3, 4, 5, 6]);
        assert_eq!(b.targets, vec![4, 5, 6, 7]);
        // Prompt masking hides prompt_len − 1 targets.
        let b = make_batch(
            &e,
            &[1],
            &BatchRule {
                mask_prompt: true,
                ..rule
            },
        );
        assert_eq!(b.targets, vec![IGNORE, 5, 6, 7, 8, PAD_ID as i32]);
    }

    #[test]
    fn loader_batch_counts_follow_drop_last() {
        // The book: 935 training examples, batch 8 → 116 batches (drop_last); 55 val → 7.
        assert_eq!(num_batches(935, 8, true), 116);
        assert_eq!(num_batches(55, 8, false), 7);
        assert_eq!(num_batches(5, 8, true), 0);
        assert_eq!(num_batches(5, 0, false), 0);
        let order = [4, 3, 2, 1, 0];
        assert_eq!(batch_indices(&order, 0, 2), &[4, 3]);
        assert_eq!(batch_indices(&order, 2, 2), &[0]);
        assert!(batch_indices(&order, 3, 2).is_empty());
    }

    // The template text: the prompt of an example is the book's `format_input` + "### Response:",
    // written out here independently of the template code.
    #[test]
    fn the_prompt_is_the_books_text_and_its_length_is_measured() {
        let tok = Tokenizer::gpt2();
        let item = Instruction {
            instruction: "Identify the correct spelling of the following word.".into(),
            input: "Ocassion".into(),
            output: "The correct spelling is 'Occasion.'".into(),
        };
        let book = "Below is an instruction that describes a task. Write a response that \
                    appropriately completes the request.\n\n### Instruction:\nIdentify the \
                    correct spelling of the following word.\n\n### Input:\nOcassion\n\n### Response:\n";
        let e = &encode_examples(tok, &PromptTemplate::alpaca(), &[item])[0];
        assert_eq!(
            e.prompt_len,
            tok.encode_to_vec(book, SpecialTokens::AsText).len()
        );
        let full = format!("{book}The correct spelling is 'Occasion.'");
        assert_eq!(e.ids, tok.encode_to_vec(&full, SpecialTokens::AsText));
        // The prompt's tokens are a prefix of the full text's.
        assert_eq!(
            &e.ids[..e.prompt_len],
            tok.encode_to_vec(book, SpecialTokens::AsText).as_slice()
        );
    }

    #[test]
    fn mean_loss_averages_batches_and_matches_single_forwards() {
        let cfg = GptConfig {
            vocab_size: 50,
            context_length: 16,
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            qkv_bias: false,
            tied_head: false,
        };
        let mut m = Gpt::new(cfg, crate::model::Init::Gpt2, 7).unwrap();
        let e = [ex(&[1, 2, 3], 1), ex(&[4, 5], 1), ex(&[6, 7, 8, 9], 2)];
        let rule = BatchRule {
            pad: 49,
            mask_prompt: false,
            max_len: 16,
        };
        let order = [2, 0, 1];
        let got = mean_loss(&mut m, &e, &order, 2, None, false, &rule).unwrap();
        let mut want = 0f64;
        for idx in [&[2usize, 0][..], &[1][..]] {
            let b = make_batch(&e, idx, &rule);
            want += m
                .forward(&b.inputs, Some(&b.targets), b.batch, b.len, Mode::Eval)
                .unwrap()
                .unwrap() as f64;
        }
        assert!(
            (got as f64 - want / 2.0).abs() < 1e-6,
            "{got} vs {}",
            want / 2.0
        );
        // drop_last with one batch of 2 only; max_batches caps.
        let first = mean_loss(&mut m, &e, &order, 2, Some(1), false, &rule).unwrap();
        let dl = mean_loss(&mut m, &e, &order, 2, None, true, &rule).unwrap();
        assert_eq!(first, dl);
        assert!(
            mean_loss(&mut m, &e, &[], 2, None, false, &rule)
                .unwrap()
                .is_nan()
        );
    }

    /// A model whose next token is always `winner`: the final norm outputs its shift (scale 0)
    /// at every position, and only the head row of `winner` is aligned with it.
    fn constant_model(vocab: usize, winner: usize) -> Gpt {
        let cfg = GptConfig {
            vocab_size: vocab,
            context_length: 8,
            dim: 4,
            n_layers: 1,
            n_heads: 1,
            qkv_bias: false,
            tied_head: false,
        };
        let mut m = Gpt::new(cfg, crate::model::Init::Gpt2, 1).unwrap();
        m.param_mut("final_norm.scale").unwrap().fill(0.0);
        m.param_mut("final_norm.shift").unwrap().fill(1.0);
        let head = m.param_mut("out_head.weight").unwrap();
        head.fill(0.0);
        head[winner * 4..winner * 4 + 4].fill(1.0);
        m
    }

    fn respond_with(m: &Gpt, tok: &Tokenizer, eot: u32, max_new: usize) -> String {
        let bytes = crate::cli::sample::ember_bytes(m).unwrap();
        let rm = emberlm_runtime::Model::from_bytes(&bytes).unwrap();
        let mut s = Session::new(&rm, &emberlm_runtime::SessionOptions::default()).unwrap();
        // A prompt longer than the context (8) is cropped, not an error.
        respond(&mut s, tok, "a b c d e f g h i j k l", eot, max_new).unwrap()
    }

    #[test]
    fn responses_stop_at_the_end_token_and_at_the_cap() {
        let tok = emberlm_formats::tokenizer::train_bpe(
            &["a b c d e f g h i j k l"],
            260,
            &Default::default(),
        )
        .unwrap();
        let eot = tok.eot_id().unwrap();
        let v = tok.vocab_size();
        // The end token wins at once: an empty response.
        assert_eq!(
            respond_with(&constant_model(v, eot as usize), &tok, eot, 5),
            ""
        );
        // Byte 'x' wins every time: 5 of them (the cap), through the context sliding (8).
        assert_eq!(
            respond_with(&constant_model(v, b'x' as usize), &tok, eot, 5),
            "xxxxx"
        );
        assert_eq!(
            respond_with(&constant_model(v, b'x' as usize), &tok, eot, 12),
            "x".repeat(12)
        );
    }

    #[test]
    fn responses_round_trip_with_the_four_keys() {
        let tmp = tempfile::Builder::new()
            .prefix("emberlm-resp-")
            .tempdir()
            .unwrap();
        let dir = tmp.path();
        let p = dir.join("responses.json");
        let r = vec![Response {
            instruction: "Say \"hi\".".into(),
            input: String::new(),
            output: "hi".into(),
            model_response: "hello\nthere".into(),
        }];
        write_responses(&p, &r).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let o = v[0].as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["input", "instruction", "model_response", "output"]);
        assert_eq!(o["model_response"], "hello\nthere");
    }
}
