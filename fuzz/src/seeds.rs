//! The committed seeds (`fuzz/seeds/<target>/`), made by code so they stay in step with the
//! targets' input layouts. `tests/tests/fuzz_regressions.rs` has an ignored test that rewrites
//! them: `cargo test -p emberlm-tests --test fuzz_regressions -- --ignored write_seeds`.

use super::hf_config::{VARIANTS, write_variant};
use super::input::scratch_dir;
use emberlm_formats::tokenizer::{ENDOFTEXT, SpecialTokens, Tokenizer};

/// GPT-2's printable alphabet for byte `b` (`bytes_to_unicode` of OpenAI's encoder.py).
fn byte_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("a valid scalar")
}

fn alphabet(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_char(b)).collect()
}

/// A toy `vocab.json` + `merges.txt`: the 256 bytes, the merges `" t"`, `" th"`, `"he"`, `" the"`,
/// and `<|endoftext|>`.
pub fn toy_vocab() -> (String, String) {
    let merges: [(&[u8], &[u8]); 4] = [(b" ", b"t"), (b" t", b"h"), (b"h", b"e"), (b" th", b"e")];
    let mut entries: Vec<(String, usize)> =
        (0..=255u8).map(|b| (alphabet(&[b]), b as usize)).collect();
    let mut lines = vec!["#version: 0.2".to_string()];
    for (a, b) in merges {
        let joined = [a, b].concat();
        entries.push((alphabet(&joined), entries.len()));
        lines.push(format!("{} {}", alphabet(a), alphabet(b)));
    }
    entries.push((ENDOFTEXT.to_string(), entries.len()));
    let body: Vec<String> = entries
        .iter()
        .map(|(k, id)| format!("{}: {id}", serde_json_string(k)))
        .collect();
    (format!("{{{}}}", body.join(", ")), lines.join("\n") + "\n")
}

/// A JSON string literal (escaping quotes, backslashes and control characters).
fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn join(parts: &[&[u8]], sep: &[u8]) -> Vec<u8> {
    parts.join(sep)
}

/// Bytes for the `session` target's input cursor, in its reading order.
#[derive(Default)]
struct SessionSeed(Vec<u8>);

impl SessionSeed {
    fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn u16(mut self, x: u16) -> Self {
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    /// `Input::size` in range: tag < 0xF0, then the value.
    fn size(self, x: u16) -> Self {
        self.u8(0).u16(x)
    }
    /// `Input::f32` from its table: 0 → 0.0, 2 → 1.0, 5 → 0.7, 6 → 1.3.
    fn f32_special(self, index: u8) -> Self {
        self.u8(index)
    }
    fn token(self, t: u16) -> Self {
        self.u8(0).u16(t)
    }
    fn tokens(mut self, ts: &[u16]) -> Self {
        self = self.u8(ts.len() as u8);
        for &t in ts {
            self = self.token(t);
        }
        self
    }
    /// Model index, no patch, then options.
    fn header(
        self,
        model: u8,
        context: Option<u16>,
        f16_kv: bool,
        threads: u8,
        chunk: u16,
    ) -> Self {
        let s = self.u8(model).u8(0);
        let s = match context {
            None => s.u8(0),
            Some(c) => s.u8(0x80).size(c),
        };
        s.u8(f16_kv as u8).u8(threads).size(chunk).u8(0)
    }
    #[allow(clippy::too_many_arguments)]
    fn generate(
        self,
        prompt: &[u16],
        temperature: u8,
        top_k: Option<u16>,
        top_p: Option<u8>,
        max_tokens: u16,
        stop: Option<u16>,
        slide: bool,
    ) -> Self {
        let mut s = self.u8(3).tokens(prompt).f32_special(temperature);
        s = match top_k {
            Some(k) => s.u8(1).size(k),
            None => s.u8(0),
        };
        s = match top_p {
            Some(p) => s.u8(1).f32_special(p),
            None => s.u8(0),
        };
        s = s.f32_special(2); // repetition penalty 1.0
        s.0.extend_from_slice(&42u64.to_le_bytes());
        s = s.size(max_tokens);
        s = match stop {
            Some(t) => s.u8(1).token(t),
            None => s.u8(0),
        };
        s.u8(slide as u8).u8(0)
    }
}

/// Every seed: (target, file name, bytes).
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();

