//! Reading and writing ONNX protobufs with their weights, for the tools that edit or
//! examine weights (`maskd sparsify`, `maskd inspect`).
//!
//! Owns: decoding a `ModelProto` (tract-onnx's prost types) with every external tensor
//! pulled inline, typed access to float weights, building tensors and attributes, and
//! encoding a self-contained model. Leaves out what the graph means (that is the
//! callers'); inference uses tract's own loader, not this.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};

/// protobuf refuses messages of 2 GiB and more; bigger models need external data.
pub const PROTOBUF_LIMIT: usize = i32::MAX as usize;

/// Reads `path` and moves every external tensor (initialisers and `Constant` values,
/// subgraphs included) inline as `raw_data`, so the result no longer depends on files
/// beside the model.
pub fn read_model_inline(path: &Path) -> anyhow::Result<pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: reading", path.display()))?;
    let mut model = pb::ModelProto::decode(bytes.as_slice())
        .with_context(|| format!("{}: not an ONNX protobuf", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut files = ExternalFiles {
        dir,
        open: HashMap::new(),
    };
    if let Some(graph) = model.graph.as_mut() {
        inline_graph(graph, &mut files).with_context(|| format!("{}", path.display()))?;
    }
    Ok(model)
}

/// Encodes `model` (which must hold no external references) into `path`.
pub fn write_model(path: &Path, model: &pb::ModelProto) -> anyhow::Result<()> {
    let len = model.encoded_len();
    if len > PROTOBUF_LIMIT {
        bail!(
            "{}: the model would be {len} bytes, over protobuf's 2 GiB limit for one file",
            path.display()
        );
    }
    let bytes = model.encode_to_vec();
    std::fs::write(path, bytes).with_context(|| format!("{}: writing", path.display()))
}

/// Open external-data files, by the path the tensor names, relative to the model.
struct ExternalFiles {
    dir: PathBuf,
    open: HashMap<String, File>,
}

impl ExternalFiles {
    fn read(&mut self, t: &pb::TensorProto) -> anyhow::Result<Vec<u8>> {
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.as_str())
        };
        let location = entry("location").context("external data without a `location`")?;
        let rel = Path::new(location);
        // The spec makes locations relative to the model; refusing others keeps a
        // crafted model from reading files elsewhere on the machine.
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            bail!("external data location `{location}` must be a relative path inside the model's directory");
        }
        let number = |key: &str| -> anyhow::Result<Option<u64>> {
            entry(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .with_context(|| format!("external data `{key}` = `{v}` is not a number"))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let expected = byte_len(t);
        let length = match (number("length")?, expected) {
            (Some(l), _) => l,
            (None, Some(e)) => e as u64,
            (None, None) => bail!("external data without `length` for a variable-size type"),
        };
        if let Some(e) = expected {
            if e as u64 != length {
                bail!(
                    "external data length {length} bytes, but dims {:?} need {e}",
                    t.dims
                );
            }
        }
        let path = self.dir.join(rel);
        let file = match self.open.entry(location.to_owned()) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(File::open(&path).with_context(|| format!("{}: opening", path.display()))?)
            }
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if offset.checked_add(length).is_none_or(|end| end > size) {
            bail!(
                "{}: bytes {offset}..{} are past its end ({size} bytes)",
                path.display(),
                offset.saturating_add(length)
            );
        }
        let mut buf = vec![0u8; length as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .with_context(|| format!("{}: reading bytes at {offset}", path.display()))?;
        Ok(buf)
    }
}

fn inline_graph(graph: &mut pb::GraphProto, files: &mut ExternalFiles) -> anyhow::Result<()> {
    for t in &mut graph.initializer {
        inline_tensor(t, files).with_context(|| format!("initializer `{}`", t.name))?;
    }
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            if let Some(t) = attr.t.as_mut() {
                inline_tensor(t, files)
                    .with_context(|| format!("node `{}` attribute `{}`", node.name, attr.name))?;
            }
            for g in attr.g.iter_mut().chain(attr.graphs.iter_mut()) {
                inline_graph(g, files)?;
            }
        }
    }
    Ok(())
}

fn inline_tensor(t: &mut pb::TensorProto, files: &mut ExternalFiles) -> anyhow::Result<()> {
    if t.data_location != Some(DataLocation::External as i32) {
        return Ok(());
    }
    t.raw_data = files.read(t)?;
    t.external_data.clear();
    t.data_location = None;
    Ok(())
}

