//! The reader: validates a whole file before handing out any view.

use super::{
    ALIGN, Array, DType, FormatError, MAGIC, MAX_KEY_LEN, MAX_METADATA, MAX_NAME_LEN, MAX_RANK,
    MAX_TENSORS, TensorEntry, VERSION, Value, align_up,
};
use half::f16;
use std::collections::HashSet;

/// Everything before the data section, validated and owned (small: the tensor table and the
/// metadata, the tokenizer being the largest part).
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Structural version (always [`VERSION`] once parsed).
    pub version: u32,
    /// Metadata in file order (keys unique).
    pub metadata: Vec<(String, Value)>,
    /// Tensors in file order (offsets increasing, non-overlapping, aligned).
    pub tensors: Vec<TensorEntry>,
    /// Absolute offset of the data section (a multiple of [`ALIGN`]).
    pub data_start: u64,
}

/// Parses and validates the header, the tensor table and the coverage of the data section.
///
/// On success, every tensor lies inside `bytes`, aligned, without overlap, gaps or trailing bytes,
/// and every padding byte is zero. Never panics, whatever `bytes` holds.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FormatError> {
    parse_header_except(bytes, &[])
}

/// [`parse_header`] without keeping the metadata values whose keys are in `skip`: they are
/// validated as `parse_header` validates them (same errors, duplicate keys included) but neither
/// decoded nor copied, and are absent from the returned [`Header::metadata`]. Opening a model
/// skips the tokenizer's tables this way (megabytes for today's vocabularies): the header's parse
/// then touches only their length prefixes.
pub fn parse_header_except(bytes: &[u8], skip: &[&str]) -> Result<Header, FormatError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c
        .take(8, &|| "header.magic".into())
        .map_err(|_| FormatError::BadMagic {
            found: bytes.get(..bytes.len().min(8)).unwrap_or_default().to_vec(),
        })?;
    if magic != MAGIC {
        return Err(FormatError::BadMagic {
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "header.version".into())?;
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let flags = c.u32(&|| "header.flags".into())?;
    if flags != 0 {
        return Err(FormatError::UnknownFlags { found: flags });
    }
    let n_meta = c.u64(&|| "header.metadata_count".into())?;
    if n_meta > MAX_METADATA {
        return Err(FormatError::TooMany {
            field: "header.metadata_count".into(),
            count: n_meta,
            max: MAX_METADATA,
        });
    }
    let n_tensors = c.u64(&|| "header.tensor_count".into())?;
    if n_tensors > MAX_TENSORS {
        return Err(FormatError::TooMany {
            field: "header.tensor_count".into(),
            count: n_tensors,
            max: MAX_TENSORS,
        });
    }

    // Capacities are bounded by what the remaining bytes could possibly hold, so a hostile count
    // cannot make us allocate before the bytes run out.
    let mut metadata = Vec::with_capacity((n_meta as usize).min(c.remaining() as usize / 6));
    let mut keys = HashSet::new();
    for i in 0..n_meta {
        let key = c.string(&|| format!("metadata[{i}].key"), 4, MAX_KEY_LEN)?;
        let tag = c.u8(&|| format!("metadata[{key:?}].type"))?;
        let field = || format!("metadata[{key:?}].value");
        let value = if skip.contains(&key.as_str()) {
            c.skip_value(tag, &field)?;
            None
        } else {
            Some(c.value(tag, &field)?)
        };
        if !keys.insert(key.clone()) {
            return Err(FormatError::DuplicateKey { key });
        }
        if let Some(value) = value {
            metadata.push((key, value));
        }
    }

    let mut tensors: Vec<TensorEntry> =
        Vec::with_capacity((n_tensors as usize).min(c.remaining() as usize / 15));
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensors[{i}].name"), 4, MAX_NAME_LEN)?;
        let tag = c.u8(&|| format!("tensors[{name:?}].dtype"))?;
        let dtype = DType::from_tag(tag).ok_or_else(|| FormatError::UnknownDtype {
            tensor: name.clone(),
            tag,
        })?;
        let rank = c.u8(&|| format!("tensors[{name:?}].rank"))?;
        if rank as usize > MAX_RANK {
            return Err(FormatError::RankTooLarge { tensor: name, rank });
        }
        let mut shape = Vec::with_capacity(rank as usize);
        for d in 0..rank {
            shape.push(c.u64(&|| format!("tensors[{name:?}].shape[{d}]"))?);
        }
        let offset = c.u64(&|| format!("tensors[{name:?}].offset"))?;
        let size = dtype
            .data_size(&shape)
            .ok_or_else(|| FormatError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        if !names.insert(name.clone()) {
            return Err(FormatError::DuplicateTensor { name });
        }
        tensors.push(TensorEntry {
            name,
            dtype,
            shape,
            offset,
            size,
        });
    }

    let header_end = c.pos as u64;
    let data_start = align_up(header_end).ok_or(FormatError::TooMany {
        field: "header size".into(),
        count: header_end,
        max: u64::MAX - ALIGN,
    })?;
    let file_len = bytes.len() as u64;
    if data_start > file_len {
        return Err(FormatError::Truncated {
            field: "header padding".into(),
            needed: data_start - header_end,
            available: file_len - header_end,
        });
    }
    check_zero(bytes, header_end, data_start)?;
    let data_len = file_len - data_start;

    // Tensors must follow each other in table order, each at the first aligned offset after the
    // previous one: this forbids overlap, gaps and hidden bytes, and makes the layout unique.
    let mut prev_end = 0u64;
    let mut prev_name: Option<&str> = None;
    for t in &tensors {
        if t.offset % ALIGN != 0 {
            return Err(FormatError::Misaligned {
                tensor: t.name.clone(),
                offset: t.offset,
            });
        }
        let end = t
            .offset
            .checked_add(t.size)
            .ok_or_else(|| FormatError::ShapeOverflow {
                tensor: t.name.clone(),
            })?;
        if end > data_len {
            return Err(FormatError::OutOfBounds {
                tensor: t.name.clone(),
                end,
                data_len,
            });
        }
        if t.offset < prev_end {
            return Err(FormatError::Overlap {
                tensor: t.name.clone(),
                previous: prev_name.unwrap_or_default().to_string(),
            });
        }
        // prev_end <= data_len < u64::MAX - ALIGN here, so align_up cannot fail.
        let expected = align_up(prev_end).unwrap_or(u64::MAX);
        if t.offset > expected {
            return Err(FormatError::Gap {
                tensor: t.name.clone(),
                bytes: t.offset - expected,
            });
        }
        check_zero(bytes, data_start + prev_end, data_start + t.offset)?;
        if t.dtype == DType::Q8 {
            // The zero padding between the quants and the scales.
            let numel = t.numel();
            check_zero(
                bytes,
                data_start + t.offset + numel,
                data_start + t.offset + align_up(numel).unwrap_or(numel),
            )?;
        }
        if t.dtype == DType::Q4 && t.size > 0 {
            // The zero padding between the nibbles and the scales.
            let n = DType::q4_nibble_bytes(&t.shape).unwrap_or(0);
            check_zero(
                bytes,
                data_start + t.offset + n,
                data_start + t.offset + align_up(n).unwrap_or(n),
            )?;
        }
        if t.dtype == DType::Q6 && t.size > 0 {
            // The zero padding between the blocks and the scales.
            let n = DType::q6_block_bytes(&t.shape).unwrap_or(0);
            check_zero(
                bytes,
                data_start + t.offset + n,
                data_start + t.offset + align_up(n).unwrap_or(n),
            )?;
        }
        prev_end = end;
        prev_name = Some(&t.name);
    }
    if data_len > prev_end {
        return Err(FormatError::TrailingBytes {
            count: data_len - prev_end,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start,
    })
}

fn check_zero(bytes: &[u8], from: u64, to: u64) -> Result<(), FormatError> {
    let pad = bytes.get(from as usize..to as usize).unwrap_or_default();
    match pad.iter().position(|&b| b != 0) {
        Some(i) => Err(FormatError::NonZeroPadding {
            offset: from + i as u64,
        }),
        None => Ok(()),
    }
}

impl Header {
    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required non-negative integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| wrong(key, "a non-negative integer", v))
    }

    /// A required integer that must fit in `usize` and lie in `1..=max`.
    pub fn require_count(&self, key: &str, max: usize) -> Result<usize, FormatError> {
        let n = self.require_u64(key)?;
        if n == 0 || n > max as u64 {
            return Err(FormatError::WrongType {
                key: key.to_string(),
                expected: "an integer in range",
                found: format!("{n} (must be 1..={max})"),
            });
        }
        Ok(n as usize)
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str, FormatError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "a string", v))
    }

    /// A required bool.
    pub fn require_bool(&self, key: &str) -> Result<bool, FormatError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| wrong(key, "a bool", v))
    }

    /// A required value of any type.
    pub fn require(&self, key: &str) -> Result<&Value, FormatError> {
        self.get(key).ok_or_else(|| FormatError::MissingKey {
            key: key.to_string(),
        })
    }

    /// The table entry of a tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn wrong(key: &str, expected: &'static str, found: &Value) -> FormatError {
    FormatError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name().to_string(),
    }
}

