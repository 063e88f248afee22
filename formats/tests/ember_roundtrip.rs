//! Write → read round trips of the `.ember` file (property tests), determinism, and the atomic
//! write protocol of `EmberWriter::write_file`.
//!
//! Sizes and layout are recomputed here from `formats/FORMAT.md`'s rules, not taken from the
//! writer, so a writer/reader pair that agreed on a wrong layout would still fail.

use emberlm_formats::ember::{
    AlignedBytes, Array, DType, EmberFile, EmberWriter, FormatError, MappedFile, TensorData,
    TensorEntry, Value, write_f16s, write_f32s, write_q8,
};
use half::f16;
use proptest::prelude::*;
use std::io::{self, Write};
use std::path::Path;

/// A tensor to write: its name, dtype, shape and data (raw little-endian bytes for f32 and f16;
/// for Q8 the quants and the scales separately).
#[derive(Clone, Debug)]
struct TensorCase {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    scales: Vec<u16>,
}

impl TensorCase {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// (rows, cols): cols is the last dimension, a scalar is 1 × 1 (FORMAT.md, "Q8").
    fn rows_cols(&self) -> (usize, usize) {
        match self.shape.split_last() {
            None => (1, 1),
            Some((&c, rest)) => (rest.iter().product(), c),
        }
    }

    /// The data size by FORMAT.md's table, computed independently of `DType::data_size`.
    fn expected_size(&self) -> u64 {
        let n = self.numel() as u64;
        match self.dtype {
            DType::F32 => 4 * n,
            DType::F16 => 2 * n,
            DType::Q8 => {
                let (r, c) = self.rows_cols();
                n.div_ceil(64) * 64 + 2 * (r * c.div_ceil(32)) as u64
            }
            DType::Q4 if n == 0 => 0,
            DType::Q4 => {
                let (r, c) = self.rows_cols();
                let blocks = (r * c.div_ceil(32)) as u64;
                (16 * blocks).div_ceil(64) * 64 + 2 * blocks
            }
            DType::Q6 if n == 0 => 0,
            DType::Q6 => {
                let (r, c) = self.rows_cols();
                let blocks = (r * c.div_ceil(32)) as u64;
                (24 * blocks).div_ceil(64) * 64 + 2 * blocks
            }
        }
    }

    fn fill(&self, out: &mut dyn Write) -> io::Result<()> {
        match self.dtype {
            DType::F32 => {
                let v: Vec<f32> = self
                    .bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                write_f32s(out, &v)
            }
            DType::F16 => {
                let v: Vec<f16> = self
                    .bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())))
                    .collect();
                write_f16s(out, &v)
            }
            DType::Q8 => {
                let q: Vec<i8> = self.bytes.iter().map(|&b| b as i8).collect();
                let s: Vec<f16> = self.scales.iter().map(|&b| f16::from_bits(b)).collect();
                write_q8(out, &q, &s)
            }
            DType::Q4 => {
                let s: Vec<f16> = self.scales.iter().map(|&b| f16::from_bits(b)).collect();
                emberlm_formats::ember::write_q4(out, &self.bytes, &s)
            }
            DType::Q6 => {
                let s: Vec<f16> = self.scales.iter().map(|&b| f16::from_bits(b)).collect();
                emberlm_formats::ember::write_q6(out, &self.bytes, &s)
            }
        }
    }
}

/// A deterministic byte stream (splitmix64) for tensor contents.
fn bytes_from_seed(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 1 => Just(1usize), 6 => 1usize..40, 1 => Just(64usize)]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::Q8),
        Just(DType::Q4),
        Just(DType::Q6)
    ]
}

fn tensors() -> impl Strategy<Value = Vec<TensorCase>> {
    proptest::collection::vec(
        (
            dtype(),
            proptest::collection::vec(dim(), 0..=4),
            any::<u64>(),
        ),
        0..=8,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (dtype, mut shape, seed))| {
                // Keep every tensor small: at most ~4k elements.
                while shape.iter().product::<usize>() > 4096 {
                    shape.pop();
                }
                let mut t = TensorCase {
                    name: format!("blocks.{i}.τ{}", shape.len()), // non-ASCII on purpose
                    dtype,
                    shape,
                    bytes: Vec::new(),
                    scales: Vec::new(),
                };
                let n = t.numel();
                t.bytes = match dtype {
                    DType::F32 => bytes_from_seed(seed, 4 * n),
                    DType::F16 => bytes_from_seed(seed, 2 * n),
                    DType::Q8 => bytes_from_seed(seed, n),
                    DType::Q4 if n == 0 => Vec::new(),
                    DType::Q4 => {
                        let (r, c) = t.rows_cols();
                        bytes_from_seed(seed, 16 * r * c.div_ceil(32))
                    }
                    DType::Q6 if n == 0 => Vec::new(),
                    DType::Q6 => {
                        let (r, c) = t.rows_cols();
                        bytes_from_seed(seed, 24 * r * c.div_ceil(32))
                    }
                };
                if dtype == DType::Q8 || (matches!(dtype, DType::Q4 | DType::Q6) && n > 0) {
                    let (r, c) = t.rows_cols();
                    let s = bytes_from_seed(!seed, 2 * r * c.div_ceil(32));
                    t.scales = s
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect();
                }
                t
            })
            .collect()
    })
}

