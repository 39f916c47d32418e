//! Rewrites one graph for the layers [`super::select`] chose: prunes each weight to
//! N:M by magnitude and either swaps the node for `maskd.NmMatMul` (values, indices,
//! bias as new initialisers) or writes the pruned weight back densely. Drops the
//! initialisers nobody reads any more.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};
use maskd_kernels::{NmMatrix, NmPattern};
use tract_onnx::pb;

use super::select::{Decision, GemmInfo, Layer};
use crate::commands::onnx_io::{f32_tensor, int_attr, set_f32, tensor_f32, u8_tensor};

/// The custom-op domain `NmMatMul` lives in (docs/SPARSE.md).
pub const DOMAIN: &str = "maskd";

/// What pruning one layer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Non-zero weights left, of `K * N`.
    pub kept: usize,
    pub total: usize,
    pub dense_bytes: usize,
    pub compressed_bytes: usize,
}

/// Prunes `layers[i]` (when its decision is `Prune`) and calls `progress(i)` first.
/// Returns, per layer, what pruning gave (`None` for layers left alone).
pub fn apply(
    graph: &mut pb::GraphProto,
    layers: &[Layer],
    pattern: NmPattern,
    share: usize,
    compressed: bool,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Vec<Option<Pruned>>> {
    let uses = use_counts(graph);
    let mut taken: HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .chain(graph.node.iter().flat_map(|n| n.output.iter().cloned()))
        .chain(graph.input.iter().map(|i| i.name.clone()))
        .collect();
    let mut index: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut touched = HashSet::new();
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        if layer.decision != Decision::Prune {
            out.push(None);
            continue;
        }
        progress(i);
        let node_ctx = || format!("node `{}` ({})", layer.label, layer.op);
        let (k, n) = layer.kn.with_context(node_ctx)?;
        let w_at = *index.get(&layer.weight).with_context(node_ctx)?;
        let stored = tensor_f32(&graph.initializer[w_at]).with_context(node_ctx)?;
        let trans_b = layer.gemm.as_ref().is_some_and(|g| g.trans_b);
        let mut w = if trans_b {
            transpose(&stored, n, k)
        } else {
            stored
        };
        if let (true, Some(g)) = (compressed, &layer.gemm) {
            w.iter_mut().for_each(|v| *v *= g.alpha);
        }
        let sparse =
            NmMatrix::from_dense_pruned_shared(&w, k, n, pattern, share).with_context(node_ctx)?;
        let dense = sparse.to_dense();
        let pruned = Pruned {
            kept: dense.iter().filter(|v| **v != 0.0).count(),
            total: k * n,
            dense_bytes: sparse.dense_bytes(),
            compressed_bytes: sparse.compressed_bytes(),
        };
        touched.insert(layer.weight.clone());
        // A weight read by one node is renamed in place; a shared one gets copies so
        // the other readers keep the original.
        let base = if uses.get(&layer.weight) == Some(&1) {
            layer.weight.clone()
        } else {
            format!("{}.{}", layer.weight, layer.node_index)
        };
        if compressed {
            let values = fresh(&format!("{base}.nm_values"), &mut taken);
            let indices = fresh(&format!("{base}.nm_indices"), &mut taken);
            let groups_n = pattern.groups(k) * pattern.n();
            let mut new = vec![
                f32_tensor(&values, &[groups_n, n], sparse.values()),
                u8_tensor(
                    &indices,
                    &[sparse.indices().len()],
                    sparse.indices().to_vec(),
                ),
            ];
            let node = &graph.node[layer.node_index];
            let mut inputs = vec![node.input[0].clone(), values, indices];
            if let Some(GemmInfo {
                bias: Some((c, beta)),
                ..
            }) = &layer.gemm
            {
                let c_at = *index.get(c).with_context(node_ctx)?;
                let bias =
                    broadcast_bias(&graph.initializer[c_at], n, *beta).with_context(node_ctx)?;
                let name = fresh(&format!("{base}.nm_bias"), &mut taken);
                new.push(f32_tensor(&name, &[n], &bias));
                inputs.push(name);
                touched.insert(c.clone());
            }
            for t in new {
                index.insert(t.name.clone(), graph.initializer.len());
                graph.initializer.push(t);
            }
            let node = &mut graph.node[layer.node_index];
            node.op_type = "NmMatMul".into();
            node.domain = DOMAIN.into();
            node.input = inputs;
            node.attribute = vec![
                int_attr("n", pattern.n() as i64),
                int_attr("m", pattern.m() as i64),
                int_attr("k", k as i64),
            ];
        } else {
            let back = if trans_b {
                transpose(&dense, k, n)
            } else {
                dense
            };
            if base == layer.weight {
                set_f32(&mut graph.initializer[w_at], &back);
            } else {
                let name = fresh(&format!("{base}.pruned"), &mut taken);
                let mut t = graph.initializer[w_at].clone();
                t.name = name.clone();
                set_f32(&mut t, &back);
                index.insert(name.clone(), graph.initializer.len());
                graph.initializer.push(t);
                graph.node[layer.node_index].input[1] = name;
            }
        }
        out.push(Some(pruned));
    }
    drop_unused(graph, &touched);
    Ok(out)
}

