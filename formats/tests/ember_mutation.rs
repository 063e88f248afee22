//! Mutation test of the `.ember` reader: valid files from the writer, randomly corrupted (bit
//! flips, byte sets, truncations, splices of two files, insertions and deletions, edits of the
//! length and count fields, random u64 writes), then parsed, viewed and read in full. The reader
//! must never panic: every case runs under `catch_unwind` and a panic fails the test with the seed
//! and the case number (and the input saved to the temp dir).
//!
//! `EMBER_MUTATIONS` sets the number of cases (default 3000), `EMBER_MUTATION_SEED` the seed.
//! CI runs `EMBER_MUTATIONS=100000 cargo test --release -p emberlm-formats --test ember_mutation`.

use emberlm_formats::config::GptConfig;
use emberlm_formats::ember::{
    AlignedBytes, Array, DType, EmberFile, EmberWriter, FormatError, TensorData, Value,
    parse_header, parse_header_except, write_f16s, write_f32s, write_q8,
};
use emberlm_formats::meta;
use emberlm_formats::quant::{dequantize_q8, q8_blocks_per_row, quantize_q8};
use half::f16;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

const DEFAULT_CASES: u64 = 3000;
const DEFAULT_SEED: u64 = 0x00e3_b3e7_1ae5_eed5;

/// splitmix64: small, fast, and reproducible everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Values that break naive size arithmetic.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    7,
    8,
    63,
    64,
    65,
    255,
    256,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 62,
    (1 << 63) - 1,
    u64::MAX,
];

/// A valid file and the (offset, width) of every length, count, rank, dimension and offset field
/// in its header, found by walking the header independently of the reader.
struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    fields: Vec<(usize, usize)>,
}

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    let mut x = [0u8; 8];
    x[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(x)
}

/// Walks a valid header (FORMAT.md's layout) and lists its size-bearing fields.
fn size_fields(b: &[u8]) -> Vec<(usize, usize)> {
    let mut f = vec![(16, 8), (24, 8)];
    let (n_meta, n_tensors) = (le(b, 16, 8), le(b, 24, 8));
    let mut p = 32;
    for _ in 0..n_meta {
        f.push((p, 4));
        p += 4 + le(b, p, 4) as usize;
        let tag = b[p];
        p += 1;
        p = skip_value(b, p, tag, &mut f);
    }
    for _ in 0..n_tensors {
        f.push((p, 4));
        p += 4 + le(b, p, 4) as usize;
        p += 1; // dtype
        f.push((p, 1));
        let rank = b[p] as usize;
        p += 1;
        for _ in 0..rank {
            f.push((p, 8));
            p += 8;
        }
        f.push((p, 8));
        p += 8;
    }
    f
}

fn skip_value(b: &[u8], mut p: usize, tag: u8, f: &mut Vec<(usize, usize)>) -> usize {
    match tag {
        1 | 2 | 5 => p + 4,
        3 | 4 | 6 => p + 8,
        7 => p + 1,
        8 | 9 => {
            f.push((p, 8));
            p + 8 + le(b, p, 8) as usize
        }
        10 => {
            let elem = b[p];
            f.push((p + 1, 8));
            let n = le(b, p + 1, 8);
            p += 9;
            for _ in 0..n {
                p = skip_value(b, p, elem, f);
            }
            p
        }
        _ => unreachable!("base files are valid"),
    }
}

