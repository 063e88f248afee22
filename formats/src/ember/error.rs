//! The one error type of the `.ember` reader and writer. Every variant names the field or tensor.

use std::fmt;

/// What is wrong with a `.ember` file (or with a request to read or write one).
///
/// Fields are named as in `FORMAT.md`: `header.version`, `metadata[3].key`,
/// `metadata["gpt2.dim"].value`, `tensors[7].shape`, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The file does not start with `EMBERLM\0`.
    BadMagic {
        /// The first bytes found (up to 8).
        found: Vec<u8>,
    },
    /// The structural version is not one this code reads.
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// The reserved flags word is not zero (a file from a future writer).
    UnknownFlags {
        /// The flags found.
        found: u32,
    },
    /// The file ends inside a field.
    Truncated {
        /// The field being read.
        field: String,
        /// Bytes the field needs from its offset.
        needed: u64,
        /// Bytes left in the file at that offset.
        available: u64,
    },
    /// A count is above its cap.
    TooMany {
        /// The field holding the count.
        field: String,
        /// The count found.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// A string is empty where it must not be, or longer than its cap.
    BadLength {
        /// The field.
        field: String,
        /// The length found.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A string is not valid UTF-8.
    InvalidUtf8 {
        /// The field.
        field: String,
    },
    /// A metadata value type tag is unknown.
    UnknownValueType {
        /// The field.
        field: String,
        /// The tag found.
        tag: u8,
    },
    /// A bool byte is neither 0 nor 1.
    InvalidBool {
        /// The field.
        field: String,
        /// The byte found.
        byte: u8,
    },
    /// Two metadata entries have the same key.
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// Two tensors have the same name.
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor's dtype tag is unknown.
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The tag found.
        tag: u8,
    },
    /// A tensor's rank is above [`super::MAX_RANK`].
    RankTooLarge {
        /// The tensor.
        tensor: String,
        /// The rank found.
        rank: u8,
    },
    /// The product of a tensor's dimensions (or its byte size) overflows 64 bits.
    ShapeOverflow {
        /// The tensor.
        tensor: String,
    },
    /// A tensor's offset is not a multiple of [`super::ALIGN`].
    Misaligned {
        /// The tensor.
        tensor: String,
        /// The offset found.
        offset: u64,
    },
    /// A tensor's data extends past the end of the file.
    OutOfBounds {
        /// The tensor.
        tensor: String,
        /// Where its data would end, relative to the data section.
        end: u64,
        /// The size of the data section.
        data_len: u64,
    },
    /// A tensor starts before the previous one ends.
    Overlap {
        /// The tensor.
        tensor: String,
        /// The tensor it overlaps.
        previous: String,
    },
    /// Unreferenced bytes between two tensors (more than alignment padding).
    Gap {
        /// The tensor after the gap.
        tensor: String,
        /// Extra bytes.
        bytes: u64,
    },
    /// Bytes after the last tensor.
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// A padding byte is not zero.
    NonZeroPadding {
        /// Its absolute offset in the file.
        offset: u64,
    },
    /// The buffer does not start at a 64-byte boundary, so tensors cannot be read in place.
    BufferMisaligned {
        /// The buffer's address modulo 64.
        address_mod_64: usize,
    },
    /// This machine is big-endian; `.ember` tensors are little-endian and read in place.
    BigEndianHost,
    /// A required metadata key is missing.
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type (or an out-of-range value).
    WrongType {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A required tensor is missing.
    MissingTensor {
        /// The name.
        name: String,
    },
    /// A tensor has the wrong dtype.
    WrongDtype {
        /// The tensor.
        tensor: String,
        /// Expected dtype names.
        expected: &'static str,
        /// The dtype found.
        found: &'static str,
    },
    /// A tensor has the wrong shape.
    WrongShape {
        /// The tensor.
        tensor: String,
        /// The expected shape.
        expected: Vec<u64>,
        /// The shape found.
        found: Vec<u64>,
    },
    /// The writer's fill callback wrote the wrong number of bytes for a tensor.
    TensorSizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes written.
        written: u64,
    },
    /// An I/O error, with the path.
    Io {
        /// The path involved.
        path: String,
        /// The error's text.
        message: String,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match self {
            BadMagic { found } => write!(
                f,
                "not an .ember file: it starts with {found:02x?}, expected \"EMBERLM\\0\""
            ),
            UnsupportedVersion { found, supported } => write!(
                f,
                ".ember version {found} is not supported (this build reads version {supported}); upgrade emberlm or re-export the model"
            ),
            UnknownFlags { found } => {
                write!(f, "header.flags = {found:#x}: written by a newer emberlm")
            }
            Truncated {
                field,
                needed,
                available,
            } => write!(
                f,
                "the file is truncated: {field} needs {needed} bytes but only {available} remain"
            ),
            TooMany { field, count, max } => {
                write!(f, "{field} = {count} is above the limit {max}")
            }
            BadLength { field, len, max } => {
                write!(f, "{field} has length {len} (must be 1..={max})")
            }
            InvalidUtf8 { field } => write!(f, "{field} is not valid UTF-8"),
            UnknownValueType { field, tag } => write!(f, "{field} has unknown value type {tag}"),
            InvalidBool { field, byte } => {
                write!(f, "{field} is a bool stored as {byte} (must be 0 or 1)")
            }
            DuplicateKey { key } => write!(f, "metadata key {key:?} appears twice"),
            DuplicateTensor { name } => write!(f, "tensor {name:?} appears twice"),
            UnknownDtype { tensor, tag } => write!(f, "tensor {tensor:?} has unknown dtype {tag}"),
            RankTooLarge { tensor, rank } => {
                write!(
                    f,
                    "tensor {tensor:?} has rank {rank} (at most {})",
                    super::MAX_RANK
                )
            }
            ShapeOverflow { tensor } => {
                write!(
                    f,
                    "tensor {tensor:?} has a shape whose size overflows 64 bits"
                )
            }
            Misaligned { tensor, offset } => write!(
                f,
                "tensor {tensor:?} starts at offset {offset}, which is not a multiple of {}",
                super::ALIGN
            ),
            OutOfBounds {
                tensor,
                end,
                data_len,
            } => write!(
                f,
                "tensor {tensor:?} ends at {end}, past the end of the data section ({data_len} bytes): the file is truncated or corrupt"
            ),
            Overlap { tensor, previous } => {
                write!(f, "tensor {tensor:?} overlaps tensor {previous:?}")
            }
            Gap { tensor, bytes } => {
                write!(f, "{bytes} unreferenced bytes before tensor {tensor:?}")
            }
            TrailingBytes { count } => write!(f, "{count} unexpected bytes after the last tensor"),
            NonZeroPadding { offset } => write!(f, "padding byte at offset {offset} is not zero"),
            BufferMisaligned { address_mod_64 } => write!(
                f,
                "the model bytes start {address_mod_64} bytes past a 64-byte boundary; wrap include_bytes! in emberlm_formats::ember::Aligned or copy into AlignedBytes"
            ),
            BigEndianHost => write!(
                f,
                "this machine is big-endian; .ember tensors are little-endian"
            ),
            MissingKey { key } => write!(f, "metadata key {key:?} is missing"),
            WrongType {
                key,
                expected,
                found,
            } => {
                write!(
                    f,
                    "metadata key {key:?} should be {expected}, found {found}"
                )
            }
            MissingTensor { name } => write!(f, "tensor {name:?} is missing"),
            WrongDtype {
                tensor,
                expected,
                found,
            } => {
                write!(f, "tensor {tensor:?} is {found}, expected {expected}")
            }
            WrongShape {
                tensor,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor {tensor:?} has shape {found:?}, expected {expected:?}"
                )
            }
            TensorSizeMismatch {
                tensor,
                expected,
                written,
            } => write!(
                f,
                "tensor {tensor:?}: {written} bytes were written, expected {expected}"
            ),
            Io { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for FormatError {}

impl FormatError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, err: &std::io::Error) -> FormatError {
        FormatError::Io {
            path: path.display().to_string(),
            message: err.to_string(),
        }
    }
}