fn value() -> impl Strategy<Value = Value> {
    use proptest::collection::vec;
    let array = prop_oneof![
        vec(any::<u32>(), 0..6).prop_map(Array::U32),
        vec(any::<i32>(), 0..6).prop_map(Array::I32),
        vec(any::<u64>(), 0..6).prop_map(Array::U64),
        vec(any::<i64>(), 0..6).prop_map(Array::I64),
        vec(any::<f32>(), 0..6).prop_map(Array::F32),
        vec(any::<f64>(), 0..6).prop_map(Array::F64),
        vec(any::<bool>(), 0..6).prop_map(Array::Bool),
        vec(".{0,6}", 0..6).prop_map(Array::Str),
    ];
    prop_oneof![
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::Str),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
        array.prop_map(Value::Array),
    ]
}

fn metadata() -> impl Strategy<Value = Vec<(String, Value)>> {
    // Keys: any non-empty UTF-8 up to 256 bytes (64 chars of up to 4 bytes), unique.
    proptest::collection::btree_map(".{1,64}", value(), 0..12).prop_map(|m| m.into_iter().collect())
}

/// A value with floats replaced by their bits, so NaNs compare equal to themselves.
fn bits(v: &Value) -> Value {
    match v {
        Value::F32(x) => Value::U32(x.to_bits()),
        Value::F64(x) => Value::U64(x.to_bits()),
        Value::Array(Array::F32(xs)) => {
            Value::Array(Array::U32(xs.iter().map(|x| x.to_bits()).collect()))
        }
        Value::Array(Array::F64(xs)) => {
            Value::Array(Array::U64(xs.iter().map(|x| x.to_bits()).collect()))
        }
        other => other.clone(),
    }
}

/// Declares `meta` (in the given order) and `ts` on a fresh writer.
fn writer(meta: &[(String, Value)], ts: &[TensorCase]) -> EmberWriter {
    let mut w = EmberWriter::new();
    for (k, v) in meta {
        w.set(k, v.clone()).unwrap();
    }
    for t in ts {
        w.add_tensor(&t.name, t.dtype, &t.shape).unwrap();
    }
    w
}

fn fill_from(
    ts: &[TensorCase],
) -> impl FnMut(usize, &TensorEntry, &mut dyn Write) -> io::Result<()> {
    |i, _, out| ts[i].fill(out)
}

/// Encoded size of a value after its tag, by FORMAT.md's table.
fn value_len(v: &Value) -> usize {
    match v {
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::Bool(_) => 1,
        Value::Str(s) => 8 + s.len(),
        Value::Bytes(b) => 8 + b.len(),
        Value::Array(a) => {
            9 + match a {
                Array::U32(v) => 4 * v.len(),
                Array::I32(v) => 4 * v.len(),
                Array::F32(v) => 4 * v.len(),
                Array::U64(v) => 8 * v.len(),
                Array::I64(v) => 8 * v.len(),
                Array::F64(v) => 8 * v.len(),
                Array::Bool(v) => v.len(),
                Array::Str(v) => v.iter().map(|s| 8 + s.len()).sum(),
            }
        }
    }
}

