//! Encoding and decoding with a Hugging Face BPE model (see `hf_model.rs` for the rules).
//!
//! Decoding follows the file's decoder: byte-level tokens are their bytes; SentencePiece tokens
//! are their text with `▁` read as a space, `<0xNN>` tokens their byte, and (with `Strip`) the
//! first space of the whole text dropped. [`Tokenizer::decode_to_string`] reproduces
//! `tokenizers`' `ByteFallback` exactly: a run of byte tokens that is not valid UTF-8 gives one
//! U+FFFD per byte (where `String::from_utf8_lossy` on [`Tokenizer::decode`]'s bytes gives one
//! per maximal invalid sequence).

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use super::bpe::NONE;
use super::hf_model::{self, HfModel, HfModelKind, HfPreTokenizer, Prepend, Sym};
use super::{EncodeScratch, SpecialTokens, Tokenizer, TokenizerError, pretok};

/// `▁` (U+2581), SentencePiece's space.
const META: char = '\u{2581}';
const META_BYTES: &[u8] = "\u{2581}".as_bytes();

impl Tokenizer {
    /// Appends the ids of `text` with the post-processor's special tokens (e.g. Llama 3's
    /// `<|begin_of_text|>` before the text), as `tokenizers`' `encode(text,
    /// add_special_tokens=True)`. Added tokens written in the text are recognised
    /// ([`SpecialTokens::Allow`]). For a tiktoken-style vocabulary there is no post-processor:
    /// the same as [`Tokenizer::encode`] with `Allow`.
    pub fn encode_with_post(&self, text: &str, scratch: &mut EncodeScratch, out: &mut Vec<u32>) {
        if let Some(hf) = &self.hf {
            out.extend_from_slice(&hf.parts.post_prefix);
        }
        self.encode(text, SpecialTokens::Allow, scratch, out);
        if let Some(hf) = &self.hf {
            out.extend_from_slice(&hf.parts.post_suffix);
        }
    }

    /// Ids the post-processor puts before the text (the BOS token), empty if none.
    pub fn bos_ids(&self) -> &[u32] {
        self.hf.as_ref().map_or(&[], |h| &h.parts.post_prefix)
    }

