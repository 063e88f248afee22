//! The `.ember` model file: one self-describing, little-endian, memory-mappable file holding the
//! configuration, the tokenizer, the task and every tensor. The byte layout is specified in
//! `formats/FORMAT.md`; this module is its reference implementation.
//!
//! - [`EmberFile::parse`] reads a file in place from `&[u8]` (a memory map, or `include_bytes!`
//!   wrapped in [`Aligned`]) and validates every count, offset and size before anything is used.
//! - [`EmberWriter`] declares metadata and tensors, then streams tensor data in order, to any
//!   `Write` or atomically to a path (temporary file, fsync, rename).

mod error;
#[cfg(feature = "mmap")]
mod mmap;
mod read;
mod value;
mod write;

pub use error::FormatError;
#[cfg(feature = "mmap")]
pub use mmap::{HugeBuffer, MappedFile, huge_page_bytes};
pub use read::{EmberFile, Header, TensorData, parse_header, parse_header_except, tensor_data};
pub use value::{Array, Value};
pub use write::{
    EmberWriter, remove_dead_temporaries, write_atomically, write_f16s, write_f32s, write_q4,
    write_q6, write_q8, write_q8_tail,
};

/// The first 8 bytes of every `.ember` file.
pub const MAGIC: [u8; 8] = *b"EMBERLM\0";
/// The structural version this code reads and writes.
pub const VERSION: u32 = 1;
/// Alignment of the data section and of every tensor, in bytes (a cache line; enough for any SIMD load).
pub const ALIGN: u64 = 64;
/// Cap on the number of metadata entries.
pub const MAX_METADATA: u64 = 1 << 16;
/// Cap on the number of tensors.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Cap on the length of a metadata key, in bytes.
pub const MAX_KEY_LEN: u64 = 256;
/// Cap on the length of a tensor name, in bytes.
pub const MAX_NAME_LEN: u64 = 512;
/// Cap on a tensor's rank.
pub const MAX_RANK: usize = 8;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32, little-endian.
    F32,
    /// IEEE binary16, little-endian.
    F16,
    /// int8 in blocks of 32 along the last dimension, one f16 scale per block
    /// (see [`crate::quant`]). Data: quants (numel bytes), zero padding to a multiple of 64, then
    /// the scales (rows × ceil(cols / 32) f16).
    Q8,
    /// 4-bit weights in blocks of 32 along the last dimension, one f16 scale per block, levels
    /// from a fixed non-linear codebook (see [`crate::quant::Q4_CODEBOOK`]). Data: the nibbles
    /// (rows × ceil(cols / 32) blocks of 16 bytes), zero padding to a multiple of 64, then the
    /// scales (rows × ceil(cols / 32) f16).
    Q4,
    /// 6-bit weights in blocks of 32 along the last dimension, one f16 scale per block, signed
    /// levels −32..=31 (see [`crate::quant::quantize_q6`]). Data: the blocks (rows × ceil(cols /
    /// 32) blocks of 24 bytes: 16 bytes of low nibbles as Q4's, then 8 bytes of 2-bit highs),
    /// zero padding to a multiple of 64, then the scales (rows × ceil(cols / 32) f16).
    Q6,
}

