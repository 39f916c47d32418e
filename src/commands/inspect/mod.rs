//! `maskd inspect MODEL.onnx|MANIFEST.toml`: what a graph takes and gives, what it is
//! made of, how big it is.
//!
//! Reads the ONNX protobuf, not tract's model, so it also works on graphs tract cannot
//! run. For a manifest, it inspects every graph the manifest names. The weights' values
//! are read (external data included) only for the N:M table of weight-carrying layers
//! ([`layers`]); when they cannot be, the rest of the report still prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::Framework;

use crate::engine::text::encoder::TEST_PROMPT;
use crate::engine::text::{TextEncoder, Tokenizer};
use crate::engine::Manifest;

pub mod layers;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// An ONNX graph, or a model manifest (TOML) to inspect every graph it names.
    pub path: PathBuf,
    /// Also list every weight (initialiser): name, shape, type, size.
    #[arg(long)]
    pub weights: bool,
}

/// One input or output of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoInfo {
    pub name: String,
    /// `f32`, `i64`, ...
    pub dtype: &'static str,
    /// Each dim as a number or its symbolic name; `?` if not given.
    pub shape: Vec<String>,
}

/// One weight tensor (an initialiser, or the value of a `Constant` node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightInfo {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: &'static str,
    pub params: u64,
    pub bytes: u64,
    /// Stored in an external data file rather than in the graph file.
    pub external: bool,
}

/// What `inspect` reports for one graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphInfo {
    pub producer: String,
    pub opset: i64,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    /// Op type -> node count (subgraphs included).
    pub ops: BTreeMap<String, usize>,
    pub weights: Vec<WeightInfo>,
    /// The N:M view of the weight-carrying layers, or why the weights could not be read.
    pub layers: Result<Vec<layers::LayerSparsity>, String>,
}

impl GraphInfo {
    pub fn params(&self) -> u64 {
        self.weights.iter().map(|w| w.params).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.weights.iter().map(|w| w.bytes).sum()
    }
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    print!("{}", report(&args.path, args.weights)?);
    Ok(())
}

/// The text `maskd inspect` prints.
pub fn report(path: &Path, weights: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if path.extension().is_some_and(|e| e == "toml") {
        let m = Manifest::load(path)?;
        let (text, max_tokens) = check_text(&m)?;
        writeln!(out, "manifest {}: model \"{}\"", path.display(), m.name)?;
        writeln!(
            out,
            "image {}x{}, mean {:?}, std {:?}; text dim {}, max {} tokens; masks {}x{}\n",
            m.image.width,
            m.image.height,
            m.image.mean,
            m.image.std,
            m.text.dim,
            max_tokens,
            m.segmenter.mask_size[1],
            m.segmenter.mask_size[0]
        )?;
        writeln!(out, "{text}\n")?;
        for (key, file) in m.files() {
            if file.extension().is_some_and(|e| e == "onnx") {
                let info = inspect(file).with_context(|| format!("{}: {key}", path.display()))?;
                writeln!(out, "== {key}: {}", m.relative(file).display())?;
                render(&mut out, &info, weights)?;
                writeln!(out)?;
            }
        }
    } else {
        let info = inspect(path)?;
        writeln!(out, "== {}", path.display())?;
        render(&mut out, &info, weights)?;
    }
    Ok(out)
}

/// Loads the tokenizer and text encoder as `run` does and encodes a test prompt, so that
/// what would fail at run time (a tokenizer without the token the pooling reads, a graph
/// tract cannot run) fails here; the summary line and the tokenizer's limit.
fn check_text(m: &Manifest) -> anyhow::Result<(String, usize)> {
    let t = &m.text;
    let tokenizer = Tokenizer::load(t)
        .with_context(|| format!("{}: {}", m.path.display(), t.tokenizer.key()))?;
    let mut encoder = TextEncoder::load(m, &tokenizer)?;
    let v = encoder
        .self_test(&tokenizer)
        .with_context(|| format!("{}: text.model", m.path.display()))?;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let line = format!(
        "text: {}; pooling {}, normalize {}; {:?} -> {} values, L2 norm {norm:.4}",
        tokenizer.describe(),
        t.pooling.as_str(),
        t.normalize,
        TEST_PROMPT,
        v.len()
    );
    Ok((line, tokenizer.max_tokens()))
}