    /// Cuts the added tokens out of `text` (leftmost, then longest, as `tokenizers`' added
    /// vocabulary does) and encodes the segments between them.
    pub(super) fn encode_hf(
        &self,
        hf: &HfModel,
        text: &str,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let b = text.as_bytes();
        let mut seg_start = 0;
        let mut i = 0;
        'scan: while i < b.len() {
            // Names start with a UTF-8 lead byte, so matches start on character boundaries.
            for m in &hf.added_by_first[b[i] as usize] {
                if b[i..].starts_with(&m.name) {
                    let mut start = i;
                    let mut stop = i + m.name.len();
                    if m.lstrip {
                        // White space already taken by the previous match stays there.
                        let before = text.get(seg_start..start).unwrap_or_default();
                        start -= before.len() - before.trim_end().len();
                    }
                    if m.rstrip {
                        let after = text.get(stop..).unwrap_or_default();
                        stop += after.len() - after.trim_start().len();
                    }
                    let seg = text.get(seg_start..start).unwrap_or_default();
                    self.encode_hf_segment(hf, seg, seg_start == 0, scratch, out);
                    out.push(m.id);
                    i = stop;
                    seg_start = stop;
                    continue 'scan;
                }
            }
            i += 1;
        }
        let seg = text.get(seg_start..).unwrap_or_default();
        self.encode_hf_segment(hf, seg, seg_start == 0, scratch, out);
    }

    /// Normalizes, pre-tokenizes and merges one segment between added tokens. `at_start`: the
    /// segment begins the text (Metaspace `prepend_scheme: "first"`).
    pub(super) fn encode_hf_segment(
        &self,
        hf: &HfModel,
        seg: &str,
        at_start: bool,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        if seg.is_empty() {
            return;
        }
        let p = &hf.parts;
        let mut norm = std::mem::take(&mut scratch.norm);
        norm.clear();
        let needs_nfc = p.nfc && is_nfc_quick(seg.chars()) != IsNormalized::Yes;
        if p.model == HfModelKind::SentencePiece {
            // No real SentencePiece file asks for NFC; when one does, this allocates.
            let nfc_owned: String;
            let src = if needs_nfc {
                nfc_owned = seg.nfc().collect();
                nfc_owned.as_str()
            } else {
                seg
            };
            let prepend = match p.prepend {
                Prepend::Never => false,
                Prepend::Always => true,
                Prepend::MetaspaceFirst => at_start && !src.starts_with([' ', META]),
                Prepend::MetaspaceAlways => !src.starts_with([' ', META]),
            };
            if prepend {
                norm.push(META);
            }
            if p.replace_space {
                norm.extend(src.chars().map(|c| if c == ' ' { META } else { c }));
            } else {
                norm.push_str(src);
            }
        } else {
            if needs_nfc {
                norm.extend(seg.nfc());
            } else {
                norm.push_str(seg);
            }
            if p.add_prefix_space && !norm.starts_with(' ') {
                norm.insert(0, ' ');
            }
        }
        if p.pretokenizer == HfPreTokenizer::Gpt2Digits {
            // Each number character alone, then the regex on each stretch between them.
            let b = norm.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let (class, len) = pretok::char_at(b, i);
                let mut j = i + len;
                if class != pretok::NUMBER {
                    while j < b.len() {
                        let (c, l) = pretok::char_at(b, j);
                        if c == pretok::NUMBER {
                            break;
                        }
                        j += l;
                    }
                }
                let stretch = norm.get(i..j).unwrap_or_default();
                self.encode_pretokens(hf, stretch, scratch, out);
                i = j;
            }
        } else {
            self.encode_pretokens(hf, &norm, scratch, out);
        }
        scratch.norm = norm;
    }

    /// Splits `text` (normalized) into pre-tokens and merges each.
    fn encode_pretokens(
        &self,
        hf: &HfModel,
        text: &str,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let p = &hf.parts;
        let mut i = 0;
        while i < text.len() {
            let e = hf_model::pretoken_end(p.pretokenizer, text, i);
            let piece = text.get(i..e).unwrap_or_default();
            i = e.max(i + 1);
            match p.model {
                HfModelKind::ByteLevel => self.encode_bytes_piece(hf, piece, scratch, out),
                HfModelKind::SentencePiece => self.encode_spm_piece(hf, piece, scratch, out),
            }
        }
    }

    fn encode_bytes_piece(
        &self,
        hf: &HfModel,
        piece: &str,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let b = piece.as_bytes();
        if let [b0] = *b {
            out.push(self.byte_tok[b0 as usize]);
            return;
        }
        if hf.parts.ignore_merges {
            let id = self.map.get_outlined(b, &self.bytes, &self.ends);
            if id != NONE {
                out.push(id);
                return;
            }
        }
        scratch.syms.clear();
        scratch
            .syms
            .extend(b.iter().map(|&x| Sym::new(self.byte_tok[x as usize])));
        hf_model::merge(&hf.pairs, &mut scratch.syms, &mut scratch.heap, out);
    }

    fn encode_spm_piece(
        &self,
        hf: &HfModel,
        piece: &str,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let p = &hf.parts;
        if p.ignore_merges {
            let id = self
                .map
                .get_outlined(piece.as_bytes(), &self.bytes, &self.ends);
            if id != NONE {
                out.push(id);
                return;
            }
        }
        scratch.syms.clear();
        let mut last_unk = false;
        let mut buf = [0u8; 4];
        for c in piece.chars() {
            let cb = c.encode_utf8(&mut buf).as_bytes();
            let id = self.map.get_outlined(cb, &self.bytes, &self.ends);
            if id != NONE {
                scratch.syms.push(Sym::new(id));
                last_unk = false;
                continue;
            }
            if p.byte_fallback && cb.iter().all(|&x| hf.byte_fallback_tok[x as usize] != NONE) {
                for &x in cb {
                    scratch
                        .syms
                        .push(Sym::new(hf.byte_fallback_tok[x as usize]));
                }
                last_unk = false;
                continue;
            }
            if let Some(unk) = p.unk_id {
                if !(p.fuse_unk && last_unk) {
                    scratch.syms.push(Sym::new(unk));
                }
                last_unk = true;
            }
        }
        hf_model::merge(&hf.pairs, &mut scratch.syms, &mut scratch.heap, out);
    }

    /// Appends the decoded bytes of one token to `out` (before the decoder's `Strip`).
    pub(super) fn append_token_text(
        &self,
        id: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), TokenizerError> {
        let t = self.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            vocab_size: self.vocab_size(),
        })?;
        match &self.hf {
            Some(hf) if hf.parts.model == HfModelKind::SentencePiece => {
                match hf.byte_of.get(id as usize) {
                    Some(&v) if v < 256 => out.push(v as u8),
                    _ => push_replacing_meta(t, out),
                }
            }
            _ => out.extend_from_slice(t),
        }
        Ok(())
    }

    /// Whether decoding drops the first space of the text (SentencePiece `Strip` decoder).
    pub(super) fn strips_leading_space(&self) -> bool {
        self.hf
            .as_ref()
            .is_some_and(|h| h.parts.strip_leading_space)
    }

    pub(super) fn decode_hf(
        &self,
        hf: &HfModel,
        ids: &[u32],
        out: &mut Vec<u8>,
    ) -> Result<(), TokenizerError> {
        let start = out.len();
        let mut result = Ok(());
        for &id in ids {
            result = self.append_token_text(id, out);
            if result.is_err() {
                break;
            }
        }
        if hf.parts.strip_leading_space && out.get(start) == Some(&b' ') {
            out.remove(start);
        }
        result
    }

    pub(super) fn decode_hf_to_string(
        &self,
        hf: &HfModel,
        ids: &[u32],
    ) -> Result<String, TokenizerError> {
        if hf.parts.model == HfModelKind::ByteLevel {
            let mut out = Vec::new();
            self.decode_hf(hf, ids, &mut out)?;
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        let mut s = String::new();
        let mut pending: Vec<u8> = Vec::new();
        let flush = |s: &mut String, pending: &mut Vec<u8>| {
            match std::str::from_utf8(pending) {
                Ok(t) => s.push_str(t),
                Err(_) => s.extend(std::iter::repeat_n('\u{FFFD}', pending.len())),
            }
            pending.clear();
        };
        let mut buf = Vec::new();
        for &id in ids {
            match hf.byte_of.get(id as usize) {
                Some(&v) if v < 256 => pending.push(v as u8),
                _ => {
                    flush(&mut s, &mut pending);
                    buf.clear();
                    self.append_token_text(id, &mut buf)?;
                    s.push_str(&String::from_utf8_lossy(&buf));
                }
            }
        }
        flush(&mut s, &mut pending);
        if hf.parts.strip_leading_space && s.starts_with(' ') {
            s.remove(0);
        }
        Ok(s)
    }
}

/// Appends `t` with every `▁` replaced by a space.
fn push_replacing_meta(t: &[u8], out: &mut Vec<u8>) {
    let mut rest = t;
    while let Some(k) = rest.windows(3).position(|w| w == META_BYTES) {
        out.extend_from_slice(&rest[..k]);
        out.push(b' ');
        rest = &rest[k + 3..];
    }
    out.extend_from_slice(rest);
}
