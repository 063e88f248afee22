//! `ember chat` with the model's own chat template (a Hugging Face model converted with
//! `ember-train export`): the conversation is a list of messages rendered by the template
//! (minijinja, as transformers' `apply_chat_template`), tokenized with special tokens allowed,
//! and answers stop at the model's end-of-turn ids (`generation.eos_ids`, else the tokenizer's
//! end-of-text). Each turn re-renders the whole conversation; when the cache already holds a
//! prefix of the new tokens only the rest is read, else the session starts over.

use emberlm_formats::chat::{ChatTemplate, Message};
use emberlm_formats::meta;
use emberlm_formats::tokenizer::{EncodeScratch, SpecialTokens, Tokenizer};
use emberlm_runtime::{Model, Session};

/// The templated conversation.
pub(crate) struct Templated {
    pub(crate) template: ChatTemplate,
    system: Option<String>,
    /// User and assistant messages, oldest first (pairs; the last may be a lone user message).
    messages: Vec<Message>,
    /// Ids that end an answer.
    pub(crate) eos: Vec<u32>,
}

/// The model's template, when its file has one (a bad template is an error, not a fallback).
pub(crate) fn load(
    model: &Model<'_>,
    tok: &Tokenizer,
    system: Option<String>,
) -> Result<Option<Templated>, String> {
    let h = model.header();
    let Some(src) = meta::get_chat_template(h).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let template = ChatTemplate::new(&src.source, src.special.clone())
        .map_err(|e| format!("the model's chat template: {e}"))?;
    let generation = meta::get_generation(h, model.n_outputs()).map_err(|e| e.to_string())?;
    let mut eos = generation.eos_ids;
    if eos.is_empty() {
        eos.extend(tok.eot_id());
    }
    if let Some(e) = src
        .special
        .eos_token
        .as_deref()
        .and_then(|t| tok.special_id(t))
    {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    Ok(Some(Templated {
        template,
        system,
        messages: Vec::new(),
        eos,
    }))
}

impl Templated {
    /// Forgets the conversation (the system text stays).
    pub(crate) fn reset(&mut self) {
        self.messages.clear();
    }

    fn render(
        &self,
        tok: &Tokenizer,
        scratch: &mut EncodeScratch,
        ids: &mut Vec<u32>,
    ) -> Result<(), String> {
        let mut all = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            all.push(Message::new("system", s.clone()));
        }
        all.extend(self.messages.iter().cloned());
        let text = self
            .template
            .render(&all, true)
            .map_err(|e| format!("the model's chat template: {e}"))?;
        ids.clear();
        tok.encode(&text, SpecialTokens::Allow, scratch, ids);
        Ok(())
    }

    /// Adds the user's line and gives the tokens to feed the session (the conversation rendered
    /// with a generation prompt, minus what the cache already holds; the session is reset when
    /// it holds something else). Drops the oldest exchanges until the conversation and `reserve`
    /// answer tokens fit; returns how many were dropped, or `Err` when the line alone cannot fit.
    pub(crate) fn prepare(
        &mut self,
        session: &mut Session<'_, '_>,
        msg: &str,
        reserve: usize,
        tok: &Tokenizer,
        scratch: &mut EncodeScratch,
        feed: &mut Vec<u32>,
    ) -> Result<Result<usize, String>, String> {
        let context = session.context();
        self.messages.push(Message::new("user", msg));
        let mut ids = Vec::new();
        let mut dropped = 0;
        loop {
            self.render(tok, scratch, &mut ids)?;
            if ids.len() + reserve <= context || self.messages.len() <= 1 {
                break;
            }
            self.messages.drain(..2.min(self.messages.len() - 1));
            dropped += 1;
        }
        if ids.len() >= context {
            self.messages.pop();
            return Ok(Err(format!(
                "(that line is {} tokens with the conversation's markup: it cannot fit in the \
                 context of {context} tokens; shorten it)",
                ids.len()
            )));
        }
        let held = session.tokens();
        feed.clear();
        if held.len() <= ids.len() && ids.starts_with(held) {
            feed.extend_from_slice(&ids[held.len()..]);
        } else {
            session.reset();
            feed.extend_from_slice(&ids);
        }
        if feed.is_empty() {
            // The cache holds everything: read the last token again from a fresh session.
            session.reset();
            feed.extend_from_slice(&ids);
        }
        Ok(Ok(dropped))
    }

    /// Records the answer.
    pub(crate) fn answered(&mut self, text: &str) {
        self.messages.push(Message::new("assistant", text));
    }
}