/// A tensor's data, viewed in place.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// Q8 blocks: quants (R, C) and scales (R, ceil(C/32)).
    Q8 {
        /// One signed byte per element.
        quants: &'a [i8],
        /// One f16 scale per block of 32 along each row.
        scales: &'a [f16],
    },
    /// Q4 blocks: nibbles (R, ceil(C/32) × 16 bytes) and scales (R, ceil(C/32)).
    Q4 {
        /// 16 bytes per block of 32 elements (element k low nibble of byte k, k + 16 high).
        quants: &'a [u8],
        /// One f16 scale per block of 32 along each row.
        scales: &'a [f16],
    },
    /// Q6 blocks: (R, ceil(C/32) × 24 bytes) and scales (R, ceil(C/32)).
    Q6 {
        /// 24 bytes per block of 32 elements (FORMAT.md §5).
        quants: &'a [u8],
        /// One f16 scale per block of 32 along each row.
        scales: &'a [f16],
    },
}

/// A validated `.ember` file viewed in place.
#[derive(Clone, Debug)]
pub struct EmberFile<'a> {
    /// The validated header.
    pub header: Header,
    bytes: &'a [u8],
}

impl<'a> EmberFile<'a> {
    /// Validates `bytes` (see [`parse_header`]) and checks that tensors can be viewed in place:
    /// the buffer must start on a 64-byte boundary (a memory map, [`super::Aligned`] or
    /// [`super::AlignedBytes`]) and the machine must be little-endian.
    pub fn parse(bytes: &'a [u8]) -> Result<EmberFile<'a>, FormatError> {
        EmberFile::parse_except(bytes, &[])
    }

    /// [`EmberFile::parse`] without keeping the metadata keys in `skip` (see
    /// [`parse_header_except`]).
    pub fn parse_except(bytes: &'a [u8], skip: &[&str]) -> Result<EmberFile<'a>, FormatError> {
        let header = parse_header_except(bytes, skip)?;
        if cfg!(target_endian = "big") {
            return Err(FormatError::BigEndianHost);
        }
        let address_mod_64 = bytes.as_ptr() as usize % ALIGN as usize;
        if address_mod_64 != 0 && !header.tensors.is_empty() {
            return Err(FormatError::BufferMisaligned { address_mod_64 });
        }
        Ok(EmberFile { header, bytes })
    }

    /// The raw bytes of a tensor.
    pub fn raw(&self, t: &TensorEntry) -> &'a [u8] {
        // In bounds: parse_header checked offset + size <= data_len for every table entry, and
        // entries come from this header. A foreign entry yields an empty slice, not a panic.
        let start = self.header.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start.map(usize::try_from), end.map(usize::try_from)) {
            (Some(Ok(start)), Some(Ok(end))) => self.bytes.get(start..end).unwrap_or_default(),
            _ => &[],
        }
    }

