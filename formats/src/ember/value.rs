//! Typed metadata values.

/// A metadata value. Strings are UTF-8; `Bytes` is an opaque blob (the tokenizer's token bytes).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Tag 1.
    U32(u32),
    /// Tag 2.
    I32(i32),
    /// Tag 3.
    U64(u64),
    /// Tag 4.
    I64(i64),
    /// Tag 5.
    F32(f32),
    /// Tag 6.
    F64(f64),
    /// Tag 7: one byte, 0 or 1.
    Bool(bool),
    /// Tag 8: u64 length + UTF-8 bytes.
    Str(String),
    /// Tag 9: u64 length + raw bytes.
    Bytes(Vec<u8>),
    /// Tag 10: element tag (1..=8), u64 count, elements.
    Array(Array),
}

/// A homogeneous array of scalars or strings.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// Of tag 1.
    U32(Vec<u32>),
    /// Of tag 2.
    I32(Vec<i32>),
    /// Of tag 3.
    U64(Vec<u64>),
    /// Of tag 4.
    I64(Vec<i64>),
    /// Of tag 5.
    F32(Vec<f32>),
    /// Of tag 6.
    F64(Vec<f64>),
    /// Of tag 7.
    Bool(Vec<bool>),
    /// Of tag 8.
    Str(Vec<String>),
}

impl Value {
    /// The tag stored in the file.
    pub fn tag(&self) -> u8 {
        match self {
            Value::U32(_) => 1,
            Value::I32(_) => 2,
            Value::U64(_) => 3,
            Value::I64(_) => 4,
            Value::F32(_) => 5,
            Value::F64(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Bytes(_) => 9,
            Value::Array(_) => 10,
        }
    }

    /// A short name of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(a) => match a {
                Array::U32(_) => "array of u32",
                Array::I32(_) => "array of i32",
                Array::U64(_) => "array of u64",
                Array::I64(_) => "array of i64",
                Array::F32(_) => "array of f32",
                Array::F64(_) => "array of f64",
                Array::Bool(_) => "array of bool",
                Array::Str(_) => "array of string",
            },
        }
    }

    /// Any non-negative integer value as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl Array {
    /// The element tag stored in the file.
    pub fn elem_tag(&self) -> u8 {
        match self {
            Array::U32(_) => 1,
            Array::I32(_) => 2,
            Array::U64(_) => 3,
            Array::I64(_) => 4,
            Array::F32(_) => 5,
            Array::F64(_) => 6,
            Array::Bool(_) => 7,
            Array::Str(_) => 8,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
        }
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
