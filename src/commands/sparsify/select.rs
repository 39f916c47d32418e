//! Which layers `maskd sparsify` prunes: finds the weight-carrying nodes of a graph,
//! decides for each whether it can be pruned (and how its weight reads as `W[K, N]`),
//! and applies the skip rules. Touches no weight data.

use std::collections::{HashMap, HashSet};

use maskd_kernels::NmPattern;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::type_proto::Value as TypeValue;

use crate::commands::onnx_io::{get_float, get_int, node_label, numel};

/// How a Gemm's weight, scale and C map onto `y = x · W + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmInfo {
    /// B is stored `[N, K]` (transB = 1).
    pub trans_b: bool,
    pub alpha: f32,
    /// The constant C and beta, when C is given.
    pub bias: Option<(String, f32)>,
    /// Why the Gemm cannot become an exact `NmMatMul` (it can still be pruned densely).
    pub fold_error: Option<String>,
}

/// What the selection decided for one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Prune,
    Skip(String),
    NotEligible(String),
}

/// One weight-carrying node.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub node_index: usize,
    pub label: String,
    pub op: String,
    /// The weight initialiser's name and stored dims.
    pub weight: String,
    pub dims: Vec<i64>,
    /// The weight as `W[K, N]`, when it reads as one.
    pub kn: Option<(usize, usize)>,
    pub gemm: Option<GemmInfo>,
    pub decision: Decision,
}

/// Skip rules (see `SparsifyArgs`).
#[derive(Debug, Clone, Default)]
pub struct SkipRules {
    pub default_skips: bool,
    /// Node or weight names containing one of these are left dense.
    pub substrings: Vec<String>,
}

/// The layers of `graph` in node order, each with its decision for `pattern`.
/// `compressed`: the output uses `NmMatMul`, so Gemms must fold exactly.
pub fn plan(
    graph: &pb::GraphProto,
    pattern: NmPattern,
    compressed: bool,
    rules: &SkipRules,
) -> Vec<Layer> {
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let on_image = image_consumers(graph, &inits);
    let mut layers: Vec<Layer> = graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, node)| layer(i, node, &inits, pattern, compressed))
        .collect();
    if rules.default_skips {
        let eligible: Vec<usize> = (0..layers.len())
            .filter(|&i| layers[i].decision == Decision::Prune)
            .collect();
        let first_image = eligible
            .iter()
            .copied()
            .find(|&i| on_image.contains(&layers[i].node_index));
        if let Some(&last) = eligible.last() {
            layers[last].decision =
                Decision::Skip("last layer (default skip; --no-default-skips prunes it)".into());
        }
        if let Some(first) = first_image {
            layers[first].decision = Decision::Skip(
                "first layer on the image, the patch embedding (default skip; --no-default-skips prunes it)"
                    .into(),
            );
        }
    }
    for l in &mut layers {
        if l.decision != Decision::Prune {
            continue;
        }
        if let Some(s) = rules
            .substrings
            .iter()
            .find(|s| l.label.contains(s.as_str()) || l.weight.contains(s.as_str()))
        {
            l.decision = Decision::Skip(format!("--skip {s:?}"));
        }
    }
    layers
}

