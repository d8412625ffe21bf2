//! A streaming GGUF v3 writer: the header (metadata and tensor infos) first, then each tensor's
//! data as it is produced, so that converting a checkpoint holds one tensor in memory at a time.
//!
//! Hand-written because candle's `gguf_file::write` takes every tensor as an in-memory `QTensor`
//! (memory would grow with the model) and gguf-py is Python. The format is small: little-endian
//! integers, length-prefixed strings, and `general.alignment` (32) padding before the data
//! section and after every tensor, exactly as gguf-py and llama.cpp lay it out.

use std::io::{self, Write};

use crate::quant::TensorType;

/// GGUF files written here use llama.cpp's default alignment.
pub const ALIGNMENT: u64 = 32;

/// A metadata value (`gguf_metadata_value_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Strings(_) | Value::I32s(_) | Value::F32s(_) => 9,
        }
    }
}

/// One tensor's entry in the header; `dims` in ggml order (the row length first).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: TensorType,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of this tensor's data (without padding).
    pub fn bytes(&self) -> u64 {
        self.elements() / self.ty.block_size() as u64 * self.ty.block_bytes() as u64
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Writes a GGUF file whose tensors are supplied in header order by [`Writer::tensor`].
pub struct Writer<W: Write> {
    out: W,
    tensors: Vec<TensorInfo>,
    next: usize,
}

impl<W: Write> Writer<W> {
    /// Writes the header: metadata in the given order, then the tensor infos with offsets.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: Vec<TensorInfo>,
    ) -> io::Result<Self> {
        let mut header = Vec::new();
        header.extend(b"GGUF");
        header.extend(3u32.to_le_bytes());
        header.extend((tensors.len() as u64).to_le_bytes());
        header.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut header, key);
            header.extend(value.type_id().to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_string(&mut header, &t.name);
            header.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend(d.to_le_bytes());
            }
            header.extend(t.ty.ggml_id().to_le_bytes());
            header.extend(offset.to_le_bytes());
            offset += padded(t.bytes());
        }
        header.resize(padded(header.len() as u64) as usize, 0);
        out.write_all(&header)?;
        Ok(Writer {
            out,
            tensors,
            next: 0,
        })
    }

    /// The next tensor in header order and its data; panics on a size or order mismatch, which
    /// is a bug in the caller (the header is already written).
    pub fn tensor(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let info = &self.tensors[self.next];
        assert_eq!(info.name, name, "tensors must be written in header order");
        assert_eq!(info.bytes(), data.len() as u64, "tensor `{name}`: size");
        self.out.write_all(data)?;
        let pad = padded(data.len() as u64) - data.len() as u64;
        self.out
            .write_all(&[0u8; ALIGNMENT as usize][..pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        assert_eq!(self.next, self.tensors.len(), "tensors left unwritten");
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U32(v) => out.extend(v.to_le_bytes()),
        Value::I32(v) => out.extend(v.to_le_bytes()),
        Value::F32(v) => out.extend(v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => put_string(out, s),
        Value::Strings(items) => {
            out.extend(8u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|s| put_string(out, s));
        }
        Value::I32s(items) => {
            out.extend(5u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|v| out.extend(v.to_le_bytes()));
        }
        Value::F32s(items) => {
            out.extend(6u32.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|v| out.extend(v.to_le_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_data_are_aligned() {
        let tensors = vec![
            TensorInfo {
                name: "a".into(),
                dims: vec![3],
                ty: TensorType::F32,
            },
            TensorInfo {
                name: "b".into(),
                dims: vec![32, 2],
                ty: TensorType::Q8_0,
            },
        ];
        let meta = vec![(
            "general.architecture".to_string(),
            Value::String("llama".into()),
        )];
        let mut w = Writer::new(Vec::new(), &meta, tensors).unwrap();
        let header_len = w.out.len();
        assert_eq!(header_len % 32, 0);
        w.tensor("a", &[0u8; 12]).unwrap();
        w.tensor("b", &[1u8; 68]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        // a: 12 bytes padded to 32; b: 68 bytes padded to 96
        assert_eq!(bytes.len(), header_len + 32 + 96);
        assert_eq!(bytes[header_len + 32], 1);
    }
}
