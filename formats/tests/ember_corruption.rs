//! The corruption matrix of the `.ember` reader: handcrafted malformed files, each asserting the
//! exact [`FormatError`] (the whole enum value), as `formats/FORMAT.md` specifies it.
//!
//! The files are built byte by byte by [`Spec`] below, not by `EmberWriter`, so these tests are
//! independent of the writer; one test checks that the writer produces the hand-built reference
//! file byte for byte. Crash inputs found by fuzzing live in `formats/tests/fixtures/ember-crashes/` and
//! are replayed by [`fuzz_crash_fixtures_never_panic`].

use emberlm_formats::ember::{
    AlignedBytes, DType, EmberFile, EmberWriter, FormatError, MAX_METADATA, MAX_TENSORS, Value,
    parse_header,
};
use std::path::Path;

// Value tags (FORMAT.md "Metadata values").
const T_U32: u8 = 1;
const T_U64: u8 = 3;
const T_BOOL: u8 = 7;
const T_STR: u8 = 8;
const T_BYTES: u8 = 9;
const T_ARRAY: u8 = 10;
// Dtype tags.
const D_F32: u8 = 0;
const D_F16: u8 = 1;
const D_Q8: u8 = 2;

/// One metadata entry, with its raw value bytes (everything after the type tag).
#[derive(Clone)]
struct Meta {
    key: Vec<u8>,
    tag: u8,
    value: Vec<u8>,
}

/// One tensor table entry; `rank` is stored as given (it may disagree with `shape.len()`).
#[derive(Clone)]
struct Tensor {
    name: Vec<u8>,
    dtype: u8,
    rank: u8,
    shape: Vec<u64>,
    offset: u64,
}

/// A whole file, field by field. `build` writes exactly these fields, little-endian, then zero
/// padding up to the next multiple of 64, then `data` (the data section, padding included).
#[derive(Clone)]
struct Spec {
    magic: Vec<u8>,
    version: u32,
    flags: u32,
    meta_count: u64,
    tensor_count: u64,
    meta: Vec<Meta>,
    tensors: Vec<Tensor>,
    data: Vec<u8>,
}