/// A tiny tokenizer's `tokenizer.*` keys: the 256 bytes, three merges and `<|endoftext|>`.
fn tokenizer_keys(w: &mut EmberWriter) {
    let mut tokens: Vec<u8> = (0..=255u8).collect();
    let mut ends: Vec<u32> = (1..=256).collect();
    for t in [&b"th"[..], b"he", b"the", b"<|endoftext|>"] {
        tokens.extend_from_slice(t);
        ends.push(tokens.len() as u32);
    }
    w.set("tokenizer.kind", Value::Str("bpe-bytes".into()))
        .unwrap();
    w.set("tokenizer.tokens", Value::Bytes(tokens)).unwrap();
    w.set("tokenizer.token_ends", Value::Array(Array::U32(ends)))
        .unwrap();
    w.set(
        "tokenizer.special_names",
        Value::Array(Array::Str(vec!["<|endoftext|>".into()])),
    )
    .unwrap();
    w.set("tokenizer.special_ids", Value::Array(Array::U32(vec![259])))
        .unwrap();
}

/// Writes `w` with tensor data made by `rng`: random f32/f16, and Q8 / Q4 from the reference
/// quantizers.
fn finish(w: &EmberWriter, rng: &mut Rng) -> Vec<u8> {
    w.to_vec(|_, t, out| {
        let n = t.numel() as usize;
        let x: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
        match t.dtype {
            DType::F32 => write_f32s(out, &x),
            DType::F16 => {
                let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                write_f16s(out, &h)
            }
            DType::Q8 => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let rows = n.checked_div(cols).unwrap_or(0);
                let mut q = vec![0i8; n];
                let mut s = vec![f16::ZERO; rows * q8_blocks_per_row(cols)];
                quantize_q8(&x, cols, &mut q, &mut s).unwrap();
                write_q8(out, &q, &s)
            }
            DType::Q4 => {
                use emberlm_formats::quant::{Q4_BLOCK_BYTES, q4_blocks_per_row, quantize_q4};
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let rows = n.checked_div(cols).unwrap_or(0);
                let nb = q4_blocks_per_row(cols);
                let mut q = vec![0u8; rows * nb * Q4_BLOCK_BYTES];
                let mut s = vec![f16::ZERO; rows * nb];
                quantize_q4(&x, cols, &mut q, &mut s).unwrap();
                emberlm_formats::ember::write_q4(out, &q, &s)
            }
            DType::Q6 => {
                use emberlm_formats::quant::{Q6_BLOCK_BYTES, q6_blocks_per_row, quantize_q6};
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let rows = n.checked_div(cols).unwrap_or(0);
                let nb = q6_blocks_per_row(cols);
                let mut q = vec![0u8; rows * nb * Q6_BLOCK_BYTES];
                let mut s = vec![f16::ZERO; rows * nb];
                quantize_q6(&x, cols, &mut q, &mut s).unwrap();
                emberlm_formats::ember::write_q6(out, &q, &s)
            }
        }
    })
    .unwrap()
}