    // safetensors_import and hf_config: the fixed variants as exported.
    let dir = scratch_dir("seeds");
    let (vocab, merges) = toy_vocab();
    let sep = super::safetensors_import::SEP;
    for (i, (layout, cfg)) in VARIANTS.iter().enumerate() {
        let d = dir.join(i.to_string());
        write_variant(i, &d);
        let model = std::fs::read(d.join("model.safetensors")).expect("just written");
        let config = std::fs::read(d.join("config.json")).expect("just written");
        let tag = format!(
            "{}-{}l-{}",
            layout.name(),
            cfg.n_layers,
            if cfg.tied_head { "tied" } else { "untied" }
        );
        out.push((
            "safetensors_import",
            format!("{tag}.bin"),
            join(&[&model, &config], sep),
        ));
        if i == 0 {
            out.push((
                "safetensors_import",
                format!("{tag}-tokenizer.bin"),
                join(&[&model, &config, vocab.as_bytes(), merges.as_bytes()], sep),
            ));
            out.push((
                "safetensors_import",
                format!("{tag}-no-config.bin"),
                model.clone(),
            ));
        }
        out.push((
            "hf_config",
            format!("{tag}.json"),
            [&[i as u8, 0][..], &config].concat(),
        ));
        if i == 1 {
            let text = String::from_utf8_lossy(&config)
                .replace("\"n_inner\": null", "\"n_inner\": 32")
                .replace(
                    "\"tie_word_embeddings\": false",
                    "\"tie_word_embeddings\": true",
                );
            out.push((
                "hf_config",
                format!("{tag}-n-inner-tied.json"),
                [&[i as u8, 0xF4][..], text.as_bytes()].concat(),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    // hf_family: the tiny Qwen3's config, a Gemma 3 and a Llama 3 config, and a valid index.
    let family = super::hf_family::CONFIG;
    out.push((
        "hf_family",
        "qwen3.json".into(),
        [b"\0", family.as_bytes()].concat(),
    ));
    let gemma = family
        .replace("\"qwen3\"", "\"gemma3_text\"")
        .replace("\"hidden_act\": \"silu\"", "\"hidden_activation\": \"gelu_pytorch_tanh\", \"sliding_window\": 4, \"query_pre_attn_scalar\": 8, \"layer_types\": [\"full_attention\"]");
    out.push((
        "hf_family",
        "gemma3.json".into(),
        [b"\0", gemma.as_bytes()].concat(),
    ));
    let llama = family.replace("\"qwen3\"", "\"llama\"").replace(
        "\"rope_theta\": 10000",
        "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8}",
    );
    out.push((
        "hf_family",
        "llama3.json".into(),
        [b"\0", llama.as_bytes()].concat(),
    ));
    let index = super::hf_family::valid_index();
    out.push((
        "hf_family",
        "index.json".into(),
        [b"\x01", index.as_bytes()].concat(),
    ));

    // tokenizer_encode.
    let texts: [(&str, &[u8]); 6] = [
        ("english", b"Hello, world! It's 2024 and we'll see what they've done.\n\n  Indented   text\t\ttabs"),
        ("endoftext", b"first document<|endoftext|>second<|endoftext|><|endoftext|> <|endoftex"),
        ("unicode", "caf\u{e9} na\u{ef}ve \u{4f60}\u{597d} \u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} e\u{301} \u{661}\u{662}3".as_bytes()),
        ("spaces", b"a                                                                                                                              b\n\n\n\n  \r\n x"),
        ("invalid-utf8", b"ok \xff\xfe bad \xc3 half \xe2\x82 cut \xf0\x9f\x98"),
        ("digits-punct", b"3.14159 1,000,000 ... !!! ??? -- (x) [y] {z} @#$%^&*"),
    ];
    for (name, t) in texts {
        out.push(("tokenizer_encode", format!("{name}.txt"), t.to_vec()));
    }

    // tokenizer_decode: ids of texts, then a split character and unknown ids.
    let gpt2 = Tokenizer::gpt2();
    let ids_bytes = |ids: &[u32]| -> Vec<u8> { ids.iter().flat_map(|i| i.to_le_bytes()).collect() };
    let ids = gpt2.encode_to_vec(
        "Hello, caf\u{e9} \u{1f600}!<|endoftext|>",
        SpecialTokens::Allow,
    );
    out.push(("tokenizer_decode", "text.bin".into(), ids_bytes(&ids)));
    // The bytes of U+1F600 one token at a time (GPT-2's byte tokens), interrupted by an unknown id.
    let byte_ids: Vec<u32> = "\u{1f600}"
        .as_bytes()
        .iter()
        .map(|b| gpt2.encode_to_vec(&String::from_utf8_lossy(&[*b]), SpecialTokens::AsText)[0])
        .collect();
    let mut split = byte_ids[..2].to_vec();
    split.push(0x8000_0000 | 60000);
    split.extend_from_slice(&byte_ids[2..]);
    split.push(50256);
    out.push((
        "tokenizer_decode",
        "split-char-unknown.bin".into(),
        ids_bytes(&split),
    ));

    // tokenizer_parts: structured (mode 1), raw parts of a small tokenizer (mode 0), files (mode 2).
    out.push(("tokenizer_parts", "structured.bin".into(), {
        let mut s = vec![1u8, 0, 6];
        for (a, b) in [
            (32u16, 116u16),
            (256, 104),
            (104, 101),
            (257, 101),
            (116, 104),
            (259, 258),
        ] {
            s.extend_from_slice(&a.to_le_bytes());
            s.extend_from_slice(&b.to_le_bytes());
        }
        s.extend_from_slice(&[1, 1, 9, 0, 0, 1]);
        s.extend_from_slice(b"the theme: then, they<|endoftext|> the");
        s
    }));
    let small = Tokenizer::from_vocab_and_merges(vocab.as_bytes(), "v", merges.as_bytes(), "m")
        .expect("the toy vocabulary is valid");
    let parts = small.to_parts();
    out.push(("tokenizer_parts", "raw.bin".into(), {
        let mut s = vec![0u8];
        s.extend_from_slice(&(parts.tokens.len() as u16).to_le_bytes());
        s.extend_from_slice(&parts.tokens);
        s.extend_from_slice(&(parts.token_ends.len() as u16).to_le_bytes());
        for e in &parts.token_ends {
            s.extend_from_slice(&e.to_le_bytes());
        }
        s.push(parts.special_names.len() as u8);
        for n in &parts.special_names {
            s.push(n.len() as u8);
            s.extend_from_slice(n.as_bytes());
        }
        s.push(parts.special_ids.len() as u8);
        for id in &parts.special_ids {
            s.extend_from_slice(&id.to_le_bytes());
        }
        s.push(1);
        s.extend_from_slice(b" the theme<|endoftext|>then");
        s
    }));
    out.push((
        "tokenizer_parts",
        "files.bin".into(),
        [
            &[2u8][..],
            &join(
                &[
                    vocab.as_bytes(),
                    merges.as_bytes(),
                    b"the other theme<|endoftext|>",
                ],
                super::tokenizer_parts::SEP,
            ),
        ]
        .concat(),
    ));

    // dataset_readers.
    let datasets: [(&str, &[u8]); 4] = [
        ("sms.tsv", b"ham\tGo until jurong point, crazy..\nspam\tFree entry in 2 a wkly comp\nham\t\"quoted \"\"text\"\" here\"\n\nham\t\n"),
        ("labelled.csv", b"Label,Text\r\nspam,\"Win, now\r\nreally\"\r\nham,see you\r\n,no label\r\n"),
        ("alpaca.json", br#"[{"instruction": "Add.", "input": "1 and 2", "output": "3"}, {"instruction": "Say hi.", "output": "Hi"}]"#),
        ("bad-alpaca.json", br#"[{"instruction": "x", "input": null, "output": 3}]"#),
    ];
    for (name, d) in datasets {
        out.push(("dataset_readers", name.into(), d.to_vec()));
    }

    // session: model index = config * 3 + dtype (f32, f16, q8).
    let seeds = [
        (
            "f32-steps-prefill",
            SessionSeed::default()
                .header(0, None, false, 3, 4)
                .u8(0)
                .token(5)
                .u8(0)
                .token(36)
                .u8(2)
                .tokens(&[1, 2, 3, 4, 5, 6, 7])
                .u8(0)
                .token(37)
                .u8(5)
                .u8(2)
                .tokens(&[]),
        ),
        (
            "f16-generate-topk",
            SessionSeed::default()
                .header(1, Some(10), true, 3, 3)
                .generate(&[3, 1, 4], 5, Some(5), None, 12, None, false),
        ),
        (
            "q8-generate-slide",
            SessionSeed::default()
                .header(2, None, false, 1, 64)
                .generate(&[2, 7, 1, 8, 2, 8], 6, None, Some(5), 30, Some(0), true),
        ),
        (
            "tiny-greedy-context-full",
            SessionSeed::default()
                .header(3, Some(5), false, 3, 2)
                .generate(&[1, 2], 0, None, None, 10, None, false)
                .u8(5)
                .u8(2)
                .tokens(&[1, 2, 3, 4, 5, 6]),
        ),
        ("tiny-q8-reference-kernels", {
            let mut s = SessionSeed::default()
                .u8(5)
                .u8(0)
                .u8(0)
                .u8(1)
                .u8(3)
                .size(7)
                .u8(1);
            s = s.u8(2).tokens(&[19, 0, 19]).u8(0).token(20).generate(
                &[4],
                6,
                Some(20),
                Some(2),
                3,
                None,
                true,
            );
            s
        }),
    ];
    for (name, s) in seeds {
        out.push(("session", format!("{name}.bin"), s.0));
    }

    // kernels: every op, misaligned by 1 and 3 elements, shapes with 8-lane and 32-block tails.
    for op in 0..9u8 {
        for (off, r, c, start) in [(1u8, 5u8, 37u8, 0u8), (3, 9, 71, 2)] {
            let mut s = vec![op, off, r, c, start];
            s.extend((0..4096u32).map(|i| ((i * 37 + 11) % 251) as u8));
            out.push(("kernels", format!("op{op}-off{off}-{r}x{c}.bin"), s));
        }
    }

    // ember_reader seeds are .ember files made by the formats tests; they are committed as is.
    out
}