/// One node as a [`Layer`], or `None` if it carries no constant weight.
fn layer(
    index: usize,
    node: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
    pattern: NmPattern,
    compressed: bool,
) -> Option<Layer> {
    let (weight_at, is_gemm) = match (node.domain.as_str(), node.op_type.as_str()) {
        ("" | "ai.onnx", "MatMul" | "Conv") => (1, false),
        ("" | "ai.onnx", "Gemm") => (1, true),
        _ => return None,
    };
    let w = inits.get(node.input.get(weight_at)?.as_str())?;
    let mut l = Layer {
        node_index: index,
        label: node_label(node, index),
        op: node.op_type.clone(),
        weight: w.name.clone(),
        dims: w.dims.clone(),
        kn: None,
        gemm: None,
        decision: Decision::Prune,
    };
    if node.op_type == "Conv" {
        l.decision = Decision::NotEligible(
            "Conv: NmMatMul covers MatMul/Gemm only (a Conv weight needs im2col first)".into(),
        );
        return Some(l);
    }
    if w.data_type != DataType::Float as i32 {
        l.decision = Decision::NotEligible("weight is not float32".into());
        return Some(l);
    }
    let [a, b] = w.dims[..] else {
        l.decision = Decision::NotEligible(format!(
            "weight has rank {}, not 2 (batched MatMul)",
            w.dims.len()
        ));
        return Some(l);
    };
    let (a, b) = (a.max(0) as usize, b.max(0) as usize);
    if is_gemm {
        let g = gemm_info(
            node,
            inits,
            if get_int(node, "transB") == Some(1) {
                a
            } else {
                b
            },
        );
        l.kn = Some(if g.trans_b { (b, a) } else { (a, b) });
        if get_int(node, "transA") == Some(1) {
            l.decision = Decision::NotEligible("Gemm with transA = 1".into());
        } else if let (true, Some(e)) = (compressed, &g.fold_error) {
            l.decision = Decision::NotEligible(e.clone());
        }
        l.gemm = Some(g);
    } else {
        l.kn = Some((a, b));
    }
    if let (Decision::Prune, Some((k, n))) = (&l.decision, l.kn) {
        if k == 0 || n == 0 {
            l.decision = Decision::NotEligible("empty weight".into());
        } else if k < pattern.m() {
            l.decision =
                Decision::Skip(format!("K = {k} < M = {}: too small to prune", pattern.m()));
        }
    }
    Some(l)
}

fn gemm_info(node: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>, n: usize) -> GemmInfo {
    let alpha = get_float(node, "alpha").unwrap_or(1.0);
    let beta = get_float(node, "beta").unwrap_or(1.0);
    let c = node.input.get(2).filter(|c| !c.is_empty());
    let mut fold_error = None;
    if !exact_scale(alpha) {
        fold_error = Some(format!(
            "Gemm alpha = {alpha} is not a power of two, so folding it into W is not exact"
        ));
    }
    let bias = c.map(|c| (c.clone(), beta));
    if let Some(c) = c {
        match inits.get(c.as_str()) {
            None => fold_error = Some(format!("Gemm C `{c}` is not a constant")),
            Some(t) => {
                let fits = t.data_type == DataType::Float as i32
                    && t.dims.len() <= 2
                    && t.dims.iter().rev().skip(1).all(|&d| d == 1)
                    && (numel(t) == Some(n) || numel(t) == Some(1));
                if !fits {
                    fold_error = Some(format!(
                        "Gemm C `{c}` has dims {:?}: only a float [N] (or scalar) bias folds",
                        t.dims
                    ));
                } else if !exact_scale(beta) {
                    fold_error = Some(format!(
                        "Gemm beta = {beta} is not a power of two, so folding it into the bias is not exact"
                    ));
                }
            }
        }
    }
    GemmInfo {
        trans_b: get_int(node, "transB") == Some(1),
        alpha,
        bias,
        fold_error,
    }
}

/// A scale multiplies exactly (barring overflow) when it is a power of two.
pub fn exact_scale(s: f32) -> bool {
    s.is_normal() && s.to_bits() & 0x007f_ffff == 0
}

/// Indices of the nodes whose first input depends on an image input: a graph input
/// of rank 4, or one whose name says image/pixel.
fn image_consumers(
    graph: &pb::GraphProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> HashSet<usize> {
    let mut reached: HashSet<&str> = graph
        .input
        .iter()
        .filter(|i| !inits.contains_key(i.name.as_str()))
        .filter(|i| {
            let name = i.name.to_lowercase();
            let rank4 = match i.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(TypeValue::TensorType(t)) => {
                    t.shape.as_ref().is_some_and(|s| s.dim.len() == 4)
                }
                _ => false,
            };
            rank4 || name.contains("image") || name.contains("pixel")
        })
        .map(|i| i.name.as_str())
        .collect();
    let mut consumers = HashSet::new();
    for (i, node) in graph.node.iter().enumerate() {
        if node
            .input
            .first()
            .is_some_and(|x| reached.contains(x.as_str()))
        {
            consumers.insert(i);
        }
        if node.input.iter().any(|x| reached.contains(x.as_str())) {
            reached.extend(node.output.iter().map(String::as_str));
        }
    }
    consumers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_scales_are_powers_of_two() {
        assert!(exact_scale(1.0) && exact_scale(0.5) && exact_scale(-4.0));
        assert!(!exact_scale(0.3) && !exact_scale(0.0) && !exact_scale(f32::NAN));
    }
}