fn bases() -> Vec<Base> {
    let mut rng = Rng(42);
    let mut out = Vec::new();
    let mut push = |name, bytes: Vec<u8>| {
        let fields = size_fields(&bytes);
        out.push(Base {
            name,
            bytes,
            fields,
        });
    };

    // 1. A complete tiny model: config, task, prompt, tokenizer, every tensor of the config.
    let cfg = GptConfig {
        vocab_size: 260,
        context_length: 8,
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        qkv_bias: true,
        tied_head: false,
    };
    let mut w = EmberWriter::new();
    meta::put_config(&mut w, &cfg).unwrap();
    meta::put_task(
        &mut w,
        &meta::Task::Classifier {
            labels: vec!["not spam".into(), "spam".into()],
            readout: meta::Readout::Last,
            pad_id: 259,
            length: Some(64),
        },
    )
    .unwrap();
    meta::put_prompt(&mut w, &meta::PromptTemplate::alpaca()).unwrap();
    tokenizer_keys(&mut w);
    w.set("general.name", Value::Str("mutation-base".into()))
        .unwrap();
    for (i, (name, shape)) in cfg.tensor_shapes().into_iter().enumerate() {
        let dtype = [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q6][i % 5];
        w.add_tensor(&name, dtype, &shape).unwrap();
    }
    push("tiny model", finish(&w, &mut rng));

    // 2. Every metadata type, no tensors.
    let mut w = EmberWriter::new();
    let values = [
        Value::U32(3),
        Value::I32(-3),
        Value::U64(1 << 40),
        Value::I64(-1),
        Value::F32(0.5),
        Value::F64(-0.25),
        Value::Bool(true),
        Value::Str("héllo".into()),
        Value::Str(String::new()),
        Value::Bytes(vec![0, 1, 2, 255]),
        Value::Array(Array::U32(vec![1, 2])),
        Value::Array(Array::I32(vec![-1])),
        Value::Array(Array::U64(vec![])),
        Value::Array(Array::I64(vec![5, 6, 7])),
        Value::Array(Array::F32(vec![1.5])),
        Value::Array(Array::F64(vec![2.5, 3.5])),
        Value::Array(Array::Bool(vec![true, false, true])),
        Value::Array(Array::Str(vec!["a".into(), String::new(), "ccc".into()])),
    ];
    for (i, v) in values.into_iter().enumerate() {
        w.set(&format!("k{i:02}"), v).unwrap();
    }
    push("all metadata types", finish(&w, &mut rng));

    // 3. Odd tensors: scalars, zero-sized dims, Q8 tails, rank 8.
    let mut w = EmberWriter::new();
    let shapes: [(DType, &[usize]); 9] = [
        (DType::Q8, &[]),
        (DType::F32, &[0, 3]),
        (DType::Q8, &[3, 33]),
        (DType::F16, &[1]),
        (DType::Q8, &[2, 0]),
        (DType::F32, &[]),
        (DType::Q8, &[1, 1, 1, 1, 1, 1, 2, 65]),
        (DType::F16, &[5, 3]),
        (DType::F32, &[64]),
    ];
    for (i, (dtype, shape)) in shapes.into_iter().enumerate() {
        w.add_tensor(&format!("t{i}"), dtype, shape).unwrap();
    }
    push("odd tensors", finish(&w, &mut rng));

    // 4. Empty: just the fixed header.
    push("empty", finish(&EmberWriter::new(), &mut rng));

    // 5. One larger Q8 matrix and its bias.
    let mut w = EmberWriter::new();
    w.set("general.architecture", Value::Str("gpt2".into()))
        .unwrap();
    w.add_tensor("w", DType::Q8, &[7, 100]).unwrap();
    w.add_tensor("b", DType::F32, &[7]).unwrap();
    push("q8 matrix", finish(&w, &mut rng));
    out
}

/// One random corruption of `bytes` (`other` is another valid file, for splices).
fn mutate(rng: &mut Rng, base: &Base, other: &Base) -> (Vec<u8>, &'static str) {
    let mut b = base.bytes.clone();
    let kind = rng.below(9);
    let name = match kind {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            "bit flips"
        }
        1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] = [0, 0xff, 0x80, 0x7f, 1, rng.next() as u8][rng.below(6)];
            }
            "byte sets"
        }
        2 => {
            b.truncate(rng.below(b.len() + 1));
            "truncation"
        }
        3 => {
            let cut_a = rng.below(b.len() + 1);
            let cut_b = rng.below(other.bytes.len() + 1);
            b.truncate(cut_a);
            b.extend_from_slice(&other.bytes[cut_b..]);
            "splice"
        }
        4 | 5 => {
            // A size-bearing header field set to an interesting value, or nudged. (After a
            // first mutation, some fields may lie past the end: those are skipped.)
            let (at, width) = base.fields[rng.below(base.fields.len())];
            if at + width > b.len() {
                return (b, "length field (gone)");
            }
            let old = le(&b, at, width);
            let new = if rng.below(2) == 0 {
                INTERESTING[rng.below(INTERESTING.len())]
            } else {
                let delta = [1u64, 2, 8, 63, 64][rng.below(5)];
                if rng.below(2) == 0 {
                    old.wrapping_add(delta)
                } else {
                    old.wrapping_sub(delta)
                }
            };
            b[at..at + width].copy_from_slice(&new.to_le_bytes()[..width]);
            "length field"
        }
        6 => {
            let at = rng.below(b.len());
            let v = if rng.below(2) == 0 {
                rng.next()
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
            for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = b.get_mut(at + i) {
                    *x = byte;
                }
            }
            "u64 write"
        }
        7 => {
            let at = rng.below(b.len() + 1);
            let n = [1, 4, 8, 64][rng.below(4)];
            let fill = rng.next() as u8 & 1; // zeros or ones
            b.splice(at..at, std::iter::repeat_n(fill, n));
            "insertion"
        }
        _ => {
            let at = rng.below(b.len());
            let n = (1 + rng.below(8)).min(b.len() - at);
            b.drain(at..at + n);
            "deletion"
        }
    };
    (b, name)
}