/// Reads `path`'s protobuf and summarises it.
pub fn inspect(path: &Path) -> anyhow::Result<GraphInfo> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .with_context(|| format!("{}: reading the ONNX protobuf", path.display()))?;
    let graph = proto
        .graph
        .as_ref()
        .with_context(|| format!("{}: has no graph", path.display()))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let initialisers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initialisers.contains(i.name.as_str()))
        .map(io_info)
        .collect();
    let outputs = graph.output.iter().map(io_info).collect();
    let mut ops = BTreeMap::new();
    let mut weights: Vec<WeightInfo> = graph
        .initializer
        .iter()
        .map(|t| weight_info(&t.name, t))
        .collect();
    count_ops(graph, &mut ops, &mut weights);
    let producer = format!("{} {}", proto.producer_name, proto.producer_version)
        .trim()
        .to_owned();
    let layers = crate::commands::onnx_io::read_model_inline(path)
        .map(|m| m.graph.as_ref().map(layers::layers).unwrap_or_default())
        .map_err(|e| format!("{e:#}"));
    Ok(GraphInfo {
        producer,
        opset,
        inputs,
        outputs,
        ops,
        weights,
        layers,
    })
}

fn count_ops(
    graph: &pb::GraphProto,
    ops: &mut BTreeMap<String, usize>,
    weights: &mut Vec<WeightInfo>,
) {
    for node in &graph.node {
        *ops.entry(node.op_type.clone()).or_default() += 1;
        for attr in &node.attribute {
            if node.op_type == "Constant" && attr.name == "value" {
                if let Some(t) = &attr.t {
                    let name = node
                        .output
                        .first()
                        .cloned()
                        .unwrap_or_else(|| node.name.clone());
                    weights.push(weight_info(&name, t));
                }
            }
            for g in attr.g.iter().chain(&attr.graphs) {
                count_ops(g, ops, weights);
            }
        }
    }
}

fn io_info(v: &pb::ValueInfoProto) -> IoInfo {
    let (dtype, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let shape = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(DimValue::DimValue(n)) => n.to_string(),
                            Some(DimValue::DimParam(p)) => p.clone(),
                            None => "?".to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_else(|| vec!["?..".to_owned()]);
            (dtype_name(t.elem_type).0, shape)
        }
        _ => ("?", vec![]),
    };
    IoInfo {
        name: v.name.clone(),
        dtype,
        shape,
    }
}

fn weight_info(name: &str, t: &pb::TensorProto) -> WeightInfo {
    let params = t.dims.iter().map(|d| (*d).max(0) as u64).product::<u64>();
    let (dtype, size) = dtype_name(t.data_type);
    let external = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    WeightInfo {
        name: name.to_owned(),
        shape: t.dims.clone(),
        dtype,
        params,
        bytes: params * size,
        external,
    }
}

/// ONNX element type -> (name, bytes per element).
fn dtype_name(t: i32) -> (&'static str, u64) {
    match t {
        1 => ("f32", 4),
        2 => ("u8", 1),
        3 => ("i8", 1),
        4 => ("u16", 2),
        5 => ("i16", 2),
        6 => ("i32", 4),
        7 => ("i64", 8),
        8 => ("string", 0),
        9 => ("bool", 1),
        10 => ("f16", 2),
        11 => ("f64", 8),
        12 => ("u32", 4),
        13 => ("u64", 8),
        14 => ("c64", 8),
        15 => ("c128", 16),
        16 => ("bf16", 2),
        17..=20 => ("f8", 1),
        _ => ("?", 0),
    }
}