/// Checks everything the spec promises about a parsed file against the inputs.
fn check_file(
    file: &EmberFile<'_>,
    meta: &[(String, Value)],
    ts: &[TensorCase],
) -> Result<(), TestCaseError> {
    // Metadata: the same entries, sorted by key (bytewise), floats compared by bits.
    let mut want: Vec<(String, Value)> = meta.iter().map(|(k, v)| (k.clone(), bits(v))).collect();
    want.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let got: Vec<(String, Value)> = file
        .header
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), bits(v)))
        .collect();
    prop_assert_eq!(got, want);

    // Layout: header size from the spec, data section = tensors at successive aligned offsets.
    let header_len: usize = 32
        + meta
            .iter()
            .map(|(k, v)| 4 + k.len() + 1 + value_len(v))
            .sum::<usize>()
        + ts.iter()
            .map(|t| 4 + t.name.len() + 2 + 8 * t.shape.len() + 8)
            .sum::<usize>();
    let data_start = header_len.div_ceil(64) as u64 * 64;
    prop_assert_eq!(file.header.data_start, data_start);
    let mut end = 0u64;
    prop_assert_eq!(file.header.tensors.len(), ts.len());
    for (e, t) in file.header.tensors.iter().zip(ts) {
        prop_assert_eq!(&e.name, &t.name);
        prop_assert_eq!(e.dtype, t.dtype);
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        prop_assert_eq!(&e.shape, &shape);
        prop_assert_eq!(e.offset, end.div_ceil(64) * 64);
        prop_assert_eq!(e.size, t.expected_size());
        end = e.offset + e.size;

        let raw = file.raw(e);
        prop_assert_eq!(
            raw.as_ptr() as usize % 64,
            0,
            "{} is not 64-byte aligned",
            e.name
        );
        match file.data(e).unwrap() {
            TensorData::F32(v) => {
                prop_assert_eq!(t.dtype, DType::F32);
                prop_assert_eq!(bytemuck_bytes(v), &t.bytes[..]);
            }
            TensorData::F16(v) => {
                prop_assert_eq!(t.dtype, DType::F16);
                let got: Vec<u8> = v.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect();
                prop_assert_eq!(got, t.bytes.clone());
            }
            TensorData::Q8 { quants, scales } => {
                prop_assert_eq!(t.dtype, DType::Q8);
                let q: Vec<u8> = quants.iter().map(|&x| x as u8).collect();
                prop_assert_eq!(q, t.bytes.clone());
                let s: Vec<u16> = scales.iter().map(|h| h.to_bits()).collect();
                prop_assert_eq!(s, t.scales.clone());
                prop_assert_eq!(scales.as_ptr() as usize % 64, 0);
            }
            TensorData::Q4 { quants, scales } => {
                prop_assert_eq!(t.dtype, DType::Q4);
                prop_assert_eq!(quants, &t.bytes[..]);
                let s: Vec<u16> = scales.iter().map(|h| h.to_bits()).collect();
                prop_assert_eq!(s, t.scales.clone());
                prop_assert_eq!(scales.as_ptr() as usize % 64, 0);
            }
            TensorData::Q6 { quants, scales } => {
                prop_assert_eq!(t.dtype, DType::Q6);
                prop_assert_eq!(quants, &t.bytes[..]);
                let s: Vec<u16> = scales.iter().map(|h| h.to_bits()).collect();
                prop_assert_eq!(s, t.scales.clone());
                prop_assert_eq!(scales.as_ptr() as usize % 64, 0);
            }
        }
    }
    prop_assert_eq!(
        file.bytes().len() as u64,
        data_start + end,
        "no trailing bytes"
    );
    Ok(())
}

fn bytemuck_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn write_then_read_gives_back_everything(meta in metadata(), ts in tensors()) {
        let w = writer(&meta, &ts);
        let bytes = w.to_vec(fill_from(&ts)).unwrap();
        let aligned = AlignedBytes::copy_from(&bytes);
        let file = EmberFile::parse(&aligned).unwrap();
        check_file(&file, &meta, &ts)?;

        // Deterministic: the same writer twice, and the metadata declared in reverse order, give
        // the same bytes.
        prop_assert_eq!(&w.to_vec(fill_from(&ts)).unwrap(), &bytes);
        let mut reversed = meta.clone();
        reversed.reverse();
        prop_assert_eq!(&writer(&reversed, &ts).to_vec(fill_from(&ts)).unwrap(), &bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The same, through a file on disk written atomically and read through a memory map.
    #[test]
    fn write_file_then_mmap_gives_back_everything(meta in metadata(), ts in tensors()) {
        let dir = TempDir::new();
        let path = dir.path().join("m.ember");
        let w = writer(&meta, &ts);
        let n = w.write_file(&path, fill_from(&ts)).unwrap();
        let map = MappedFile::open(&path).unwrap();
        prop_assert_eq!(map.bytes().len() as u64, n);
        prop_assert_eq!(map.bytes(), &w.to_vec(fill_from(&ts)).unwrap()[..]);
        let file = EmberFile::parse(map.bytes()).unwrap();
        check_file(&file, &meta, &ts)?;
        prop_assert_eq!(dir.entries(), vec!["m.ember".to_string()]);
    }
}

/// A fresh, uniquely named directory `emberlm-roundtrip-*` under the system temp dir, removed
/// with everything in it on drop (also when the test panics).
struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new() -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix("emberlm-roundtrip-")
                .tempdir()
                .unwrap(),
        )
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    /// File names in the directory, sorted (temporary files included: they start with '.').
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn small_writer() -> (EmberWriter, Vec<TensorCase>) {
    let ts = vec![
        TensorCase {
            name: "a".into(),
            dtype: DType::F32,
            shape: vec![3],
            bytes: bytes_from_seed(1, 12),
            scales: vec![],
        },
        TensorCase {
            name: "b".into(),
            dtype: DType::F16,
            shape: vec![2, 2],
            bytes: bytes_from_seed(2, 8),
            scales: vec![],
        },
    ];
    let meta = vec![("general.name".to_string(), Value::Str("small".into()))];
    (writer(&meta, &ts), ts)
}