/// Keys `exercise` also parses past without keeping them: a value of every type (k00..k17) and the
/// tokenizer's tables.
const SKIPPED: [&str; 21] = [
    "k00",
    "k01",
    "k02",
    "k03",
    "k04",
    "k05",
    "k06",
    "k07",
    "k08",
    "k09",
    "k10",
    "k11",
    "k12",
    "k13",
    "k14",
    "k15",
    "k16",
    "k17",
    "tokenizer.tokens",
    "tokenizer.token_ends",
    "tokenizer.special_names",
];

/// Parses, views every tensor and reads every element; returns whether the file was accepted.
fn exercise(bytes: &[u8], misalign: bool) -> Result<u64, FormatError> {
    let aligned;
    let view = if misalign {
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(bytes);
        aligned = AlignedBytes::copy_from(&shifted);
        &aligned[1..]
    } else {
        aligned = AlignedBytes::copy_from(bytes);
        &aligned[..]
    };
    // Skipping keys (as `Model` skips the tokenizer's tables) validates as the full parse does:
    // the same error, or the same header without those keys.
    let skipped = parse_header_except(view, &SKIPPED);
    match (parse_header(view), skipped) {
        (Err(full), Err(skipped)) => assert_eq!(full, skipped),
        (Ok(mut full), Ok(skipped)) => {
            full.metadata
                .retain(|(k, _)| !SKIPPED.contains(&k.as_str()));
            assert_eq!(full, skipped);
        }
        (full, skipped) => panic!("parse_header: {full:?}\nskipping: {skipped:?}"),
    }
    let file = EmberFile::parse(view)?;
    // The metadata conventions must refuse hostile values with errors too.
    let _ = meta::get_config(&file.header);
    let _ = meta::get_task(&file.header);
    let _ = meta::get_prompt(&file.header);
    let _ = meta::get_tokenizer(&file.header);
    for (k, _) in &file.header.metadata {
        let _ = file.header.require_u64(k);
        let _ = file.header.require_count(k, 1 << 20);
        let _ = file.header.require_str(k);
        let _ = file.header.require_bool(k);
    }
    let mut checksum = 0u64;
    for t in &file.header.tensors {
        assert_eq!(file.raw(t).len() as u64, t.size);
        assert_eq!(file.raw(t).as_ptr() as usize % 64, 0);
        match file.data(t)? {
            TensorData::F32(v) => v
                .iter()
                .for_each(|x| checksum = checksum.wrapping_add(x.to_bits() as u64)),
            TensorData::F16(v) => v
                .iter()
                .for_each(|x| checksum = checksum.wrapping_add(x.to_f32().to_bits() as u64)),
            TensorData::Q8 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; quants.len()];
                dequantize_q8(quants, scales, cols, &mut out)
                    .expect("a validated Q8 tensor has consistent quants and scales");
                out.iter()
                    .for_each(|x| checksum = checksum.wrapping_add(x.to_bits() as u64));
            }
            TensorData::Q4 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; t.numel() as usize];
                emberlm_formats::quant::dequantize_q4(quants, scales, cols, &mut out)
                    .expect("a validated Q4 tensor has consistent nibbles and scales");
                out.iter()
                    .for_each(|x| checksum = checksum.wrapping_add(x.to_bits() as u64));
            }
            TensorData::Q6 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; t.numel() as usize];
                emberlm_formats::quant::dequantize_q6(quants, scales, cols, &mut out)
                    .expect("a validated Q6 tensor has consistent blocks and scales");
                out.iter()
                    .for_each(|x| checksum = checksum.wrapping_add(x.to_bits() as u64));
            }
        }
    }
    Ok(checksum)
}