fn render(out: &mut String, g: &GraphInfo, weights: bool) -> std::fmt::Result {
    writeln!(
        out,
        "producer: {}, opset {}",
        if g.producer.is_empty() {
            "?"
        } else {
            &g.producer
        },
        g.opset
    )?;
    for (title, list) in [("inputs", &g.inputs), ("outputs", &g.outputs)] {
        writeln!(out, "{title}:")?;
        let width = list.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for io in list {
            let shape = if io.shape.is_empty() {
                "scalar".to_owned()
            } else {
                io.shape.join("x")
            };
            writeln!(out, "  {:width$}  {:4}  {shape}", io.name, io.dtype)?;
        }
    }
    let nodes: usize = g.ops.values().sum();
    let mut ops: Vec<(&String, &usize)> = g.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let list: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
    writeln!(
        out,
        "ops ({nodes} nodes, {} types): {}",
        ops.len(),
        list.join(", ")
    )?;
    let external = g.weights.iter().filter(|w| w.external).count();
    writeln!(
        out,
        "parameters: {} in {} tensors, {}{}",
        human(g.params(), ""),
        g.weights.len(),
        human(g.bytes(), "B"),
        if external > 0 {
            format!(" ({external} tensors in external data)")
        } else {
            String::new()
        }
    )?;
    match &g.layers {
        Ok(l) => layers::render(out, l)?,
        Err(e) => writeln!(out, "weight layers: weights not read: {e}")?,
    }
    if weights {
        let width = g
            .weights
            .iter()
            .map(|w| w.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(
            out,
            "  {:width$}  {:>16}  {:4}  {:>10}  {:>10}",
            "name", "shape", "type", "params", "bytes"
        )?;
        for w in &g.weights {
            let shape: Vec<String> = w.shape.iter().map(i64::to_string).collect();
            let shape = if shape.is_empty() {
                "scalar".to_owned()
            } else {
                shape.join("x")
            };
            writeln!(
                out,
                "  {:width$}  {shape:>16}  {:4}  {:>10}  {:>10}",
                w.name, w.dtype, w.params, w.bytes
            )?;
        }
    }
    Ok(())
}

/// 1234567 -> "1.23 M" (`unit` appended: "1.23 MB").
fn human(n: u64, unit: &str) -> String {
    let (v, prefix) = match n {
        0..1_000 => return format!("{n} {unit}").trim_end().to_owned(),
        1_000..1_000_000 => (n as f64 / 1e3, "k"),
        1_000_000..1_000_000_000 => (n as f64 / 1e6, "M"),
        _ => (n as f64 / 1e9, "G"),
    };
    format!("{v:.2} {prefix}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixture")
            .join(rel)
    }

    #[test]
    fn fixture_segmenter_summary() {
        let g = inspect(&fixture("seg/seg.onnx")).unwrap();
        assert_eq!(g.opset, 17);
        assert_eq!(
            g.inputs[0],
            IoInfo {
                name: "image".into(),
                dtype: "f32",
                shape: vec!["1".into(), "3".into(), "64".into(), "64".into()]
            }
        );
        assert_eq!(g.inputs[1].shape, ["P", "16"]);
        assert_eq!(g.outputs[1].name, "presence_logits");
        assert_eq!(g.ops["LayerNormalization"], 4);
        let patch = g
            .weights
            .iter()
            .find(|w| w.name == "embed.patch.w")
            .unwrap();
        assert_eq!(
            (patch.params, patch.bytes, patch.external),
            (32 * 3 * 16 * 16, 4 * 32 * 3 * 16 * 16, true)
        );
        assert!(g.params() > 40_000, "{}", g.params());
    }

    #[test]
    fn manifest_report_covers_every_graph() {
        let text = report(&fixture("fixture.toml"), true).unwrap();
        for key in [
            "== text.model: text.onnx",
            "== segmenter.model: seg/seg.onnx",
            "== stages.blocks[1]: seg/block1.onnx",
        ] {
            assert!(text.contains(key), "{key} missing in\n{text}");
        }
        assert!(text.contains("attn_received"), "{text}");
        assert!(
            text.contains("embed.patch.w"),
            "--weights lists weights:\n{text}"
        );
    }

    #[test]
    fn unreadable_file_is_named() {
        let err = format!("{:#}", inspect(Path::new("no/such.onnx")).unwrap_err());
        assert!(
            err.starts_with("no/such.onnx: reading the ONNX protobuf"),
            "{err}"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(999, ""), "999");
        assert_eq!(human(4_500_000, ""), "4.50 M");
        assert_eq!(human(18_000_000, "B"), "18.00 MB");
    }
}
