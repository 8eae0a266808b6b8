//! A reader for GGUF files (llama.cpp's model format): header, metadata, tensor directory, and
//! dequantisation of F32, F16, BF16, Q8_0, Q4_0, Q4_1 and Q6_K tensors to `f32`.
//!
//! Every length and offset in the file is checked against the bytes actually present, so a
//! corrupt or truncated file gives a [`GgufError`], never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read from disk.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("not a GGUF file (bad magic bytes)")]
    BadMagic,
    /// A GGUF version this reader does not know.
    #[error("unsupported GGUF version {0} (expected 2 or 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a structure it announces.
    #[error("truncated GGUF file: {0} runs past the end of the file")]
    Truncated(String),
    /// A structure has an impossible value.
    #[error("corrupt GGUF file: {0}")]
    Corrupt(String),
    /// A tensor uses a storage type this reader cannot dequantise.
    #[error("tensor {name}: unsupported GGUF tensor type {kind}")]
    UnsupportedType {
        /// The tensor's name.
        name: String,
        /// The ggml type number.
        kind: u32,
    },
    /// A metadata key or tensor the caller needs is missing or has another type.
    #[error("GGUF file has no {0}")]
    Missing(String),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// F32 or F64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string (invalid UTF-8 is replaced).
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::UInt(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            Value::UInt(v) => Some(v as f64),
            Value::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The storage types of tensors this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: one f16 scale, 32 signed bytes.
    Q8_0,
    /// Blocks of 32: one f16 scale, 32 nibbles offset by 8.
    Q4_0,
    /// Blocks of 32: f16 scale and minimum, 32 nibbles.
    Q4_1,
    /// Super-blocks of 256 with 6-bit quants and 16 8-bit scales.
    Q6K,
}

impl TensorType {
    fn from_ggml(kind: u32) -> Option<Self> {
        Some(match kind {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q6K => (256, 210),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Dimensions in ggml order: the first is the innermost (contiguous) one.
    pub dims: Vec<u64>,
    /// Storage type.
    pub kind: TensorType,
    /// Byte range in the file.
    range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// The number of elements.
    pub fn len(&self) -> usize {
        // Checked when the directory was read.
        self.dims.iter().product::<u64>() as usize
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape in row-major (PyTorch) order: the reverse of [`TensorInfo::dims`].
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, holding its bytes.
#[derive(Debug)]
pub struct Gguf {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// All metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor directory, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    bytes: Vec<u8>,
}

/// Reads little-endian values from a byte slice, failing cleanly at the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| GgufError::Truncated(what.to_string()))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each: refused when the rest of the file
    /// could not hold that many, so a corrupt count cannot trigger a huge allocation.
    fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > left {
            return Err(GgufError::Truncated(format!("{what} ({n} items)")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(1, what)?;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }

    fn value(&mut self, kind: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::UInt(u64::from(self.array::<1>(key)?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.array(key)?))),
            2 => Value::UInt(u64::from(u16::from_le_bytes(self.array(key)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(key)?))),
            4 => Value::UInt(u64::from(self.u32(key)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(key)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(key)?))),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(GgufError::Corrupt(format!("{key}: arrays nested too deep")));
                }
                let item_kind = self.u32(key)?;
                let n = self.count(1, key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_kind, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::UInt(self.u64(key)?),
            11 => Value::Int(i64::from_le_bytes(self.array(key)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "{key}: unknown metadata type {other}"
                )));
            }
        })
    }
}