fn str32(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn str64(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn meta(key: &str, tag: u8, value: Vec<u8>) -> Meta {
    Meta {
        key: key.as_bytes().to_vec(),
        tag,
        value,
    }
}

fn tensor(name: &str, dtype: u8, shape: &[u64], offset: u64) -> Tensor {
    Tensor {
        name: name.as_bytes().to_vec(),
        dtype,
        rank: shape.len() as u8,
        shape: shape.to_vec(),
        offset,
    }
}

/// An array value: element tag, u64 count, then the raw elements.
fn array(elem: u8, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut v = vec![elem];
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(elems);
    v
}

fn u64s(xs: &[u64]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// The reference file's data section: w f32 (2, 3) at 0 (24 bytes), h f16 (5) at 64 (10 bytes),
// q Q8 (2, 33) at 128: 66 quants, 62 zero bytes, 2 rows x 2 blocks f16 scales (8 bytes) = 136.
const W_VALUES: [f32; 6] = [1.0, -2.0, 3.5, 0.0, 1e-3, 6.0];
const H_BITS: [u16; 5] = [0x3c00, 0xc000, 0x3800, 0x0000, 0x7bff]; // 1, -2, 0.5, 0, 65504
const Q_SCALES_BITS: [u16; 4] = [0x2c00, 0x3000, 0x3400, 0x3c00]; // 1/16, 1/8, 1/4, 1
const DATA_LEN: u64 = 264;

impl Spec {
    /// The reference file: three metadata entries (u32, string, array of u64) sorted by key and
    /// one tensor of each dtype. Every malformed file below is a small edit of it.
    fn reference() -> Spec {
        let mut data = Vec::new();
        for v in W_VALUES {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.resize(64, 0);
        for b in H_BITS {
            data.extend_from_slice(&b.to_le_bytes());
        }
        data.resize(128, 0);
        data.extend((0..66).map(|i| (i as i8 - 33) as u8));
        data.resize(128 + 128, 0);
        for b in Q_SCALES_BITS {
            data.extend_from_slice(&b.to_le_bytes());
        }
        assert_eq!(data.len() as u64, DATA_LEN);
        Spec {
            magic: b"EMBERLM\0".to_vec(),
            version: 1,
            flags: 0,
            meta_count: 3,
            tensor_count: 3,
            meta: vec![
                meta("a.int", T_U32, 7u32.to_le_bytes().to_vec()),
                meta("b.str", T_STR, str64(b"hi")),
                meta("c.arr", T_ARRAY, array(T_U64, 2, &u64s(&[1, 2]))),
            ],
            tensors: vec![
                tensor("w", D_F32, &[2, 3], 0),
                tensor("h", D_F16, &[5], 64),
                tensor("q", D_Q8, &[2, 33], 128),
            ],
            data,
        }
    }

    /// The header fields (no padding), and the offset where each section starts, named.
    fn header(&self) -> (Vec<u8>, Vec<(String, usize)>) {
        let mut h = Vec::new();
        let mut marks = Vec::new();
        let mut mark = |name: &str, h: &Vec<u8>| marks.push((name.to_string(), h.len()));
        mark("magic", &h);
        h.extend_from_slice(&self.magic);
        mark("version", &h);
        h.extend_from_slice(&self.version.to_le_bytes());
        mark("flags", &h);
        h.extend_from_slice(&self.flags.to_le_bytes());
        mark("metadata_count", &h);
        h.extend_from_slice(&self.meta_count.to_le_bytes());
        mark("tensor_count", &h);
        h.extend_from_slice(&self.tensor_count.to_le_bytes());
        for (i, m) in self.meta.iter().enumerate() {
            mark(&format!("meta{i}.key"), &h);
            h.extend_from_slice(&str32(&m.key));
            mark(&format!("meta{i}.type"), &h);
            h.push(m.tag);
            mark(&format!("meta{i}.value"), &h);
            h.extend_from_slice(&m.value);
        }
        for (i, t) in self.tensors.iter().enumerate() {
            mark(&format!("tensor{i}.name"), &h);
            h.extend_from_slice(&str32(&t.name));
            mark(&format!("tensor{i}.dtype"), &h);
            h.push(t.dtype);
            mark(&format!("tensor{i}.rank"), &h);
            h.push(t.rank);
            mark(&format!("tensor{i}.shape"), &h);
            h.extend_from_slice(&u64s(&t.shape));
            mark(&format!("tensor{i}.offset"), &h);
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        mark("header_end", &h);
        (h, marks)
    }

    fn header_end(&self) -> usize {
        self.header().0.len()
    }

    fn data_start(&self) -> usize {
        self.header_end().div_ceil(64) * 64
    }

    fn build(&self) -> Vec<u8> {
        let mut bytes = self.header().0;
        bytes.resize(self.data_start(), 0);
        bytes.extend_from_slice(&self.data);
        bytes
    }

    /// Where a named section starts in the built file.
    fn at(&self, section: &str) -> usize {
        let (_, marks) = self.header();
        marks
            .iter()
            .find(|(n, _)| n == section)
            .unwrap_or_else(|| panic!("no section {section}"))
            .1
    }
}

/// Parses `bytes` from a 64-byte aligned copy.
fn parse(bytes: &[u8]) -> Result<EmberFile<'static>, FormatError> {
    // Leaked so the view can outlive this function; a few KiB per test process.
    let aligned: &'static AlignedBytes = Box::leak(Box::new(AlignedBytes::copy_from(bytes)));
    EmberFile::parse(aligned)
}

fn truncated(field: &str, needed: u64, available: u64) -> FormatError {
    FormatError::Truncated {
        field: field.to_string(),
        needed,
        available,
    }
}

#[test]
fn reference_file_is_valid_and_has_the_documented_layout() {
    let spec = Spec::reference();
    // Hand-computed from FORMAT.md: 32-byte fixed header; metadata 14 + 20 + 35 bytes; tensor
    // table 31 + 23 + 31 bytes; header end 186, data at 192, data section 264 bytes.
    assert_eq!(spec.header_end(), 186);
    assert_eq!(spec.data_start(), 192);
    let bytes = spec.build();
    assert_eq!(bytes.len(), 192 + 264);
    let file = parse(&bytes).expect("the reference file must parse");
    let h = &file.header;
    assert_eq!(h.version, 1);
    assert_eq!(h.data_start, 192);
    assert_eq!(h.get("a.int"), Some(&Value::U32(7)));
    assert_eq!(h.get("b.str"), Some(&Value::Str("hi".into())));
    let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w", "h", "q"]);
    let sizes: Vec<_> = h.tensors.iter().map(|t| t.size).collect();
    assert_eq!(sizes, [24, 10, 136]);
}

/// The writer, given the same content, produces the hand-built reference file byte for byte:
/// the spec, the reader and the writer agree.
#[test]
fn writer_output_equals_the_hand_built_reference() {
    use emberlm_formats::ember::{Array, write_f16s, write_f32s, write_q8};
    use half::f16;
    let mut w = EmberWriter::new();
    // Declared out of order: the writer sorts metadata by key.
    w.set("c.arr", Value::Array(Array::U64(vec![1, 2])))
        .unwrap();
    w.set("a.int", Value::U32(7)).unwrap();
    w.set("b.str", Value::Str("hi".into())).unwrap();
    w.add_tensor("w", DType::F32, &[2, 3]).unwrap();
    w.add_tensor("h", DType::F16, &[5]).unwrap();
    w.add_tensor("q", DType::Q8, &[2, 33]).unwrap();
    let h: Vec<f16> = H_BITS.iter().map(|&b| f16::from_bits(b)).collect();
    let quants: Vec<i8> = (0..66).map(|i| i as i8 - 33).collect();
    let scales: Vec<f16> = Q_SCALES_BITS.iter().map(|&b| f16::from_bits(b)).collect();
    let bytes = w
        .to_vec(|i, _, out| match i {
            0 => write_f32s(out, &W_VALUES),
            1 => write_f16s(out, &h),
            _ => write_q8(out, &quants, &scales),
        })
        .unwrap();
    assert_eq!(bytes, Spec::reference().build());
}

/// Truncating the reference file inside every section yields the exact error for that field.
#[test]
fn truncation_at_every_section_boundary() {
    let spec = Spec::reference();
    let full = spec.build();
    let at = |s: &str| spec.at(s);
    let ds = spec.data_start();
    let he = spec.header_end();
    let cases: Vec<(&str, usize, FormatError)> = vec![
        ("empty file", 0, FormatError::BadMagic { found: vec![] }),
        (
            "inside magic",
            5,
            FormatError::BadMagic {
                found: b"EMBER".to_vec(),
            },
        ),
        (
            "inside version",
            at("version") + 2,
            truncated("header.version", 4, 2),
        ),
        ("before flags", at("flags"), truncated("header.flags", 4, 0)),
        (
            "inside metadata_count",
            at("metadata_count") + 5,
            truncated("header.metadata_count", 8, 5),
        ),
        (
            "inside tensor_count",
            at("tensor_count") + 7,
            truncated("header.tensor_count", 8, 7),
        ),
        (
            "inside a key length",
            at("meta0.key") + 3,
            truncated("metadata[0].key", 4, 3),
        ),
        (
            "inside a key",
            at("meta0.key") + 4 + 2,
            truncated("metadata[0].key", 5, 2),
        ),
        (
            "before a value type",
            at("meta0.type"),
            truncated("metadata[\"a.int\"].type", 1, 0),
        ),
        (
            "inside a u32 value",
            at("meta0.value") + 1,
            truncated("metadata[\"a.int\"].value", 4, 1),
        ),
        (
            "inside a string length",
            at("meta1.value") + 4,
            truncated("metadata[\"b.str\"].value", 8, 4),
        ),
        (
            "inside a string",
            at("meta1.value") + 8 + 1,
            truncated("metadata[\"b.str\"].value", 2, 1),
        ),
        (
            "before an array element type",
            at("meta2.value"),
            truncated("metadata[\"c.arr\"].value.element_type", 1, 0),
        ),
        (
            "inside an array count",
            at("meta2.value") + 1 + 6,
            truncated("metadata[\"c.arr\"].value.count", 8, 6),
        ),
        (
            "inside array elements",
            at("meta2.value") + 1 + 8 + 12,
            truncated("metadata[\"c.arr\"].value.elements", 16, 12),
        ),
        (
            "inside a tensor name",
            at("tensor1.name") + 4,
            truncated("tensors[1].name", 1, 0),
        ),
        (
            "before a dtype",
            at("tensor0.dtype"),
            truncated("tensors[\"w\"].dtype", 1, 0),
        ),
        (
            "before a rank",
            at("tensor0.rank"),
            truncated("tensors[\"w\"].rank", 1, 0),
        ),
        (
            "inside the second dimension",
            at("tensor0.shape") + 8 + 3,
            truncated("tensors[\"w\"].shape[1]", 8, 3),
        ),
        (
            "inside an offset",
            at("tensor2.offset") + 7,
            truncated("tensors[\"q\"].offset", 8, 7),
        ),
        (
            "at the end of the tensor table",
            he,
            truncated("header padding", (ds - he) as u64, 0),
        ),
        (
            "inside the header padding",
            he + 2,
            truncated("header padding", (ds - he) as u64, 2),
        ),
        (
            "at the start of the data section",
            ds,
            FormatError::OutOfBounds {
                tensor: "w".into(),
                end: 24,
                data_len: 0,
            },
        ),
        (
            "inside the first tensor",
            ds + 10,
            FormatError::OutOfBounds {
                tensor: "w".into(),
                end: 24,
                data_len: 10,
            },
        ),
        (
            "inside the padding after a tensor",
            ds + 30,
            FormatError::OutOfBounds {
                tensor: "h".into(),
                end: 74,
                data_len: 30,
            },
        ),
        (
            "inside Q8 quants",
            ds + 150,
            FormatError::OutOfBounds {
                tensor: "q".into(),
                end: DATA_LEN,
                data_len: 150,
            },
        ),
        (
            "inside Q8 scales (one byte short)",
            full.len() - 1,
            FormatError::OutOfBounds {
                tensor: "q".into(),
                end: DATA_LEN,
                data_len: DATA_LEN - 1,
            },
        ),
    ];
    let mut failures = Vec::new();
    for (name, len, want) in &cases {
        let got = parse(&full[..*len]).err();
        if got.as_ref() != Some(want) {
            failures.push(format!("{name} (len {len}): want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("truncation cases: {}", cases.len());
}

/// A file from one edit of the reference `Spec`.
fn edited(edit: impl FnOnce(&mut Spec)) -> Vec<u8> {
    let mut s = Spec::reference();
    edit(&mut s);
    s.build()
}

/// The reference file with one byte of the built file replaced.
fn poked(offset: usize, byte: u8) -> Vec<u8> {
    let mut b = Spec::reference().build();
    b[offset] = byte;
    b
}

/// Malformed files, each with the exact error the spec assigns to it.
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, FormatError)> {
    let r = Spec::reference();
    let ds = r.data_start();
    let he = r.header_end();
    // A minimal header: magic, version 1, flags 0, and the two counts.
    let head = |n_meta: u64, n_tensors: u64| {
        let mut b = b"EMBERLM\0".to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&n_meta.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b
    };
    let with_meta = |m: Meta| {
        edited(|s| {
            s.meta[0] = m;
        })
    };
    let with_tensor0 = |t: Tensor| {
        edited(|s| {
            s.tensors[0] = t;
        })
    };
    let key_field = "metadata[\"k\"].value";
    vec![
        // Header.
        (
            "bad magic (a GGUF file)",
            edited(|s| s.magic = b"GGUF\x03\0\0\0".to_vec()),
            FormatError::BadMagic {
                found: b"GGUF\x03\0\0\0".to_vec(),
            },
        ),
        (
            "future version 2",
            edited(|s| s.version = 2),
            FormatError::UnsupportedVersion {
                found: 2,
                supported: 1,
            },
        ),
        (
            "version 0",
            edited(|s| s.version = 0),
            FormatError::UnsupportedVersion {
                found: 0,
                supported: 1,
            },
        ),
        (
            "version is checked before flags",
            edited(|s| {
                s.version = 7;
                s.flags = 1;
            }),
            FormatError::UnsupportedVersion {
                found: 7,
                supported: 1,
            },
        ),
        (
            "nonzero flags",
            edited(|s| s.flags = 0x8000_0000),
            FormatError::UnknownFlags { found: 0x8000_0000 },
        ),
        // Counts: absurd values fail before any allocation or loop.
        (
            "metadata_count = u64::MAX",
            edited(|s| s.meta_count = u64::MAX),
            FormatError::TooMany {
                field: "header.metadata_count".into(),
                count: u64::MAX,
                max: MAX_METADATA,
            },
        ),
        (
            "metadata_count = cap + 1",
            head(MAX_METADATA + 1, 0),
            FormatError::TooMany {
                field: "header.metadata_count".into(),
                count: MAX_METADATA + 1,
                max: MAX_METADATA,
            },
        ),
        (
            "metadata_count at the cap, no entries",
            head(MAX_METADATA, 0),
            truncated("metadata[0].key", 4, 0),
        ),
        (
            "tensor_count = u64::MAX",
            edited(|s| s.tensor_count = u64::MAX),
            FormatError::TooMany {
                field: "header.tensor_count".into(),
                count: u64::MAX,
                max: MAX_TENSORS,
            },
        ),
        (
            "tensor_count at the cap, three entries present",
            edited(|s| s.tensor_count = MAX_TENSORS),
            // Entry 3 starts at the header padding (6 zero bytes): its name length reads 0.
            FormatError::BadLength {
                field: "tensors[3].name".into(),
                len: 0,
                max: 512,
            },
        ),
        (
            "metadata_count larger than the entries present",
            edited(|s| s.meta_count = 4),
            // The tensor table is read as a fourth metadata entry: tensors[0]'s name "w" becomes
            // its key and its dtype byte (0, f32) the value type tag.
            FormatError::UnknownValueType {
                field: "metadata[\"w\"].value".into(),
                tag: 0,
            },
        ),
        // Keys.
        (
            "empty key",
            with_meta(meta("", T_U32, vec![0; 4])),
            FormatError::BadLength {
                field: "metadata[0].key".into(),
                len: 0,
                max: 256,
            },
        ),
        (
            "key longer than 256 bytes",
            with_meta(meta(&"k".repeat(257), T_U32, vec![0; 4])),
            FormatError::BadLength {
                field: "metadata[0].key".into(),
                len: 257,
                max: 256,
            },
        ),
        (
            "key length u32::MAX",
            {
                let mut b = head(1, 0);
                b.extend_from_slice(&u32::MAX.to_le_bytes());
                b
            },
            FormatError::BadLength {
                field: "metadata[0].key".into(),
                len: u32::MAX as u64,
                max: 256,
            },
        ),
        (
            "invalid UTF-8 in a key",
            with_meta(Meta {
                key: b"a.\xffint".to_vec(),
                tag: T_U32,
                value: vec![0; 4],
            }),
            FormatError::InvalidUtf8 {
                field: "metadata[0].key".into(),
            },
        ),
        (
            "duplicate key",
            edited(|s| s.meta[1] = meta("a.int", T_U32, vec![1, 0, 0, 0])),
            FormatError::DuplicateKey {
                key: "a.int".into(),
            },
        ),
        // Values.
        (
            "unknown value type 0",
            with_meta(meta("k", 0, vec![0; 4])),
            FormatError::UnknownValueType {
                field: key_field.into(),
                tag: 0,
            },
        ),
        (
            "unknown value type 11",
            with_meta(meta("k", 11, vec![0; 4])),
            FormatError::UnknownValueType {
                field: key_field.into(),
                tag: 11,
            },
        ),
        (
            "bad bool",
            with_meta(meta("k", T_BOOL, vec![2])),
            FormatError::InvalidBool {
                field: key_field.into(),
                byte: 2,
            },
        ),
        (
            "bad bool inside an array",
            with_meta(meta("k", T_ARRAY, array(T_BOOL, 3, &[1, 0, 0x80]))),
            FormatError::InvalidBool {
                field: "metadata[\"k\"].value[2]".into(),
                byte: 0x80,
            },
        ),
        (
            "invalid UTF-8 in a string value",
            with_meta(meta("k", T_STR, str64(b"ok\xc3("))),
            FormatError::InvalidUtf8 {
                field: key_field.into(),
            },
        ),
        (
            "invalid UTF-8 in an array of strings",
            with_meta(meta("k", T_ARRAY, {
                let mut e = str64(b"fine");
                e.extend(str64(b"\xed\xa0\x80")); // an encoded surrogate
                array(T_STR, 2, &e)
            })),
            FormatError::InvalidUtf8 {
                field: "metadata[\"k\"].value[1]".into(),
            },
        ),
        // Absurd lengths and counts fail on the length field, before allocating: the error
        // reports what remains of the file after it (meta0 is re-keyed "k": the value starts at
        // 32 + 4 + 1 + 1 = 38).
        {
            let b = with_meta(meta("k", T_STR, u64::MAX.to_le_bytes().to_vec()));
            let rest = (b.len() - 46) as u64;
            (
                "string length u64::MAX",
                b,
                truncated(key_field, u64::MAX, rest),
            )
        },
        {
            let b = with_meta(meta("k", T_BYTES, u64::MAX.to_le_bytes().to_vec()));
            let rest = (b.len() - 46) as u64;
            (
                "bytes length u64::MAX",
                b,
                truncated(key_field, u64::MAX, rest),
            )
        },
        {
            let b = with_meta(meta("k", T_ARRAY, array(T_U64, u64::MAX, &[])));
            let rest = (b.len() - 47) as u64;
            let f = "metadata[\"k\"].value.elements";
            (
                "array count u64::MAX (u64 elements)",
                b,
                truncated(f, u64::MAX, rest),
            )
        },
        {
            let b = with_meta(meta("k", T_ARRAY, array(T_STR, u64::MAX, &[])));
            let rest = (b.len() - 47) as u64;
            let f = "metadata[\"k\"].value.elements";
            (
                "array count u64::MAX (strings)",
                b,
                truncated(f, u64::MAX, rest),
            )
        },
        {
            let b = with_meta(meta("k", T_ARRAY, array(T_BOOL, 1 << 61, &[])));
            let rest = (b.len() - 47) as u64;
            let f = "metadata[\"k\"].value.elements";
            (
                "array count 2^61 (bools, 1 byte each)",
                b,
                truncated(f, 1 << 61, rest),
            )
        },
        (
            "unknown array element type 9 (bytes)",
            with_meta(meta("k", T_ARRAY, array(T_BYTES, 0, &[]))),
            FormatError::UnknownValueType {
                field: "metadata[\"k\"].value.element_type".into(),
                tag: 9,
            },
        ),
        (
            "unknown array element type 10 (nested array)",
            with_meta(meta("k", T_ARRAY, array(T_ARRAY, 0, &[]))),
            FormatError::UnknownValueType {
                field: "metadata[\"k\"].value.element_type".into(),
                tag: 10,
            },
        ),
        (
            "unknown array element type 0",
            with_meta(meta("k", T_ARRAY, array(0, 0, &[]))),
            FormatError::UnknownValueType {
                field: "metadata[\"k\"].value.element_type".into(),
                tag: 0,
            },
        ),
        // Tensor table.
        (
            "empty tensor name",
            with_tensor0(tensor("", D_F32, &[2, 3], 0)),
            FormatError::BadLength {
                field: "tensors[0].name".into(),
                len: 0,
                max: 512,
            },
        ),
        (
            "tensor name longer than 512 bytes",
            with_tensor0(tensor(&"n".repeat(513), D_F32, &[2, 3], 0)),
            FormatError::BadLength {
                field: "tensors[0].name".into(),
                len: 513,
                max: 512,
            },
        ),
        (
            "invalid UTF-8 in a tensor name",
            with_tensor0(Tensor {
                name: b"\xc0\xafw".to_vec(), // an overlong encoding of '/'
                ..tensor("w", D_F32, &[2, 3], 0)
            }),
            FormatError::InvalidUtf8 {
                field: "tensors[0].name".into(),
            },
        ),
        (
            "unknown dtype 5",
            with_tensor0(tensor("w", 5, &[2, 3], 0)),
            FormatError::UnknownDtype {
                tensor: "w".into(),
                tag: 5,
            },
        ),
        (
            "rank 9",
            with_tensor0(tensor("w", D_F32, &[1, 1, 1, 1, 1, 1, 1, 2, 3], 0)),
            FormatError::RankTooLarge {
                tensor: "w".into(),
                rank: 9,
            },
        ),
        (
            "rank 255",
            with_tensor0(Tensor {
                rank: 255,
                ..tensor("w", D_F32, &[2, 3], 0)
            }),
            FormatError::RankTooLarge {
                tensor: "w".into(),
                rank: 255,
            },
        ),
        (
            "element count overflows",
            with_tensor0(tensor("w", D_F32, &[1 << 32, 1 << 32], 0)),
            FormatError::ShapeOverflow { tensor: "w".into() },
        ),
        (
            "byte size overflows (2^62 f32)",
            with_tensor0(tensor("w", D_F32, &[1 << 62], 0)),
            FormatError::ShapeOverflow { tensor: "w".into() },
        ),
        (
            "Q8 byte size overflows (u64::MAX quants)",
            with_tensor0(tensor("w", D_Q8, &[u64::MAX], 0)),
            FormatError::ShapeOverflow { tensor: "w".into() },
        ),
        (
            "Q8 scales overflow (2^63 rows of 1)",
            with_tensor0(tensor("w", D_Q8, &[1 << 63, 1], 0)),
            FormatError::ShapeOverflow { tensor: "w".into() },
        ),
        (
            "offset + size overflows",
            with_tensor0(tensor("w", D_F32, &[100], u64::MAX - 63)),
            FormatError::ShapeOverflow { tensor: "w".into() },
        ),
        (
            "duplicate tensor name",
            edited(|s| s.tensors[1].name = b"w".to_vec()),
            FormatError::DuplicateTensor { name: "w".into() },
        ),
        // Placement and coverage.
        (
            "misaligned offset",
            with_tensor0(tensor("w", D_F32, &[2, 3], 8)),
            FormatError::Misaligned {
                tensor: "w".into(),
                offset: 8,
            },
        ),
        (
            "offset past the end",
            edited(|s| s.tensors[2].offset = 1 << 40),
            FormatError::OutOfBounds {
                tensor: "q".into(),
                end: (1 << 40) + 136,
                data_len: DATA_LEN,
            },
        ),
        (
            "overlapping tensors",
            edited(|s| s.tensors[1].offset = 0),
            FormatError::Overlap {
                tensor: "h".into(),
                previous: "w".into(),
            },
        ),
        (
            "tensors out of table order",
            edited(|s| {
                s.tensors[1].offset = 128;
                s.tensors[2].offset = 0;
            }),
            FormatError::Gap {
                tensor: "h".into(),
                bytes: 64,
            },
        ),
        (
            "a gap before the first tensor",
            edited(|s| {
                s.tensors[0].offset = 64;
                s.tensors[1].offset = 128;
                s.tensors[2].offset = 192;
                let mut data = vec![0u8; 64];
                data.extend_from_slice(&s.data);
                s.data = data;
            }),
            FormatError::Gap {
                tensor: "w".into(),
                bytes: 64,
            },
        ),
        (
            "a gap between tensors",
            edited(|s| {
                s.tensors[2].offset = 192;
                let q = s.data.split_off(128);
                s.data.resize(192, 0);
                s.data.extend_from_slice(&q);
            }),
            FormatError::Gap {
                tensor: "q".into(),
                bytes: 64,
            },
        ),
        (
            "one trailing byte",
            edited(|s| s.data.push(0)),
            FormatError::TrailingBytes { count: 1 },
        ),
        (
            "trailing alignment padding",
            edited(|s| s.data.resize(320, 0)),
            FormatError::TrailingBytes { count: 56 },
        ),
        (
            "a data section without tensors",
            edited(|s| {
                s.tensor_count = 0;
                s.tensors.clear();
            }),
            FormatError::TrailingBytes { count: DATA_LEN },
        ),
        (
            "nonzero header padding",
            poked(he + 1, 0x20),
            FormatError::NonZeroPadding {
                offset: he as u64 + 1,
            },
        ),
        (
            "nonzero padding between tensors",
            poked(ds + 63, 1),
            FormatError::NonZeroPadding {
                offset: ds as u64 + 63,
            },
        ),
        (
            "nonzero padding inside a Q8 tensor",
            poked(ds + 128 + 66, 0xff),
            FormatError::NonZeroPadding {
                offset: ds as u64 + 128 + 66,
            },
        ),
    ]
}

#[test]
fn malformed_files_yield_the_exact_error() {
    let cases = malformed_cases();
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let got = parse(bytes).err();
        if got.as_ref() != Some(want) {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
        // Header validation alone gives the same verdict (no case depends on alignment).
        let got = parse_header(bytes).err();
        if got.as_ref() != Some(want) {
            failures.push(format!("{name} (parse_header): want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("malformed-file cases: {}", cases.len());
}

#[test]
fn misaligned_buffer_is_refused_but_its_header_is_readable() {
    let bytes = Spec::reference().build();
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&bytes);
    let aligned = AlignedBytes::copy_from(&shifted);
    let view = &aligned[1..];
    assert_eq!(
        EmberFile::parse(view).unwrap_err(),
        FormatError::BufferMisaligned { address_mod_64: 1 }
    );
    // The header itself needs no alignment.
    assert_eq!(parse_header(view).unwrap().tensors.len(), 3);
    // A file without tensors has nothing to view in place, so any address will do.
    let empty = edited(|s| {
        s.tensor_count = 0;
        s.tensors.clear();
        s.data.clear();
    });
    let mut shifted = vec![0u8; 3];
    shifted.extend_from_slice(&empty);
    let aligned = AlignedBytes::copy_from(&shifted);
    assert!(EmberFile::parse(&aligned[3..]).is_ok());
}

#[test]
fn zero_sized_tensors_take_no_bytes_but_keep_their_alignment() {
    // z (0, 4) f32 ends at 0; e (3, 0) Q8 sits at 0 too (align_up(0) = 0) with 0 bytes;
    // s () f32 (a scalar) at 0: 4 bytes, the whole data section.
    let bytes = edited(|s| {
        s.meta.clear();
        s.meta_count = 0;
        s.tensors = vec![
            tensor("z", D_F32, &[0, 4], 0),
            tensor("e", D_Q8, &[3, 0], 0),
            tensor("s", D_F32, &[], 0),
        ];
        s.tensor_count = 3;
        s.data = 2.5f32.to_le_bytes().to_vec();
    });
    let file = parse(&bytes).unwrap();
    let sizes: Vec<_> = file.header.tensors.iter().map(|t| t.size).collect();
    assert_eq!(sizes, [0, 0, 4]);
    let s = &file.header.tensors[2];
    assert_eq!(file.raw(s), 2.5f32.to_le_bytes());
    // A zero-sized tensor after a non-empty one must still sit at the next aligned offset.
    let bad = edited(|s| {
        s.meta.clear();
        s.meta_count = 0;
        s.tensors = vec![tensor("s", D_F32, &[], 0), tensor("z", D_F32, &[0], 4)];
        s.tensor_count = 2;
        s.data = vec![0; 4];
    });
    assert_eq!(
        parse(&bad).unwrap_err(),
        FormatError::Misaligned {
            tensor: "z".into(),
            offset: 4
        }
    );
}

/// Inputs that once crashed the fuzzer (or the mutation test) are replayed here: none may panic.
#[test]
fn fuzz_crash_fixtures_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ember-crashes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no crash fixtures at {}", dir.display());
        return;
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let aligned = AlignedBytes::copy_from(&bytes);
        let outcome = std::panic::catch_unwind(|| {
            if let Ok(file) = EmberFile::parse(&aligned) {
                for t in &file.header.tensors {
                    let _ = file.data(t);
                }
            }
        });
        assert!(outcome.is_ok(), "{} panics", path.display());
        n += 1;
    }
    eprintln!("replayed {n} crash fixtures from {}", dir.display());
}

/// `raw` and `data` promise an empty view, not a panic, for a table entry that does not come from
/// this file (the fields of `TensorEntry` are public).
#[test]
fn foreign_table_entries_yield_empty_views() {
    use emberlm_formats::ember::{TensorData, TensorEntry};
    let bytes = Spec::reference().build();
    let file = parse(&bytes).unwrap();
    // (dtype, shape, offset, size, the raw bytes expected)
    let foreign = [
        (DType::F32, vec![4], u64::MAX - 63, 16, 0),
        (DType::F32, vec![u64::MAX], 0, u64::MAX, 0),
        (DType::Q8, vec![3, 1 << 62], 1 << 50, 1 << 62, 0),
        (DType::F16, vec![2], 1 << 20, 4, 0),
        // In range, but the shape overflows: the raw bytes exist, the typed views are empty.
        (DType::Q8, vec![1 << 40, 1 << 40], 0, 64, 64),
        (DType::Q4, vec![3, 1 << 62], 1 << 50, 1 << 62, 0),
        (DType::Q4, vec![1 << 40, 1 << 40], 0, 64, 64),
        (DType::Q6, vec![3, 1 << 62], 1 << 50, 1 << 62, 0),
        (DType::Q6, vec![1 << 40, 1 << 40], 0, 64, 64),
    ];
    for (dtype, shape, offset, size, raw_len) in foreign {
        let t = TensorEntry {
            name: "foreign".into(),
            dtype,
            shape,
            offset,
            size,
        };
        assert_eq!(file.raw(&t).len(), raw_len, "{t:?}");
        match file.data(&t) {
            Ok(TensorData::F32(v)) => assert!(v.is_empty()),
            Ok(TensorData::F16(v)) => assert!(v.is_empty()),
            Ok(TensorData::Q8 { quants, scales }) => {
                assert!(quants.is_empty() && scales.is_empty())
            }
            Ok(TensorData::Q4 { quants, scales }) => {
                assert!(quants.is_empty() && scales.is_empty())
            }
            Ok(TensorData::Q6 { quants, scales }) => {
                assert!(quants.is_empty() && scales.is_empty())
            }
            Err(_) => {}
        }
    }
}

/// The fuzzer's committed seeds (`fuzz/seeds/ember_reader/`) stay valid files, so fuzzing starts
/// from inputs that reach every stage of the reader.
#[test]
fn fuzz_seeds_are_valid_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/ember_reader");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let file = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for t in &file.header.tensors {
            file.data(t).unwrap();
        }
        n += 1;
    }
    assert!(n >= 1, "no seeds in {}", dir.display());
}

/// The worked example of `formats/FORMAT.md` (§11) is what the writer and the reference quantizer
/// produce, byte for byte, and what the reader accepts.
#[test]
fn format_md_worked_example_matches_the_writer() {
    use emberlm_formats::ember::{TensorData, write_f32s, write_q8};
    use emberlm_formats::quant::quantize_q8;
    use half::f16;
    let md =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("FORMAT.md")).unwrap();
    let example = md.split("## 11. A worked example").nth(1).unwrap();
    let mut documented = Vec::new();
    for line in example.lines() {
        let Some((addr, rest)) = line.split_once(": ") else {
            continue;
        };
        if addr.len() != 8 || !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        assert_eq!(usize::from_str_radix(addr, 16).unwrap(), documented.len());
        let hex: String = rest.split("  ").next().unwrap().replace(' ', "");
        for i in (0..hex.len()).step_by(2) {
            documented.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
        }
    }
    assert_eq!(documented.len(), 322);

    let mut w = EmberWriter::new();
    w.set("gpt2.dim", Value::U64(2)).unwrap();
    w.set("general.name", Value::Str("tiny".into())).unwrap();
    w.add_tensor("b", DType::F32, &[2]).unwrap();
    w.add_tensor("w", DType::Q8, &[1, 2]).unwrap();
    let (mut q, mut s) = ([0i8; 2], [f16::ZERO; 1]);
    quantize_q8(&[0.5, -1.0], 2, &mut q, &mut s).unwrap();
    assert_eq!((q, s[0].to_bits()), ([63, -127], 0x2009));
    let bytes = w
        .to_vec(|i, _, out| match i {
            0 => write_f32s(out, &[1.0, -2.0]),
            _ => write_q8(out, &q, &s),
        })
        .unwrap();
    assert_eq!(bytes, documented);
    let file = parse(&documented).unwrap();
    assert_eq!(file.header.data_start, 0xc0);
    let wq = file.header.tensor("w").unwrap();
    assert_eq!((wq.offset, wq.size), (64, 66));
    assert!(matches!(
        file.data(wq).unwrap(),
        TensorData::Q8 { quants: [63, -127], scales: [s] } if s.to_bits() == 0x2009
    ));
}

/// Q4 (tag 3): the size rule of FORMAT.md §5 (nibbles, zero padding to 64, scales), a file that
/// round-trips through the writer and the typed view, and a nonzero byte in the padding between
/// the nibbles and the scales, or a short file, reported exactly.
#[test]
fn q4_tensors_sizes_padding_and_truncation() {
    use emberlm_formats::ember::{TensorData, write_f32s, write_q4};
    use emberlm_formats::quant::{Q4_BLOCK_BYTES, q4_blocks_per_row, quantize_q4};
    use half::f16;
    // (shape, size): (2, 33): 2 rows x 2 blocks x 16 = 64 nibble bytes + 4 scales x 2 = 72;
    // (3, 32): 48 -> 64 + 6 = 70; rank 0: 16 -> 64 + 2 = 66; a 0 dimension: 0.
    for (shape, size) in [
        (vec![2u64, 33], 72u64),
        (vec![3, 32], 70),
        (vec![], 66),
        (vec![0, 5], 0),
        (vec![4, 0], 0),
    ] {
        assert_eq!(DType::Q4.data_size(&shape), Some(size), "{shape:?}");
    }
    assert_eq!(DType::Q4.data_size(&[u64::MAX, 64]), None);
    assert_eq!(DType::from_tag(3), Some(DType::Q4));

    let x: Vec<f32> = (0..99).map(|i| (i as f32 * 0.37).sin()).collect();
    let (r, c) = (3usize, 33usize);
    let nb = q4_blocks_per_row(c);
    let mut q = vec![0u8; r * nb * Q4_BLOCK_BYTES];
    let mut sc = vec![f16::ZERO; r * nb];
    quantize_q4(&x, c, &mut q, &mut sc).unwrap();
    let mut w = EmberWriter::new();
    w.add_tensor("b", DType::F32, &[3]).unwrap();
    w.add_tensor("w", DType::Q4, &[3, 33]).unwrap();
    let bytes = w
        .to_vec(|i, _, out| match i {
            0 => write_f32s(out, &[1.0, 2.0, 3.0]),
            _ => write_q4(out, &q, &sc),
        })
        .unwrap();
    let file = parse(&bytes).unwrap();
    let e = file.header.tensor("w").unwrap().clone();
    assert_eq!((e.offset, e.size), (64, 128 + 12));
    match file.data(&e).unwrap() {
        TensorData::Q4 { quants, scales } => {
            assert_eq!(quants, &q[..]);
            assert_eq!(scales, &sc[..]);
            assert_eq!(scales.as_ptr() as usize % 64, 0);
        }
        other => panic!("{other:?}"),
    }
    // A nonzero byte between the 96 nibble bytes and the scales at 128.
    let at = (file.header.data_start + e.offset + 100) as usize;
    let mut bad = bytes.clone();
    bad[at] = 1;
    assert_eq!(
        parse(&bad).unwrap_err(),
        FormatError::NonZeroPadding { offset: at as u64 }
    );
    // Cut inside the scales.
    let cut = &bytes[..bytes.len() - 1];
    assert!(matches!(
        parse(cut).unwrap_err(),
        FormatError::OutOfBounds { tensor, .. } if tensor == "w"
    ));
}

/// Q6 (tag 4): the size rule of FORMAT.md §5 (24-byte blocks, zero padding to 64, scales), a file
/// that round-trips through the writer and the typed view (levels as quantized), and a nonzero
/// byte in the padding between the blocks and the scales, or a short file, reported exactly.
#[test]
fn q6_tensors_sizes_padding_and_truncation() {
    use emberlm_formats::ember::{TensorData, write_f32s, write_q6};
    use emberlm_formats::quant::{Q6_BLOCK_BYTES, dequantize_q6, q6_blocks_per_row, quantize_q6};
    use half::f16;
    // (shape, size): (2, 33): 2 rows x 2 blocks x 24 = 96 block bytes + 4 scales x 2 = 136;
    // (3, 32): 72 -> 128 + 6 = 134; rank 0: 24 -> 64 + 2 = 66; a 0 dimension: 0.
    for (shape, size) in [
        (vec![2u64, 33], 136u64),
        (vec![3, 32], 134),
        (vec![], 66),
        (vec![0, 5], 0),
        (vec![4, 0], 0),
    ] {
        assert_eq!(DType::Q6.data_size(&shape), Some(size), "{shape:?}");
    }
    assert_eq!(DType::Q6.data_size(&[u64::MAX, 64]), None);
    assert_eq!(DType::from_tag(4), Some(DType::Q6));
    assert_eq!(DType::Q6.name(), "q6");
    assert_eq!(DType::Q6.tag(), 4);

    let x: Vec<f32> = (0..99).map(|i| (i as f32 * 0.37).sin()).collect();
    let (r, c) = (3usize, 33usize);
    let nb = q6_blocks_per_row(c);
    let mut q = vec![0u8; r * nb * Q6_BLOCK_BYTES];
    let mut sc = vec![f16::ZERO; r * nb];
    quantize_q6(&x, c, &mut q, &mut sc).unwrap();
    let mut w = EmberWriter::new();
    w.add_tensor("b", DType::F32, &[3]).unwrap();
    w.add_tensor("w", DType::Q6, &[3, 33]).unwrap();
    let bytes = w
        .to_vec(|i, _, out| match i {
            0 => write_f32s(out, &[1.0, 2.0, 3.0]),
            _ => write_q6(out, &q, &sc),
        })
        .unwrap();
    let file = parse(&bytes).unwrap();
    let e = file.header.tensor("w").unwrap().clone();
    // 3 x 2 x 24 = 144 block bytes -> 192, + 6 scales x 2.
    assert_eq!((e.offset, e.size), (64, 192 + 12));
    match file.data(&e).unwrap() {
        TensorData::Q6 { quants, scales } => {
            assert_eq!(quants, &q[..]);
            assert_eq!(scales, &sc[..]);
            assert_eq!(scales.as_ptr() as usize % 64, 0);
            let mut y = vec![0f32; 99];
            dequantize_q6(quants, scales, c, &mut y).unwrap();
            // 6 bits: within one step of each block's scale (about |x|max / 32).
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                let d = scales[i / c * nb + i % c / 32].to_f32().abs();
                assert!((a - b).abs() <= d, "{i}: {a} vs {b}");
            }
        }
        other => panic!("{other:?}"),
    }
    // A nonzero byte between the 144 block bytes and the scales at 192.
    let at = (file.header.data_start + e.offset + 150) as usize;
    let mut bad = bytes.clone();
    bad[at] = 1;
    assert_eq!(
        parse(&bad).unwrap_err(),
        FormatError::NonZeroPadding { offset: at as u64 }
    );
    // Cut inside the scales.
    let cut = &bytes[..bytes.len() - 1];
    assert!(matches!(
        parse(cut).unwrap_err(),
        FormatError::OutOfBounds { tensor, .. } if tensor == "w"
    ));
}
