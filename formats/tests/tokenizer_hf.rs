//! Golden tests of Hugging Face `tokenizer.json` loading against the `tokenizers` library.
//!
//! The fixtures (`fixtures/hf_tokenizers/`) are small tokenizers trained by `make_fixtures.py`
//! with `tokenizers`, one per kind (GPT-2-style byte-level, Llama-3-style, Qwen2-style,
//! SmolLM2-style, and SentencePiece-style with byte fallback as Llama 2 writes it with a
//! normalizer or with Metaspace, and as Gemma writes it), and `cases.json`: for several hundred strings, the ids
//! `tokenizers` gives without and with special tokens and the decoded text of both.

use emberlm_formats::ember::{AlignedBytes, Array, EmberFile, EmberWriter, FormatError, Value};
use emberlm_formats::meta::{get_tokenizer, put_tokenizer};
use emberlm_formats::tokenizer::{
    EncodeScratch, HfModelKind, HfPreTokenizer, Prepend, SpecialTokens, StreamDecoder, Tokenizer,
    TokenizerError,
};
use serde_json::Value as Json;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf_tokenizers");
const KINDS: [&str; 7] = [
    "gpt2",
    "llama3",
    "qwen2",
    "spm",
    "spm_metaspace",
    "smollm2",
    "gemma",
];