impl Gguf {
    /// Reads and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(bytes)
    }

    /// Parses GGUF bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
        };
        if r.take(4, "the magic bytes")? != b"GGUF" {
            return Err(GgufError::BadMagic);
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        // A tensor entry takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes.
        let n_tensors = r.count(24, "the tensor count")?;
        let n_metadata = r.count(13, "the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = r.string("a metadata key")?;
            let kind = r.u32(&key)?;
            let value = r.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut directory = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name} has {n_dims} dims"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)?);
            }
            let kind = r.u32(&name)?;
            let offset = r.u64(&name)?;
            directory.push((name, dims, kind, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| GgufError::Corrupt("general.alignment".into()))?,
        } as usize;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, kind_id, offset) in directory {
            let kind =
                TensorType::from_ggml(kind_id).ok_or_else(|| GgufError::UnsupportedType {
                    name: name.clone(),
                    kind: kind_id,
                })?;
            // No zero dims: with one, the other dims could be anything and their product (in
            // any order a caller multiplies them) could overflow.
            let elements = dims
                .iter()
                .try_fold(
                    1u64,
                    |acc, &d| if d == 0 { None } else { acc.checked_mul(d) },
                )
                .filter(|&n| n <= bytes.len() as u64 * 8)
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: dims {dims:?}")))?
                as usize;
            let (block_elems, block_bytes) = kind.block();
            if dims
                .first()
                .is_some_and(|&d| !(d as usize).is_multiple_of(block_elems))
            {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name}: row of {} is not a whole number of {kind:?} blocks",
                    dims[0]
                )));
            }
            let size = elements / block_elems * block_bytes;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| GgufError::Corrupt(format!("tensor {name}: offset {offset}")))?;
            let end = start
                .checked_add(size)
                .filter(|&end| end <= bytes.len())
                .ok_or_else(|| GgufError::Truncated(format!("tensor {name}'s data")))?;
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    kind,
                    range: start..end,
                },
            );
        }
        Ok(Self {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    /// A metadata value, or [`GgufError::Missing`].
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::Missing(format!("metadata key {key}")))
    }

    /// An unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)?
            .as_u64()
            .ok_or_else(|| GgufError::Missing(format!("integer metadata key {key}")))
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get(key)?
            .as_f64()
            .ok_or_else(|| GgufError::Missing(format!("numeric metadata key {key}")))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| GgufError::Missing(format!("string metadata key {key}")))
    }

    /// An array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| GgufError::Corrupt(format!("{key}: not all strings")))
                })
                .collect(),
            _ => Err(GgufError::Missing(format!("string array {key}"))),
        }
    }

    /// Dequantises a tensor to `f32`, in row-major order of [`TensorInfo::shape`].
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError::Missing(format!("tensor {name}")))?;
        let data = &self.bytes[info.range.clone()];
        Ok((info.shape(), dequantize(info.kind, data, info.len())))
    }
}