impl DType {
    /// The tag stored in the file.
    pub fn tag(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q8 => 2,
            DType::Q4 => 3,
            DType::Q6 => 4,
        }
    }

    /// The dtype for a stored tag.
    pub fn from_tag(tag: u8) -> Option<DType> {
        match tag {
            0 => Some(DType::F32),
            1 => Some(DType::F16),
            2 => Some(DType::Q8),
            3 => Some(DType::Q4),
            4 => Some(DType::Q6),
            _ => None,
        }
    }

    /// A short lowercase name (`f32`, `f16`, `q8`, `q4`, `q6`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::Q6 => "q6",
        }
    }

    /// Bytes of data for a tensor of this dtype and shape, or `None` on overflow.
    pub fn data_size(self, shape: &[u64]) -> Option<u64> {
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        match self {
            DType::F32 => numel.checked_mul(4),
            DType::F16 => numel.checked_mul(2),
            DType::Q8 => {
                let (rows, cols) = rows_cols(shape)?;
                let blocks = rows.checked_mul(cols.div_ceil(crate::quant::Q8_BLOCK as u64))?;
                align_up(numel)?.checked_add(blocks.checked_mul(2)?)
            }
            DType::Q4 => {
                let (rows, cols) = rows_cols(shape)?;
                if numel == 0 {
                    return Some(0);
                }
                let blocks = rows.checked_mul(cols.div_ceil(crate::quant::Q4_BLOCK as u64))?;
                let nibbles = blocks.checked_mul(crate::quant::Q4_BLOCK_BYTES as u64)?;
                align_up(nibbles)?.checked_add(blocks.checked_mul(2)?)
            }
            DType::Q6 => {
                if numel == 0 {
                    return Some(0);
                }
                let blocks_bytes = DType::q6_block_bytes(shape)?;
                let (rows, cols) = rows_cols(shape)?;
                let blocks = rows.checked_mul(cols.div_ceil(crate::quant::Q6_BLOCK as u64))?;
                align_up(blocks_bytes)?.checked_add(blocks.checked_mul(2)?)
            }
        }
    }

    /// Bytes of a Q6 tensor's blocks (before their padding), `None` on overflow.
    pub fn q6_block_bytes(shape: &[u64]) -> Option<u64> {
        let (rows, cols) = rows_cols(shape)?;
        rows.checked_mul(cols.div_ceil(crate::quant::Q6_BLOCK as u64))?
            .checked_mul(crate::quant::Q6_BLOCK_BYTES as u64)
    }

    /// Bytes of a Q4 tensor's nibbles (before their padding), `None` on overflow or for other
    /// dtypes.
    pub fn q4_nibble_bytes(shape: &[u64]) -> Option<u64> {
        let (rows, cols) = rows_cols(shape)?;
        rows.checked_mul(cols.div_ceil(crate::quant::Q4_BLOCK as u64))?
            .checked_mul(crate::quant::Q4_BLOCK_BYTES as u64)
    }
}

/// (rows, cols) of a tensor: cols is the last dimension, rows the product of the others
/// (a scalar is 1 × 1). `None` on overflow.
pub fn rows_cols(shape: &[u64]) -> Option<(u64, u64)> {
    match shape.split_last() {
        None => Some((1, 1)),
        Some((&cols, rest)) => Some((rest.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?, cols)),
    }
}

/// Rounds `n` up to a multiple of [`ALIGN`], or `None` on overflow.
pub fn align_up(n: u64) -> Option<u64> {
    Some(n.checked_add(ALIGN - 1)? / ALIGN * ALIGN)
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// Canonical name (see `GptConfig::tensor_shapes`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Offset of the data relative to the data section (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// Size of the data in bytes (derived from dtype and shape; not stored in the file).
    pub size: u64,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A byte buffer whose start is aligned to 64 bytes, so that an `.ember` file compiled into a
/// program can be read in place:
///
/// ```
/// use emberlm_formats::ember::Aligned;
/// static BYTES: &Aligned<[u8]> = &Aligned([0u8; 4]); // e.g. Aligned(*include_bytes!("m.ember"))
/// assert_eq!(BYTES.0.as_ptr() as usize % 64, 0);
/// ```
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Aligned<B: ?Sized>(pub B);

/// An owned, 64-byte aligned copy of some bytes (for reading a file from memory in tests or when
/// memory mapping is unavailable).
#[derive(Clone, Debug)]
pub struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

#[derive(Clone, Copy, Debug, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
struct Block([u8; 64]);

impl AlignedBytes {
    /// Copies `bytes` into a fresh aligned buffer.
    pub fn copy_from(bytes: &[u8]) -> AlignedBytes {
        let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
        bytemuck::cast_slice_mut::<Block, u8>(&mut blocks)[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes {
            blocks,
            len: bytes.len(),
        }
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block, u8>(&self.blocks)[..self.len]
    }
}