fn load(kind: &str) -> Tokenizer {
    Tokenizer::from_hf_json_file(format!("{DIR}/{kind}.json"))
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn cases() -> Vec<Json> {
    let text = std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap();
    let v: Json = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check_kind(kind: &str) {
    let tok = load(kind);
    let mut scratch = EncodeScratch::new();
    let mut failures = Vec::new();
    let all = cases();
    for case in &all {
        let text = case["text"].as_str().unwrap();
        let want = &case[kind];
        let mut got = Vec::new();
        tok.encode(text, SpecialTokens::Allow, &mut scratch, &mut got);
        let mut got_post = Vec::new();
        tok.encode_with_post(text, &mut scratch, &mut got_post);
        let dec = tok.decode_to_string(&got).unwrap();
        let dec_post = tok.decode_to_string(&got_post).unwrap();
        let mut streamed = String::new();
        let mut sd = StreamDecoder::new(&tok);
        for &id in &got_post {
            streamed.push_str(sd.push(id).unwrap());
        }
        streamed.push_str(sd.finish());
        let ok = got == ids(&want["ids"])
            && got_post == ids(&want["ids_special"])
            && dec == want["decoded"].as_str().unwrap()
            && dec_post == want["decoded_special"].as_str().unwrap()
            && (streamed == dec_post || dec_post.contains('\u{FFFD}'));
        if !ok {
            failures.push(format!(
                "{text:?}\n  ids  {got:?}\n  want {}\n  post {got_post:?}\n  want {}\n  dec {dec:?} / {}\n  dec_post {dec_post:?} / {}\n  streamed {streamed:?}",
                want["ids"], want["ids_special"], want["decoded"], want["decoded_special"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{kind}: {} of {} cases differ from tokenizers:\n{}",
        failures.len(),
        all.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}

#[test]
fn gpt2_style_matches_tokenizers() {
    check_kind("gpt2");
}

#[test]
fn llama3_style_matches_tokenizers() {
    check_kind("llama3");
}

#[test]
fn qwen2_style_matches_tokenizers() {
    check_kind("qwen2");
}

#[test]
fn sentencepiece_style_matches_tokenizers() {
    check_kind("spm");
}

#[test]
fn sentencepiece_metaspace_style_matches_tokenizers() {
    check_kind("spm_metaspace");
}

#[test]
fn gemma_style_matches_tokenizers() {
    check_kind("gemma");
}

#[test]
fn smollm2_style_matches_tokenizers() {
    check_kind("smollm2");
}

#[test]
fn decoding_arbitrary_ids_matches_tokenizers() {
    let text = std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap();
    let v: Json = serde_json::from_str(&text).unwrap();
    for kind in KINDS {
        let tok = load(kind);
        let picks = v["decode_cases"][kind].as_array().unwrap();
        assert!(picks.len() >= 50, "{kind}");
        for p in picks {
            let ids = ids(&p["ids"]);
            assert_eq!(
                tok.decode_to_string(&ids).unwrap(),
                p["decoded"].as_str().unwrap(),
                "{kind}: {ids:?}"
            );
        }
    }
}

#[test]
fn fixtures_load_as_the_expected_kinds() {
    let kinds: Vec<_> = KINDS
        .iter()
        .map(|k| {
            let p = load(k).hf_parts().unwrap();
            (p.model, p.pretokenizer)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (HfModelKind::ByteLevel, HfPreTokenizer::Gpt2),
            (HfModelKind::ByteLevel, HfPreTokenizer::Llama3),
            (HfModelKind::ByteLevel, HfPreTokenizer::Qwen2),
            (HfModelKind::SentencePiece, HfPreTokenizer::Whole),
            (HfModelKind::SentencePiece, HfPreTokenizer::Whole),
            (HfModelKind::ByteLevel, HfPreTokenizer::Gpt2Digits),
            (HfModelKind::SentencePiece, HfPreTokenizer::Whole),
        ]
    );
    let l3 = load("llama3");
    assert_eq!(l3.bos_ids(), [l3.special_id("<|begin_of_text|>").unwrap()]);
    assert!(l3.hf_parts().unwrap().ignore_merges);
    let spm = load("spm");
    assert_eq!(spm.bos_ids(), [1]);
    assert_eq!(
        load("spm_metaspace").hf_parts().unwrap().prepend,
        Prepend::MetaspaceFirst
    );
    assert!(spm.hf_parts().unwrap().byte_fallback);
}

fn edited(kind: &str, edit: impl FnOnce(&mut Json)) -> Vec<u8> {
    let text = std::fs::read_to_string(format!("{DIR}/{kind}.json")).unwrap();
    let mut v: Json = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn unsupported_and_malformed_files_give_typed_errors() {
    let unknown_regex = edited("llama3", |v| {
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{L}+|\\s+".into();
    });
    assert_eq!(
        Tokenizer::from_hf_json(&unknown_regex).unwrap_err(),
        TokenizerError::HfUnsupported {
            field: "pre_tokenizer.pretokenizers[0].pattern".into(),
            value: r#"{"Regex":"\\p{L}+|\\s+"}"#.into(),
        }
    );
    let wordpiece = edited("gpt2", |v| v["model"]["type"] = "WordPiece".into());
    assert_eq!(
        Tokenizer::from_hf_json(&wordpiece).unwrap_err(),
        TokenizerError::HfUnsupported {
            field: "model.type".into(),
            value: "\"WordPiece\"".into(),
        }
    );
    assert!(matches!(
        Tokenizer::from_hf_json(b"{\"model\": [1, 2"),
        Err(TokenizerError::HfJson { field, .. }) if field.is_empty()
    ));
    assert!(matches!(
        Tokenizer::from_hf_json(b"\0\0\0"),
        Err(TokenizerError::HfJson { .. })
    ));
    let single_word = edited("gpt2", |v| {
        v["added_tokens"][0]["single_word"] = true.into()
    });
    assert_eq!(
        Tokenizer::from_hf_json(&single_word).unwrap_err(),
        TokenizerError::HfUnsupported {
            field: "added_tokens[0].single_word".into(),
            value: "true".into(),
        }
    );
    let bad_merge = edited("gpt2", |v| v["model"]["merges"][0] = "nope zzz".into());
    assert_eq!(
        Tokenizer::from_hf_json(&bad_merge).unwrap_err(),
        TokenizerError::HfJson {
            field: "model.merges[0]".into(),
            detail: "\"nope\" is not in the vocabulary".into(),
        }
    );
    let gap = edited("spm", |v| {
        v["model"]["vocab"]
            .as_object_mut()
            .unwrap()
            .remove("<0x41>");
    });
    assert_eq!(
        Tokenizer::from_hf_json(&gap).unwrap_err(),
        TokenizerError::HfJson {
            field: "model.vocab".into(),
            detail: "no token has id 68".into(),
        }
    );
}

#[test]
fn garbage_never_panics() {
    let good = std::fs::read(format!("{DIR}/llama3.json")).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..300 {
        let mut b = good.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state as usize) % b.len();
            b[i] = (state >> 40) as u8;
        }
        if let Ok(t) = Tokenizer::from_hf_json(&b) {
            let ids = t.encode_to_vec("Hello DON'T 123 \u{1F600}", SpecialTokens::Allow);
            let _ = t.decode_to_string(&ids);
        }
    }
}

fn ember_round_trip(tok: &Tokenizer) -> Result<Option<Tokenizer>, FormatError> {
    let mut w = EmberWriter::new();
    put_tokenizer(&mut w, tok).unwrap();
    let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).unwrap());
    let file = EmberFile::parse(&bytes).unwrap();
    get_tokenizer(&file.header)
}

#[test]
fn every_kind_round_trips_through_ember_metadata() {
    let all = cases();
    for kind in KINDS {
        let tok = load(kind);
        let back = ember_round_trip(&tok).unwrap().unwrap();
        assert_eq!(back.hf_parts(), tok.hf_parts(), "{kind}");
        assert_eq!(back.to_parts(), tok.to_parts(), "{kind}");
        for case in &all {
            let text = case["text"].as_str().unwrap();
            let mut a = Vec::new();
            tok.encode_with_post(text, &mut EncodeScratch::new(), &mut a);
            let mut b = Vec::new();
            back.encode_with_post(text, &mut EncodeScratch::new(), &mut b);
            assert_eq!(a, b, "{kind}: {text:?}");
        }
    }
    // A GPT-2 vocabulary still writes the original kind.
    let mut w = EmberWriter::new();
    put_tokenizer(&mut w, Tokenizer::gpt2()).unwrap();
    let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).unwrap());
    let file = EmberFile::parse(&bytes).unwrap();
    assert_eq!(
        file.header.get("tokenizer.kind"),
        Some(&Value::Str("bpe-bytes".into()))
    );
    assert!(file.header.get("tokenizer.merges").is_none());
}

#[test]
fn hostile_ember_tokenizer_keys_give_typed_errors() {
    let tok = load("spm");
    let mut w = EmberWriter::new();
    put_tokenizer(&mut w, &tok).unwrap();
    let bytes = AlignedBytes::copy_from(&w.to_vec(|_, _, _| Ok(())).unwrap());
    let good = EmberFile::parse(&bytes).unwrap().header;
    let with = |key: &str, v: Value| {
        let mut h = good.clone();
        for (k, old) in h.metadata.iter_mut() {
            if k == key {
                *old = v.clone();
            }
        }
        get_tokenizer(&h).map(|_| ())
    };
    let expect_key = |r: Result<(), FormatError>, key: &str| match r {
        Err(FormatError::WrongType { key: k, .. }) => assert_eq!(k, key),
        other => panic!("{key}: {other:?}"),
    };
    expect_key(
        with("tokenizer.merges", Value::Array(Array::U32(vec![1, 2, 3]))),
        "tokenizer.merges",
    );
    expect_key(
        with("tokenizer.merges", Value::Array(Array::U32(vec![1, 99999]))),
        "tokenizer.tokens",
    );
    expect_key(
        with("tokenizer.pretokenizer", Value::Str("bert".into())),
        "tokenizer.pretokenizer",
    );
    expect_key(
        with(
            "tokenizer.post_prefix",
            Value::Array(Array::U32(vec![1 << 30])),
        ),
        "tokenizer.tokens",
    );
    expect_key(
        with("tokenizer.unk_id", Value::Array(Array::U32(vec![0, 1]))),
        "tokenizer.unk_id",
    );
    expect_key(
        with("tokenizer.kind", Value::Str("wordpiece".into())),
        "tokenizer.kind",
    );
    let mut h = good.clone();
    h.metadata.retain(|(k, _)| k != "tokenizer.nfc");
    assert_eq!(
        get_tokenizer(&h).map(|_| ()),
        Err(FormatError::MissingKey {
            key: "tokenizer.nfc".into()
        })
    );
}

/// ByteLevel `add_prefix_space: true` (RoBERTa-style): every segment between added tokens that
/// does not start with a space gets one. Expected pieces from `tokenizers` 0.23.3 on this file.
#[test]
fn add_prefix_space_applies_per_segment() {
    let json = edited("gpt2", |v| {
        v["pre_tokenizer"]["add_prefix_space"] = true.into()
    });
    let tok = Tokenizer::from_hf_json(&json).unwrap();
    let pieces = |s: &str| -> Vec<String> {
        tok.encode_to_vec(s, SpecialTokens::Allow)
            .iter()
            .map(|&id| tok.decode_to_string(&[id]).unwrap())
            .collect()
    };
    assert_eq!(pieces("a<|endoftext|>b"), [" a", "<|endoftext|>", " b"]);
    assert_eq!(pieces("hello"), [" he", "ll", "o"]);
    assert_eq!(pieces(" hello"), [" he", "ll", "o"]);
    assert_eq!(pieces("<|endoftext|> x"), ["<|endoftext|>", " ", "x"]);
    assert!(pieces("").is_empty());
}

/// An added token with `special: false` is still cut out of the text, is not special, and keeps
/// that through `.ember`.
#[test]
fn nonspecial_added_tokens_are_split_but_not_special() {
    let json = edited("qwen2", |v| v["added_tokens"][1]["special"] = false.into());
    let tok = Tokenizer::from_hf_json(&json).unwrap();
    let id = tok.special_id("<|im_start|>").unwrap();
    assert!(!tok.is_special(id));
    assert!(tok.is_special(tok.special_id("<|im_end|>").unwrap()));
    assert_eq!(
        tok.encode_to_vec("<|im_start|>", SpecialTokens::Allow),
        [id]
    );
    let back = ember_round_trip(&tok).unwrap().unwrap();
    assert_eq!(back.hf_parts().unwrap().nonspecial, [id]);
    assert!(!back.is_special(id));
}

/// Structured garbage: valid JSON with wrong ids, swapped merges, odd settings. Every file must
/// load or give an error, and whatever loads must encode, decode and round-trip without panic.
#[test]
fn structured_garbage_never_panics() {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    for kind in KINDS {
        let text = std::fs::read_to_string(format!("{DIR}/{kind}.json")).unwrap();
        let good: Json = serde_json::from_str(&text).unwrap();
        let keys: Vec<String> = good["model"]["vocab"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        for _ in 0..150 {
            let mut v = good.clone();
            for _ in 0..1 + next(3) {
                match next(8) {
                    0 => {
                        let k = &keys[next(keys.len())];
                        v["model"]["vocab"][k] = (next(3000) as u64).into();
                    }
                    1 => {
                        let m = v["model"]["merges"].as_array_mut().unwrap();
                        let i = next(m.len());
                        m[i] = Json::Array(vec![
                            keys[next(keys.len())].clone().into(),
                            keys[next(keys.len())].clone().into(),
                        ]);
                    }
                    2 => {
                        let a = v["added_tokens"].as_array_mut().unwrap();
                        let i = next(a.len());
                        a[i]["id"] = (next(3000) as u64).into();
                    }
                    3 => {
                        let a = v["added_tokens"].as_array_mut().unwrap();
                        let i = next(a.len());
                        a[i]["content"] = ["", "a", " ", "<", "\u{2581}"][next(5)].into();
                    }
                    4 => v["model"]["unk_token"] = keys[next(keys.len())].clone().into(),
                    5 => v["model"]["byte_fallback"] = (next(2) == 0).into(),
                    6 => v["model"]["ignore_merges"] = (next(2) == 0).into(),
                    _ => {
                        let m = v["model"]["merges"].as_array_mut().unwrap();
                        let (i, j) = (next(m.len()), next(m.len()));
                        m.swap(i, j);
                    }
                }
            }
            let bytes = serde_json::to_vec(&v).unwrap();
            if let Ok(t) = Tokenizer::from_hf_json(&bytes) {
                let mut ids = Vec::new();
                t.encode_with_post(
                    "Hello <s> DON'T 12345 \u{1F600} e\u{301} <|endoftext|>",
                    &mut EncodeScratch::new(),
                    &mut ids,
                );
                let _ = t.decode_to_string(&ids);
                let back = ember_round_trip(&t).unwrap().unwrap();
                assert_eq!(back.hf_parts(), t.hf_parts());
            }
        }
    }
}
