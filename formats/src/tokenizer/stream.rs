//! Token-by-token decoding that never emits part of a UTF-8 character.

use super::{Tokenizer, TokenizerError};

/// Decodes tokens one at a time into UTF-8 text, for streaming generation.
///
/// Bytes that may still become a valid character (an incomplete UTF-8 sequence at the end of the
/// bytes so far, at most 3) are held back until the next token completes them. Bytes that can no
/// longer be valid come out as U+FFFD, one per maximal invalid subsequence, exactly as
/// `String::from_utf8_lossy` does on the whole byte stream: the concatenation of everything
/// [`StreamDecoder::push`] and [`StreamDecoder::finish`] return equals
/// `String::from_utf8_lossy(decode(all ids))`.
///
/// All buffers are allocated in [`StreamDecoder::new`]; `push` and `finish` allocate nothing.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    /// Incomplete UTF-8 sequence carried over from earlier tokens.
    pending: [u8; 3],
    pending_len: usize,
    /// `pending` followed by the current token's bytes.
    work: Vec<u8>,
    /// Text returned by the last call.
    out: String,
    /// No text has come out of this stream yet (the SentencePiece `Strip` decoder drops the
    /// first space of the text).
    at_start: bool,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for `tok`'s ids, with buffers sized for its longest token.
    pub fn new(tok: &'t Tokenizer) -> Self {
        let work = tok.max_token_len() + 3;
        StreamDecoder {
            tok,
            pending: [0; 3],
            pending_len: 0,
            work: Vec::with_capacity(work),
            // Every byte becomes at most 3 bytes of text (U+FFFD is 3 bytes).
            out: String::with_capacity(3 * work),
            at_start: true,
        }
    }

    /// Decodes one more token and returns the text it completes (possibly empty). On an unknown
    /// id, returns the error and keeps its state (the id is skipped).
    pub fn push(&mut self, id: u32) -> Result<&str, TokenizerError> {
        self.work.clear();
        self.work
            .extend_from_slice(&self.pending[..self.pending_len]);
        self.tok.append_token_text(id, &mut self.work)?;
        self.pending_len = 0;
        self.out.clear();
        let mut rest = &self.work[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by the error's contract.
                    self.out
                        .push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            self.out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete sequence at the end: at most 3 bytes.
                            let keep = after.len().min(3);
                            self.pending[..keep].copy_from_slice(&after[..keep]);
                            self.pending_len = keep;
                            break;
                        }
                    }
                }
            }
        }
        if self.at_start && !self.out.is_empty() {
            self.at_start = false;
            if self.tok.strips_leading_space() && self.out.starts_with(' ') {
                self.out.remove(0);
            }
        }
        Ok(&self.out)
    }

    /// Ends the stream: held-back bytes (an incomplete character) come out as one U+FFFD.
    /// The decoder is then ready for a new stream.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if self.pending_len > 0 {
            self.out.push(char::REPLACEMENT_CHARACTER);
            self.pending_len = 0;
        }
        self.at_start = true;
        &self.out
    }

    /// Drops held-back bytes without emitting them (e.g. when a generation is abandoned).
    pub fn reset(&mut self) {
        self.pending_len = 0;
        self.at_start = true;
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        self.pending_len > 0
    }
}