/// `a[rows, cols]` row-major -> its transpose `[cols, rows]`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Gemm's `beta * C` as an `[N]` bias (`select` checked C is `[N]`, `[1, N]` or scalar).
fn broadcast_bias(c: &pb::TensorProto, n: usize, beta: f32) -> anyhow::Result<Vec<f32>> {
    let v = tensor_f32(c)?;
    let v = match v.len() {
        1 => vec![v[0]; n],
        len if len == n => v,
        len => bail!("Gemm C `{}` has {len} values, expected {n}", c.name),
    };
    Ok(v.into_iter().map(|x| x * beta).collect())
}

/// `base`, or `base.2`, `base.3`, ... whichever is not a name in the graph yet.
fn fresh(base: &str, taken: &mut HashSet<String>) -> String {
    let mut name = base.to_owned();
    let mut i = 2;
    while taken.contains(&name) {
        name = format!("{base}.{i}");
        i += 1;
    }
    taken.insert(name.clone());
    name
}

/// How many times each name is read: node inputs (subgraphs included) and graph outputs.
fn use_counts(graph: &pb::GraphProto) -> HashMap<String, usize> {
    fn walk(g: &pb::GraphProto, counts: &mut HashMap<String, usize>) {
        for node in &g.node {
            for i in &node.input {
                *counts.entry(i.clone()).or_default() += 1;
            }
            for a in &node.attribute {
                for sub in a.g.iter().chain(&a.graphs) {
                    walk(sub, counts);
                }
            }
        }
        for o in &g.output {
            *counts.entry(o.name.clone()).or_default() += 1;
        }
    }
    let mut counts = HashMap::new();
    walk(graph, &mut counts);
    counts
}

/// Removes initialisers in `candidates` that nothing reads any more (and their
/// entries in `graph.input`, where old exporters list initialisers).
fn drop_unused(graph: &mut pb::GraphProto, candidates: &HashSet<String>) {
    let uses = use_counts(graph);
    let dead = |name: &str| candidates.contains(name) && !uses.contains_key(name);
    graph.initializer.retain(|t| !dead(&t.name));
    graph.input.retain(|i| !dead(&i.name));
    graph.value_info.retain(|i| !dead(&i.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_round_trips() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let t = transpose(&a, 2, 3);
        assert_eq!(t, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), a);
    }

    #[test]
    fn fresh_names_do_not_collide() {
        let mut taken: HashSet<String> = ["w.nm_values".to_owned()].into();
        assert_eq!(fresh("w.nm_values", &mut taken), "w.nm_values.2");
        assert_eq!(fresh("w.nm_values", &mut taken), "w.nm_values.3");
    }
}
