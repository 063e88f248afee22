//! Generated text as it streams: decoded token by token (characters that span tokens come out
//! whole), printed as it comes, and held back just enough that a `--stop` string never shows.

use super::*;

/// The text of the tokens pushed so far, and how much of it went to stdout.
pub(crate) struct TextStream<'t> {
    /// `None` for a model without a tokenizer: ids are printed one per line instead.
    decoder: Option<StreamDecoder<'t>>,
    /// The text so far, a stop string and what followed it cut off.
    pub(crate) text: String,
    /// Bytes of `text` already printed.
    printed: usize,
    stops: Vec<String>,
    /// The longest stop string's length less one: the tail that could be the start of one.
    hold: usize,
    /// Print to stdout (false: only collect, e.g. for `--json`).
    print: bool,
    /// The stop string that ended the text, if one did.
    pub(crate) stopped_by: Option<String>,
    /// The last byte printed was not a newline.
    pub(crate) mid_line: bool,
    out: std::io::Stdout,
}

impl<'t> TextStream<'t> {
    /// `stops`: the non-empty stop strings.
    pub(crate) fn new(tok: Option<&'t Tokenizer>, stops: &[String], print: bool) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        TextStream {
            decoder: tok.map(StreamDecoder::new),
            text: String::new(),
            printed: 0,
            hold: stops.iter().map(|s| s.len()).max().unwrap_or(1) - 1,
            stops,
            print,
            stopped_by: None,
            mid_line: false,
            out: std::io::stdout(),
        }
    }

    /// Starts a new text (the next answer of a chat).
    pub(crate) fn clear(&mut self) {
        if let Some(d) = self.decoder.as_mut() {
            d.reset();
        }
        self.text.clear();
        self.printed = 0;
        self.stopped_by = None;
    }

    /// Adds a token; `Break` when the text now holds a stop string (cut off before it).
    pub(crate) fn push(&mut self, id: u32) -> std::io::Result<ControlFlow<()>> {
        let Some(d) = self.decoder.as_mut() else {
            if self.print {
                writeln!(self.out, "{id}")?;
                self.out.flush()?;
            }
            return Ok(ControlFlow::Continue(()));
        };
        let before = self.text.len();
        // An id the tokenizer does not know (a vocabulary smaller than the head) adds nothing.
        self.text.push_str(d.push(id).unwrap_or(""));
        self.added(before)
    }

    /// Flushes what the decoder still holds (an incomplete character) and prints the rest.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        if self.stopped_by.is_none() {
            if let Some(d) = self.decoder.as_mut() {
                let before = self.text.len();
                self.text.push_str(d.finish());
                if self.added(before)?.is_break() {
                    return Ok(());
                }
            }
        }
        self.emit(self.text.len())
    }

    /// Looks for a stop string in what `text[before..]` completed; prints what is safe.
    fn added(&mut self, before: usize) -> std::io::Result<ControlFlow<()>> {
        let mut first: Option<(usize, usize)> = None; // (position, stop index)
        for (i, s) in self.stops.iter().enumerate() {
            let from = floor_char_boundary(&self.text, before.saturating_sub(s.len() - 1));
            if let Some(p) = self.text[from..].find(s.as_str()) {
                if first.is_none_or(|(q, _)| from + p < q) {
                    first = Some((from + p, i));
                }
            }
        }
        if let Some((p, i)) = first {
            self.text.truncate(p);
            self.stopped_by = Some(self.stops[i].clone());
            self.emit(p)?;
            return Ok(ControlFlow::Break(()));
        }
        let safe = floor_char_boundary(&self.text, self.text.len().saturating_sub(self.hold));
        self.emit(safe.max(self.printed))?;
        Ok(ControlFlow::Continue(()))
    }

    /// Prints `text[printed..end]`.
    fn emit(&mut self, end: usize) -> std::io::Result<()> {
        let piece = &self.text[self.printed..end];
        self.printed = end;
        if self.print && !piece.is_empty() {
            self.out.write_all(piece.as_bytes())?;
            self.out.flush()?;
            self.mid_line = !piece.ends_with('\n');
        }
        Ok(())
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    (0..=i.min(s.len()))
        .rev()
        .find(|&j| s.is_char_boundary(j))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str], stops: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextStream::new(None, &stops, false);
        for p in pieces {
            let before = t.text.len();
            t.text.push_str(p);
            if t.added(before).unwrap().is_break() {
                break;
            }
        }
        (t.text, t.stopped_by)
    }

    #[test]
    fn a_stop_string_is_cut_off_even_across_pieces() {
        assert_eq!(
            run(&["ab", "c\n", "\nd"], &["\n\n"]),
            ("abc".into(), Some("\n\n".into()))
        );
        assert_eq!(run(&["xyz"], &["q"]), ("xyz".into(), None));
        // The earliest of several stops wins.
        assert_eq!(
            run(&["one two three"], &["three", "two"]),
            ("one ".into(), Some("two".into()))
        );
        // Multi-byte characters around the held-back tail.
        assert_eq!(
            run(&["naïve 日", "本語"], &["本語"]),
            ("naïve 日".into(), Some("本語".into()))
        );
    }
}
