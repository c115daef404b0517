//! GGUF metadata values (llama.cpp `enum gguf_type`).

use std::fmt;

/// The on-disk type id of a metadata value (`enum gguf_type` in `gguf.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub const ALL: [ValueType; 13] = [
        Self::U8,
        Self::I8,
        Self::U16,
        Self::I16,
        Self::U32,
        Self::I32,
        Self::F32,
        Self::Bool,
        Self::String,
        Self::Array,
        Self::U64,
        Self::I64,
        Self::F64,
    ];

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.get(id as usize).copied()
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type occupies on disk. Used to reject
    /// array lengths that could not fit in the rest of the file before
    /// allocating anything for them.
    pub fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::String => 8,    // u64 length
            Self::Array => 4 + 8, // element type + length
        }
    }

    /// gguf-py's / llama.cpp's name for the type (`gguf_type_name`).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "str",
            Self::Array => "arr",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ArrayValue),
    U64(u64),
    I64(i64),
    F64(f64),
    /// A GGUF string whose bytes are not valid UTF-8. GGUF strings are byte
    /// strings (llama.cpp reads them into `std::string` unchecked) and
    /// `convert_hf_to_gguf.py` writes raw byte tokens for some vocabularies, so
    /// such strings are kept losslessly; on disk this is type `String`.
    RawString(Vec<u8>),
}

/// An array value. The element type is kept so that empty arrays round-trip.
/// Every element must have type `elem_type` (checked when writing; always true
/// for arrays read from a file).
#[derive(Clone, Debug, PartialEq)]
pub struct ArrayValue {
    pub elem_type: ValueType,
    pub values: Vec<Value>,
}

impl ArrayValue {
    pub fn new(elem_type: ValueType, values: Vec<Value>) -> Self {
        ArrayValue { elem_type, values }
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Value {
    /// The on-disk type (`RawString` is a `String` on disk).
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) | Value::RawString(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// An array of strings.
    pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Value {
        Value::Array(ArrayValue::new(
            ValueType::String,
            items.into_iter().map(|s| Value::String(s.into())).collect(),
        ))
    }

    /// An array whose elements are all `elem_type` (not checked here; the
    /// writer rejects mixed arrays).
    pub fn array(elem_type: ValueType, values: Vec<Value>) -> Value {
        Value::Array(ArrayValue::new(elem_type, values))
    }

    /// Any integer type holding a value representable as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type holding a value representable as `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer type holding a value representable as `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// `F32`, or `F64` rounded to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// `F32` or `F64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A valid UTF-8 string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes of any string value (UTF-8 or raw).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::String(s) => Some(s.as_bytes()),
            Value::RawString(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings that are all valid UTF-8 (`None` otherwise).
    pub fn as_string_array(&self) -> Option<Vec<&str>> {
        let a = self.as_array()?;
        if a.elem_type != ValueType::String {
            return None;
        }
        a.values.iter().map(Value::as_str).collect()
    }

    /// An array of strings as bytes (UTF-8 or raw).
    pub fn as_bytes_array(&self) -> Option<Vec<&[u8]>> {
        let a = self.as_array()?;
        if a.elem_type != ValueType::String {
            return None;
        }
        a.values.iter().map(Value::as_bytes).collect()
    }

    /// An array of integers, each representable as `i64`.
    pub fn as_i64_array(&self) -> Option<Vec<i64>> {
        self.as_array()?.values.iter().map(Value::as_i64).collect()
    }

    /// An array of `F32`/`F64`, as f32.
    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        self.as_array()?.values.iter().map(Value::as_f32).collect()
    }
}

/// Compact, human-readable rendering (long arrays are elided), for `inspect`
/// style listings.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(s) => {
                const MAX: usize = 60;
                if s.chars().count() > MAX {
                    let head: String = s.chars().take(MAX).collect();
                    write!(f, "{head:?}… ({} bytes)", s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::RawString(b) => write!(f, "<{} non-UTF-8 bytes>", b.len()),
            Value::Array(a) => {
                const MAX: usize = 6;
                write!(f, "[{}; {}] [", a.elem_type, a.values.len())?;
                for (i, v) in a.values.iter().take(MAX).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.values.len() > MAX {
                    f.write_str(", …")?;
                }
                f.write_str("]")
            }
        }
    }
}

macro_rules! from_impl {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Value { Value::$v(x) }
        }
    )*};
}
from_impl!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64, ArrayValue => Array);

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}