/// The variant name of an error, for the histogram.
fn variant(e: &FormatError) -> String {
    let s = format!("{e:?}");
    s.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn corrupted_files_never_panic() {
    let cases: u64 = std::env::var("EMBER_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seed: u64 = std::env::var("EMBER_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let bases = bases();
    // The bases themselves are valid and read in full, aligned or not (misaligned buffers of files
    // with tensors are refused with BufferMisaligned, the only accepted difference).
    for b in &bases {
        exercise(&b.bytes, false).unwrap_or_else(|e| panic!("base {:?}: {e}", b.name));
        match exercise(&b.bytes, true) {
            Ok(_) | Err(FormatError::BufferMisaligned { address_mod_64: 1 }) => {}
            Err(e) => panic!("base {:?} misaligned: {e:?}", b.name),
        }
    }

    // The first base reaches the metadata conventions' success paths too.
    let aligned = AlignedBytes::copy_from(&bases[0].bytes);
    let h = EmberFile::parse(&aligned).unwrap().header;
    meta::get_config(&h).unwrap();
    meta::get_task(&h).unwrap();
    assert!(meta::get_prompt(&h).unwrap().is_some());
    assert!(meta::get_tokenizer(&h).unwrap().is_some());

    let start = std::time::Instant::now();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for case in 0..cases {
        // Each case has its own stream, so a failure replays from (seed, case) alone.
        let mut rng = Rng(seed ^ case.wrapping_mul(0xd134_2543_de82_ef95));
        let base = &bases[rng.below(bases.len())];
        let other = &bases[rng.below(bases.len())];
        let (mut bytes, mut kind) = mutate(&mut rng, base, other);
        // Sometimes stack a second mutation.
        if rng.below(4) == 0 && !bytes.is_empty() {
            let stacked = Base {
                name: base.name,
                fields: base.fields.clone(),
                bytes,
            };
            (bytes, _) = mutate(&mut rng, &stacked, other);
            kind = "stacked";
        }
        let misalign = rng.below(16) == 0;
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&bytes, misalign)));
        let k = kinds.entry(kind).or_default();
        match outcome {
            Ok(Ok(_)) => {
                accepted += 1;
                k.0 += 1;
            }
            Ok(Err(e)) => {
                rejected += 1;
                k.1 += 1;
                *errors.entry(variant(&e)).or_default() += 1;
            }
            Err(_) => {
                let path = std::env::temp_dir().join(format!("ember-mutation-{seed}-{case}.bin"));
                let _ = std::fs::write(&path, &bytes);
                panic!(
                    "the reader panicked: seed {seed} case {case} (base {:?}, {kind}, misaligned {misalign}); \
                     input saved to {} — replay with EMBER_MUTATION_SEED={seed}",
                    base.name,
                    path.display()
                );
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "ember mutation: {cases} cases (seed {seed}) in {secs:.2}s: {rejected} rejected, {accepted} accepted"
    );
    eprintln!("  by mutation (accepted, rejected): {kinds:?}");
    eprintln!("  errors: {errors:?}");
    assert_eq!(accepted + rejected, cases);
    // A corruption that is caught most of the time shows the mutations reach the validation.
    if cases >= 1000 {
        assert!(
            rejected > cases / 2,
            "only {rejected} of {cases} corrupted files were rejected"
        );
    }
}