#[test]
fn write_file_leaves_no_temporary_file() {
    let dir = TempDir::new();
    let path = dir.path().join("model.ember");
    let (w, ts) = small_writer();
    let n = w.write_file(&path, fill_from(&ts)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len() as u64, n);
    assert_eq!(dir.entries(), ["model.ember"]);
    // Overwriting an existing file replaces it whole.
    std::fs::write(&path, b"old contents").unwrap();
    w.write_file(&path, fill_from(&ts)).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        w.to_vec(fill_from(&ts)).unwrap()
    );
    assert_eq!(dir.entries(), ["model.ember"]);
}

#[test]
fn a_failing_fill_leaves_the_old_file_untouched_and_no_temporary_file() {
    let dir = TempDir::new();
    let path = dir.path().join("model.ember");
    std::fs::write(&path, b"the previous model").unwrap();
    let (w, ts) = small_writer();

    // The callback fails on the second tensor, after the first one was streamed.
    let err = w
        .write_file(&path, |i, _, out| {
            if i == 1 {
                Err(io::Error::other("disk on fire"))
            } else {
                ts[i].fill(out)
            }
        })
        .unwrap_err();
    assert_eq!(
        err,
        FormatError::Io {
            path: path.display().to_string(),
            message: "disk on fire".into()
        }
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous model");
    assert_eq!(dir.entries(), ["model.ember"]);

    // The callback writes too few bytes.
    let err = w
        .write_file(&path, |i, _, out| {
            if i == 1 {
                out.write_all(&[0; 7])
            } else {
                ts[i].fill(out)
            }
        })
        .unwrap_err();
    assert_eq!(
        err,
        FormatError::TensorSizeMismatch {
            tensor: "b".into(),
            expected: 8,
            written: 7
        }
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous model");
    assert_eq!(dir.entries(), ["model.ember"]);

    // Too many bytes is an error as well.
    let err = w
        .write_file(&path, |i, _, out| {
            ts[i].fill(out)?;
            out.write_all(&[0])
        })
        .unwrap_err();
    assert_eq!(
        err,
        FormatError::TensorSizeMismatch {
            tensor: "a".into(),
            expected: 12,
            written: 13
        }
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous model");
    assert_eq!(dir.entries(), ["model.ember"]);
}

#[test]
fn write_file_into_a_missing_directory_is_an_io_error_naming_the_path() {
    let dir = TempDir::new();
    let path = dir.path().join("no/such/dir/model.ember");
    let (w, ts) = small_writer();
    let err = w.write_file(&path, fill_from(&ts)).unwrap_err();
    match err {
        FormatError::Io { path: p, .. } => assert_eq!(p, path.display().to_string()),
        other => panic!("{other:?}"),
    }
    assert!(dir.entries().is_empty());
}

#[test]
fn mapped_file_edge_cases() {
    let dir = TempDir::new();
    let empty = dir.path().join("empty.ember");
    std::fs::write(&empty, b"").unwrap();
    let map = MappedFile::open(&empty).unwrap();
    assert_eq!(map.bytes(), b"");
    assert_eq!(
        EmberFile::parse(map.bytes()).unwrap_err(),
        FormatError::BadMagic { found: vec![] }
    );
    assert!(matches!(
        MappedFile::open(dir.path()),
        Err(FormatError::Io { .. })
    ));
    assert!(matches!(
        MappedFile::open(&dir.path().join("missing.ember")),
        Err(FormatError::Io { .. })
    ));
}