    /// A typed view of a tensor's data.
    pub fn data(&self, t: &TensorEntry) -> Result<TensorData<'a>, FormatError> {
        tensor_data(self.raw(t), t)
    }

    /// Looks a tensor up by name and checks its shape.
    pub fn expect(&self, name: &str, shape: &[u64]) -> Result<&TensorEntry, FormatError> {
        let t = self
            .header
            .tensor(name)
            .ok_or_else(|| FormatError::MissingTensor {
                name: name.to_string(),
            })?;
        if t.shape != shape {
            return Err(FormatError::WrongShape {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// A typed view of one tensor's raw bytes (`raw` is exactly its data: `entry.size` bytes at its
/// offset). Fails with [`FormatError::BufferMisaligned`] when `raw` is not aligned for the dtype.
pub fn tensor_data<'b>(raw: &'b [u8], t: &TensorEntry) -> Result<TensorData<'b>, FormatError> {
    let cast_err = |_| FormatError::BufferMisaligned {
        address_mod_64: raw.as_ptr() as usize % ALIGN as usize,
    };
    Ok(match t.dtype {
        DType::F32 => TensorData::F32(bytemuck::try_cast_slice(raw).map_err(cast_err)?),
        DType::F16 => TensorData::F16(bytemuck::try_cast_slice(raw).map_err(cast_err)?),
        DType::Q8 => {
            // Both fit for a parsed entry (parse_header checked its size); an entry whose shape
            // overflows gets empty views instead of a panic.
            let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let numel = numel.and_then(|n| usize::try_from(n).ok());
            let numel = numel.unwrap_or(usize::MAX);
            let scale_start = align_up(numel as u64).and_then(|n| usize::try_from(n).ok());
            let scale_start = scale_start.unwrap_or(usize::MAX);
            let quants = bytemuck::cast_slice(raw.get(..numel).unwrap_or_default());
            let scales = bytemuck::try_cast_slice(raw.get(scale_start..).unwrap_or_default())
                .map_err(cast_err)?;
            TensorData::Q8 { quants, scales }
        }
        DType::Q4 => {
            // As Q8: sizes fit for a parsed entry; an impossible entry gets empty views.
            let n = DType::q4_nibble_bytes(&t.shape).and_then(|n| usize::try_from(n).ok());
            let n = n.unwrap_or(usize::MAX);
            let scale_start = align_up(n as u64).and_then(|n| usize::try_from(n).ok());
            let scale_start = scale_start.unwrap_or(usize::MAX);
            let quants = raw.get(..n).unwrap_or_default();
            let scales = bytemuck::try_cast_slice(raw.get(scale_start..).unwrap_or_default())
                .map_err(cast_err)?;
            TensorData::Q4 { quants, scales }
        }
        DType::Q6 => {
            // As Q4.
            let n = DType::q6_block_bytes(&t.shape).and_then(|n| usize::try_from(n).ok());
            let n = n.unwrap_or(usize::MAX);
            let scale_start = align_up(n as u64).and_then(|n| usize::try_from(n).ok());
            let scale_start = scale_start.unwrap_or(usize::MAX);
            let quants = raw.get(..n).unwrap_or_default();
            let scales = bytemuck::try_cast_slice(raw.get(scale_start..).unwrap_or_default())
                .map_err(cast_err)?;
            TensorData::Q6 { quants, scales }
        }
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                field: field(),
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(
        &mut self,
        field: &dyn Fn() -> String,
    ) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &dyn Fn() -> String) -> Result<u8, FormatError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A length-prefixed UTF-8 string (`len_bytes` = 4 for keys and names with a u32 length,
    /// 8 for values with a u64 length); keys and names must be non-empty.
    fn string(
        &mut self,
        field: &dyn Fn() -> String,
        len_bytes: u8,
        max: u64,
    ) -> Result<String, FormatError> {
        let len = if len_bytes == 4 {
            self.u32(field)? as u64
        } else {
            self.u64(field)?
        };
        if len > max || (len_bytes == 4 && len == 0) {
            return Err(FormatError::BadLength {
                field: field(),
                len,
                max,
            });
        }
        let raw = self.take(len, field)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| FormatError::InvalidUtf8 { field: field() })
    }

    /// Moves past one value as [`Cursor::value`] reads it, with the same checks and errors, without
    /// copying strings, bytes or fixed-width arrays.
    fn skip_value(&mut self, tag: u8, field: &dyn Fn() -> String) -> Result<(), FormatError> {
        match tag {
            8 => self.skip_str(field),
            9 => {
                let len = self.u64(field)?;
                self.take(len, field).map(drop)
            }
            10 => {
                let start = self.pos;
                let head = || format!("{}.element_type", field());
                let elem = self.u8(&head)?;
                let count = self.u64(&|| format!("{}.count", field()))?;
                let width = match elem {
                    1 | 2 | 5 => 4,
                    3 | 4 | 6 => 8,
                    8 => 8,
                    // Booleans (each byte checked) and unknown tags: read as `value` does.
                    _ => {
                        self.pos = start;
                        return self.array_value(field).map(drop);
                    }
                };
                let needed = count.saturating_mul(width);
                if needed > self.remaining() {
                    return Err(FormatError::Truncated {
                        field: format!("{}.elements", field()),
                        needed,
                        available: self.remaining(),
                    });
                }
                if elem == 8 {
                    for i in 0..count {
                        self.skip_str(&|| format!("{}[{i}]", field()))?;
                    }
                    return Ok(());
                }
                self.take(needed, &|| format!("{}.elements", field()))
                    .map(drop)
            }
            _ => self.value(tag, field).map(drop),
        }
    }

    /// A value string (u64 length + UTF-8), checked as [`Cursor::string`] checks it, not copied.
    fn skip_str(&mut self, field: &dyn Fn() -> String) -> Result<(), FormatError> {
        let len = self.u64(field)?;
        let raw = self.take(len, field)?;
        std::str::from_utf8(raw)
            .map(drop)
            .map_err(|_| FormatError::InvalidUtf8 { field: field() })
    }

    fn value(&mut self, tag: u8, field: &dyn Fn() -> String) -> Result<Value, FormatError> {
        Ok(match tag {
            1 => Value::U32(self.u32(field)?),
            2 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            3 => Value::U64(self.u64(field)?),
            4 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            5 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            6 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            7 => Value::Bool(self.bool(field)?),
            8 => Value::Str(self.string(field, 8, u64::MAX)?),
            9 => {
                let len = self.u64(field)?;
                Value::Bytes(self.take(len, field)?.to_vec())
            }
            10 => Value::Array(self.array_value(field)?),
            _ => {
                return Err(FormatError::UnknownValueType {
                    field: field(),
                    tag,
                });
            }
        })
    }

    fn bool(&mut self, field: &dyn Fn() -> String) -> Result<bool, FormatError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(FormatError::InvalidBool {
                field: field(),
                byte,
            }),
        }
    }

    fn array_value(&mut self, field: &dyn Fn() -> String) -> Result<Array, FormatError> {
        let elem_field = || format!("{}.element_type", field());
        let tag = self.u8(&elem_field)?;
        let count = self.u64(&|| format!("{}.count", field()))?;
        let width: u64 = match tag {
            1 | 2 | 5 => 4,
            3 | 4 | 6 => 8,
            7 => 1,
            8 => 8, // at least the length prefix
            _ => {
                return Err(FormatError::UnknownValueType {
                    field: elem_field(),
                    tag,
                });
            }
        };
        // Every element needs at least `width` bytes: refuse absurd counts before allocating.
        let needed = count.saturating_mul(width);
        if needed > self.remaining() {
            return Err(FormatError::Truncated {
                field: format!("{}.elements", field()),
                needed,
                available: self.remaining(),
            });
        }
        if tag == 8 {
            let mut out = Vec::with_capacity(count as usize);
            for i in 0..count {
                out.push(self.string(&|| format!("{}[{i}]", field()), 8, u64::MAX)?);
            }
            return Ok(Array::Str(out));
        }
        // Fixed-width elements: all `needed` bytes are present, decode them in one pass.
        let raw = self.take(needed, &|| format!("{}.elements", field()))?;
        fn le<const N: usize, T>(raw: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            raw.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        Ok(match tag {
            1 => Array::U32(le(raw, u32::from_le_bytes)),
            2 => Array::I32(le(raw, i32::from_le_bytes)),
            3 => Array::U64(le(raw, u64::from_le_bytes)),
            4 => Array::I64(le(raw, i64::from_le_bytes)),
            5 => Array::F32(le(raw, f32::from_le_bytes)),
            6 => Array::F64(le(raw, f64::from_le_bytes)),
            _ => {
                let mut out = Vec::with_capacity(raw.len());
                for (i, &byte) in raw.iter().enumerate() {
                    match byte {
                        0 | 1 => out.push(byte == 1),
                        _ => {
                            return Err(FormatError::InvalidBool {
                                field: format!("{}[{i}]", field()),
                                byte,
                            });
                        }
                    }
                }
                Array::Bool(out)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AlignedBytes, EmberWriter, write_f16s, write_f32s, write_q8};
    use super::*;

    #[test]
    fn writes_and_reads_back_every_dtype() {
        let mut w = EmberWriter::new();
        w.set("general.name", Value::Str("tiny".into())).unwrap();
        w.set("a.list", Value::Array(Array::U32(vec![1, 2, 3])))
            .unwrap();
        w.add_tensor("x", DType::F32, &[2, 3]).unwrap();
        w.add_tensor("h", DType::F16, &[5]).unwrap();
        w.add_tensor("q", DType::Q8, &[2, 33]).unwrap();
        let f32s = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f16s = [f16::from_f32(0.5); 5];
        let quants: Vec<i8> = (0..66).map(|i| i as i8 - 30).collect();
        let scales = [f16::from_f32(0.25); 4];
        let bytes = w
            .to_vec(|i, _, out| match i {
                0 => write_f32s(out, &f32s),
                1 => write_f16s(out, &f16s),
                _ => write_q8(out, &quants, &scales),
            })
            .unwrap();
        assert_eq!(bytes.len() % 2, 0);
        let aligned = AlignedBytes::copy_from(&bytes);
        let file = EmberFile::parse(&aligned).unwrap();
        assert_eq!(file.header.require_str("general.name").unwrap(), "tiny");
        let x = file.expect("x", &[2, 3]).unwrap();
        assert!(matches!(file.data(x).unwrap(), TensorData::F32(v) if v == f32s));
        let h = file.header.tensor("h").unwrap();
        assert!(matches!(file.data(h).unwrap(), TensorData::F16(v) if v == f16s));
        let q = file.header.tensor("q").unwrap();
        match file.data(q).unwrap() {
            TensorData::Q8 {
                quants: qq,
                scales: ss,
            } => {
                assert_eq!(qq, &quants[..]);
                assert_eq!(ss, &scales[..]);
            }
            other => panic!("{other:?}"),
        }
        // The same declarations give the same bytes.
        let again = w
            .to_vec(|i, _, out| match i {
                0 => write_f32s(out, &f32s),
                1 => write_f16s(out, &f16s),
                _ => write_q8(out, &quants, &scales),
            })
            .unwrap();
        assert_eq!(bytes, again);
    }
}