/// Number of elements the dims describe (1 for a scalar); `None` on a negative dim.
pub fn numel(t: &pb::TensorProto) -> Option<usize> {
    t.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Bytes per element of an ONNX element type; `None` for strings and unknown types.
pub fn elem_size(data_type: i32) -> Option<usize> {
    Some(match DataType::try_from(data_type).ok()? {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Uint8 | DataType::Int8 | DataType::Bool => 1,
        DataType::Uint16 | DataType::Int16 | DataType::Float16 | DataType::Bfloat16 => 2,
        DataType::Int64 | DataType::Uint64 | DataType::Double | DataType::Complex64 => 8,
        DataType::Complex128 => 16,
        DataType::Float8e4m3fn
        | DataType::Float8e4m3fnuz
        | DataType::Float8e5m2
        | DataType::Float8e5m2fnuz => 1,
        _ => return None,
    })
}

/// The tensor's size in bytes when stored raw; `None` if not a fixed-size type.
pub fn byte_len(t: &pb::TensorProto) -> Option<usize> {
    numel(t)?.checked_mul(elem_size(t.data_type)?)
}

/// A float32 tensor's values, from `raw_data` (little-endian) or `float_data`.
/// External data must have been inlined ([`read_model_inline`]).
pub fn tensor_f32(t: &pb::TensorProto) -> anyhow::Result<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        bail!(
            "`{}` is {}, not float32",
            t.name,
            DataType::try_from(t.data_type).map_or("an unknown type", |d| d.as_str_name())
        );
    }
    let n = numel(t).with_context(|| format!("`{}` has a negative dim {:?}", t.name, t.dims))?;
    let values: Vec<f32> = if t.data_location == Some(DataLocation::External as i32) {
        bail!("`{}`: external data was not loaded", t.name);
    } else if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    let stored = if t.raw_data.is_empty() {
        values.len()
    } else {
        t.raw_data.len() / 4
    };
    if values.len() != n || (!t.raw_data.is_empty() && !t.raw_data.len().is_multiple_of(4)) {
        bail!(
            "`{}` holds {stored} floats but its dims {:?} need {n}",
            t.name,
            t.dims
        );
    }
    Ok(values)
}

/// A uint8 tensor's bytes (`raw_data`, or `int32_data` as ONNX stores small ints).
pub fn tensor_u8(t: &pb::TensorProto) -> anyhow::Result<Vec<u8>> {
    if t.data_type != DataType::Uint8 as i32 {
        bail!("`{}` is not uint8", t.name);
    }
    let bytes: Vec<u8> = if t.raw_data.is_empty() {
        t.int32_data.iter().map(|&v| v as u8).collect()
    } else {
        t.raw_data.clone()
    };
    if Some(bytes.len()) != numel(t) {
        bail!(
            "`{}` holds {} bytes but its dims {:?} need {:?}",
            t.name,
            bytes.len(),
            t.dims,
            numel(t)
        );
    }
    Ok(bytes)
}

/// A float32 initialiser stored as `raw_data`.
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A uint8 initialiser stored as `raw_data`.
pub fn u8_tensor(name: &str, dims: &[usize], bytes: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_owned(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Uint8 as i32,
        raw_data: bytes,
        ..Default::default()
    }
}

/// Replaces a float32 tensor's data (wherever it was stored) with `values` as `raw_data`.
pub fn set_f32(t: &mut pb::TensorProto, values: &[f32]) {
    t.float_data.clear();
    t.external_data.clear();
    t.data_location = None;
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
}

pub fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_owned(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// An int attribute of `node`, or `None` if absent.
pub fn get_int(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A float attribute of `node`, or `None` if absent.
pub fn get_float(node: &pb::NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f)
}

/// How a report names a node: its name, or `#index op` when the exporter left it empty.
pub fn node_label(node: &pb::NodeProto, index: usize) -> String {
    if node.name.is_empty() {
        format!("#{index} {}", node.op_type)
    } else {
        node.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_from_raw_and_float_data_agree() {
        let raw = f32_tensor("w", &[2, 2], &[1.0, -2.0, 3.5, 0.0]);
        let mut listed = raw.clone();
        listed.raw_data.clear();
        listed.float_data = vec![1.0, -2.0, 3.5, 0.0];
        assert_eq!(tensor_f32(&raw).unwrap(), tensor_f32(&listed).unwrap());
    }

    #[test]
    fn f32_length_mismatch_is_named() {
        let mut t = f32_tensor("w", &[2, 3], &[1.0; 6]);
        t.raw_data.truncate(20);
        let err = format!("{:#}", tensor_f32(&t).unwrap_err());
        assert!(
            err.contains("`w` holds 5 floats but its dims [2, 3] need 6"),
            "{err}"
        );
    }

    #[test]
    fn external_location_outside_the_model_dir_is_refused() {
        let mut t = f32_tensor("w", &[1], &[0.0]);
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![pb::StringStringEntryProto {
            key: "location".into(),
            value: "../secret.bin".into(),
        }];
        let mut files = ExternalFiles {
            dir: PathBuf::from("."),
            open: HashMap::new(),
        };
        let err = format!("{:#}", inline_tensor(&mut t, &mut files).unwrap_err());
        assert!(err.contains("must be a relative path"), "{err}");
    }
}