/// Dequantises `len` elements of `kind` stored in `data` (whose size was checked on parsing).
fn dequantize(kind: TensorType, data: &[u8], len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let (_, block_bytes) = kind.block();
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match kind {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        TensorType::F16 => out.extend(data.chunks_exact(2).map(|c| f16_at(c, 0))),
        TensorType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        TensorType::Q8_0 => {
            for block in data.chunks_exact(block_bytes) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        TensorType::Q4_0 | TensorType::Q4_1 => {
            let with_min = kind == TensorType::Q4_1;
            for block in data.chunks_exact(block_bytes) {
                let d = f16_at(block, 0);
                let (m, quants) = if with_min {
                    (f16_at(block, 2), &block[4..])
                } else {
                    (-8.0 * d, &block[2..])
                };
                out.extend(quants.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(quants.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        TensorType::Q6K => {
            for block in data.chunks_exact(block_bytes) {
                dequantize_q6k(block, &mut out);
            }
        }
    }
    out
}

/// One Q6_K super-block (210 bytes: 128 low nibbles, 64 high 2-bit pairs, 16 scales, f16 d).
fn dequantize_q6k(block: &[u8], out: &mut Vec<f32>) {
    let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
    let mut y = [0f32; 256];
    for half in 0..2 {
        let ql = &block[half * 64..half * 64 + 64];
        let qh = &block[128 + half * 32..128 + half * 32 + 32];
        let sc = &block[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u32| f32::from(((low | (((qh[l] >> shift) & 3) << 4)) as i8) - 32);
            let scale = |i: usize| d * f32::from(sc[is + i] as i8);
            y[l] = scale(0) * q(ql[l] & 0x0F, 0);
            y[l + 32] = scale(2) * q(ql[l + 32] & 0x0F, 2);
            y[l + 64] = scale(4) * q(ql[l] >> 4, 4);
            y[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6);
        }
    }
    out.extend_from_slice(&y);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a minimal GGUF file with the given metadata strings and tensors.
    pub(crate) fn tiny_file(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let mut offset = 0u64;
        for (name, dims, kind, data) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, _, data) in tensors {
            b.extend_from_slice(data);
            while b.len() % 32 != 0 {
                b.push(0);
            }
        }
        b
    }

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn dequantizes_each_block_type() {
        let mut q8 = f16_bytes(0.5).to_vec();
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut q40 = f16_bytes(2.0).to_vec();
        q40.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut q41 = f16_bytes(1.0).to_vec();
        q41.extend_from_slice(&f16_bytes(-3.0));
        q41.extend((0..16u8).map(|i| i | (i << 4)));
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.25f32, 4.0].iter().flat_map(|&x| f16_bytes(x)).collect();
        let file = tiny_file(&[
            ("q8", vec![32], 8, q8),
            ("q40", vec![32], 2, q40),
            ("q41", vec![32], 3, q41),
            ("f32", vec![2, 1], 0, f32s),
            ("f16", vec![2], 1, f16s),
        ]);
        let gguf = Gguf::parse(file).unwrap();
        assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
        let (_, q8) = gguf.dequantize("q8").unwrap();
        assert_eq!(q8[0], -8.0);
        assert_eq!(q8[31], 7.5);
        let (_, q40) = gguf.dequantize("q40").unwrap();
        assert_eq!(q40[0], -16.0); // (0 - 8) * 2
        assert_eq!(q40[16], 14.0); // (15 - 8) * 2
        let (_, q41) = gguf.dequantize("q41").unwrap();
        assert_eq!(q41[3], 0.0); // 3 * 1 - 3
        assert_eq!(q41[16 + 15], 12.0);
        let (shape, f) = gguf.dequantize("f32").unwrap();
        assert_eq!((shape, f), (vec![1, 2], vec![1.5, -2.0]));
        assert_eq!(gguf.dequantize("f16").unwrap().1, vec![0.25, 4.0]);
        assert!(matches!(
            gguf.dequantize("nope"),
            Err(GgufError::Missing(_))
        ));
    }

    #[test]
    fn q6k_matches_a_hand_computed_value() {
        let mut block = vec![0u8; 210];
        block[0] = 0x05; // ql[0] low nibble 5, high bits 0 -> q = 5 - 32
        block[192] = 2; // scale 0
        block[208..210].copy_from_slice(&f16_bytes(0.5));
        let file = tiny_file(&[("q6", vec![256], 14, block)]);
        let (_, y) = Gguf::parse(file).unwrap().dequantize("q6").unwrap();
        assert_eq!(y[0], 0.5 * 2.0 * (5.0 - 32.0));
        assert_eq!(y.len(), 256);
    }

    #[test]
    fn every_truncation_is_an_error() {
        // 32 bytes of data: the file ends exactly where the tensor does.
        let file = tiny_file(&[("t", vec![8], 0, vec![0; 32])]);
        for cut in 0..file.len() - 1 {
            let err = Gguf::parse(file[..cut].to_vec());
            assert!(err.is_err(), "cut at {cut} parsed");
        }
        assert!(matches!(
            Gguf::parse(b"GGUF\x09\0\0\0".to_vec()),
            Err(GgufError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            Gguf::parse(b"GGML".to_vec()),
            Err(GgufError::BadMagic)
        ));
    }

    #[test]
    fn zero_dims_with_huge_neighbours_are_refused() {
        // Found by fuzzing: dims [0, 2^40, 2^40] multiplied in another order overflowed.
        let file = tiny_file(&[("t", vec![0, 1 << 40, 1 << 40], 0, vec![])]);
        assert!(matches!(Gguf::parse(file), Err(GgufError::Corrupt(_))));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut file = tiny_file(&[]);
        file[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Gguf::parse(file), Err(GgufError::Truncated(_))));
    }
}
