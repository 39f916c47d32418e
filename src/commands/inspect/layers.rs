//! The N:M view of a graph's weight-carrying layers for `maskd inspect`: per MatMul /
//! Gemm with a constant weight, Conv and `maskd.NmMatMul`, whether the weight obeys 2:4
//! (and, for `NmMatMul`, its declared N:M), and its bytes dense vs compressed.
//!
//! Every weight reads as `W[K, N]` with groups along the input dimension `K`, as
//! `docs/SPARSE.md` defines: MatMul as stored, Gemm transposed when transB = 1, Conv
//! `[O, I, kh, kw]` as `K = I*kh*kw` inputs per output channel.

use std::collections::HashMap;
use std::fmt::Write as _;

use maskd_kernels::{NmMatrix, NmPattern};
use tract_onnx::pb;

use crate::commands::onnx_io::{get_int, node_label, tensor_f32, tensor_u8};

/// One weight-carrying layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSparsity {
    pub label: String,
    pub op: String,
    pub weight: String,
    pub k: usize,
    pub n: usize,
    /// For `NmMatMul`: the declared pattern and whether its initialisers decode under
    /// it (`Err` says why not).
    pub declared: Option<(NmPattern, Result<(), String>)>,
    /// Whether the weight obeys 2:4; `None` when it could not be read as float32.
    pub obeys_2_4: Option<bool>,
    /// For a 2:4 weight: the share of (group, adjacent column pair) whose non-zeros
    /// fit one 2:4 pattern, i.e. what `--share 2` guarantees and the x86 token
    /// kernel turns into one input load per two FMAs (~0.17 for magnitude 2:4).
    pub pair_shared: Option<f64>,
    /// `4 * K * N`.
    pub dense_bytes: usize,
    /// What it is stored as: compressed for `NmMatMul`, dense otherwise.
    pub stored_bytes: usize,
    /// Its size compressed as 2:4 (values + packed indices).
    pub bytes_2_4: usize,
}

/// The weight-carrying layers of the top-level graph, in node order. The model's
/// external data must be inline (`onnx_io::read_model_inline`).
pub fn layers(graph: &pb::GraphProto) -> Vec<LayerSparsity> {
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    graph
        .node
        .iter()
        .enumerate()
        .filter_map(|(i, node)| layer(i, node, &inits))
        .collect()
}

fn layer(
    index: usize,
    node: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> Option<LayerSparsity> {
    let w = inits.get(node.input.get(1)?.as_str())?;
    let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
    let values = tensor_f32(w).ok();
    // (k, n, W[K, N] when readable, declared pattern and check, stored bytes)
    let (k, n, kn, declared, stored) = match (node.domain.as_str(), node.op_type.as_str()) {
        ("" | "ai.onnx", "MatMul") => {
            let [k, n] = dims[..] else { return None };
            (k, n, values, None, 4 * k * n)
        }
        ("" | "ai.onnx", "Gemm") => {
            let [a, b] = dims[..] else { return None };
            if get_int(node, "transB") == Some(1) {
                (b, a, values.map(|v| transpose(&v, a, b)), None, 4 * a * b)
            } else {
                (a, b, values, None, 4 * a * b)
            }
        }
        ("" | "ai.onnx", "Conv") => {
            let (&o, rest) = dims.split_first()?;
            let k: usize = rest.iter().product();
            (k, o, values.map(|v| transpose(&v, o, k)), None, 4 * k * o)
        }
        ("maskd", "NmMatMul") => {
            let (k, n, decoded, declared, stored) = matmul(node, inits)?;
            (k, n, decoded, Some(declared), stored)
        }
        _ => return None,
    };
    if k == 0 || n == 0 {
        return None;
    }
    let two_four = NmPattern::TWO_FOUR;
    let obeys_2_4 = kn.as_ref().map(|w| two_four.check(w, k, n).is_ok());
    let pair_shared = match (&kn, obeys_2_4) {
        (Some(w), Some(true)) => Some(pair_shared(w, k, n)),
        _ => None,
    };
    Some(LayerSparsity {
        label: node_label(node, index),
        op: node.op_type.clone(),
        weight: w.name.clone(),
        k,
        n,
        declared,
        obeys_2_4,
        pair_shared,
        dense_bytes: 4 * k * n,
        stored_bytes: stored,
        bytes_2_4: 4 * NmMatrix::values_len(two_four, k, n) + NmMatrix::indices_len(two_four, k, n),
    })
}

type NmView = (
    usize,
    usize,
    Option<Vec<f32>>,
    (NmPattern, Result<(), String>),
    usize,
);

/// An `NmMatMul`'s `K`, `N`, decoded weight, declared pattern (checked by decoding) and
/// stored bytes; `None` when its attributes do not even name a pattern.
fn matmul(node: &pb::NodeProto, inits: &HashMap<&str, &pb::TensorProto>) -> Option<NmView> {
    let attr = |name| get_int(node, name).and_then(|v| usize::try_from(v).ok());
    let pattern = NmPattern::new(attr("n")?, attr("m")?).ok()?;
    let k = attr("k")?;
    let values = inits.get(node.input.get(1)?.as_str())?;
    let indices = inits.get(node.input.get(2)?.as_str());
    let n = values.dims.get(1).map_or(0, |&d| d.max(0) as usize);
    let stored = crate::commands::onnx_io::byte_len(values).unwrap_or(0)
        + indices
            .and_then(|t| crate::commands::onnx_io::byte_len(t))
            .unwrap_or(0);
    let decoded = (|| -> anyhow::Result<NmMatrix> {
        let indices = indices.ok_or_else(|| anyhow::anyhow!("no indices initialiser"))?;
        Ok(NmMatrix::from_parts(
            pattern,
            k,
            n,
            tensor_f32(values)?,
            tensor_u8(indices)?,
        )?)
    })();
    match decoded {
        Ok(m) => Some((k, n, Some(m.to_dense()), (pattern, Ok(())), stored)),
        Err(e) => Some((k, n, None, (pattern, Err(format!("{e:#}"))), stored)),
    }
}

/// See [`LayerSparsity::pair_shared`]; `w[K, N]` obeys 2:4. An odd last column and a
/// tail group count like the others.
fn pair_shared(w: &[f32], k: usize, n: usize) -> f64 {
    let (mut shared, mut all) = (0usize, 0usize);
    for g in (0..k).step_by(4) {
        for c in (0..n).step_by(2) {
            let union = (g..(g + 4).min(k))
                .filter(|&r| (c..(c + 2).min(n)).any(|j| w[r * n + j] != 0.0))
                .count();
            shared += usize::from(union <= 2);
            all += 1;
        }
    }
    shared as f64 / all.max(1) as f64
}

/// `a[rows, cols]` row-major -> `[cols, rows]`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The per-layer table and the totals line.
pub fn render(out: &mut String, layers: &[LayerSparsity]) -> std::fmt::Result {
    if layers.is_empty() {
        return writeln!(out, "weight layers: none");
    }
    let rows: Vec<[String; 7]> = layers
        .iter()
        .map(|l| {
            let declared = match &l.declared {
                None => "-".to_owned(),
                Some((p, Ok(()))) => format!("{p} ok"),
                Some((p, Err(e))) => format!("{p} INVALID: {e}"),
            };
            let obeys = match l.obeys_2_4 {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            [
                l.label.clone(),
                l.op.clone(),
                l.weight.clone(),
                format!("{}x{}", l.k, l.n),
                obeys.to_owned(),
                l.pair_shared
                    .map_or("-".to_owned(), |f| format!("{:.0}%", 100.0 * f)),
                declared,
            ]
        })
        .collect();
    let head = ["layer", "op", "weight", "KxN", "2:4", "pairs", "declared"].map(String::from);
    let mut width = [0; 7];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    writeln!(out, "weight layers (N:M groups along K):")?;
    let tails = std::iter::once("bytes: stored / dense / as 2:4".to_owned()).chain(
        layers
            .iter()
            .map(|l| format!("{} / {} / {}", l.stored_bytes, l.dense_bytes, l.bytes_2_4)),
    );
    for (row, tail) in std::iter::once(&head).chain(&rows).zip(tails) {
        let mut line = String::from(" ");
        for (cell, w) in row.iter().zip(width) {
            write!(line, " {cell:w$}")?;
        }
        writeln!(out, "{line}  {tail}")?;
    }
    let sum = |f: fn(&LayerSparsity) -> usize| layers.iter().map(f).sum::<usize>();
    writeln!(
        out,
        "weight layers total: {} layers, {} obey 2:4, {} NmMatMul; stored {} B, dense {} B, as 2:4 {} B",
        layers.len(),
        layers.iter().filter(|l| l.obeys_2_4 == Some(true)).count(),
        layers.iter().filter(|l| l.declared.is_some()).count(),
        sum(|l| l.stored_bytes),
        sum(|l| l.dense_bytes),
        sum(|l| l.bytes_2_4),
    )
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::commands::sparsify::{parse_pattern, sparsify, Options, SkipRules};

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sparsify/model.onnx")
    }

    fn layers_of(path: &Path) -> Vec<LayerSparsity> {
        let model = crate::commands::onnx_io::read_model_inline(path).unwrap();
        layers(model.graph.as_ref().unwrap())
    }

    fn find<'a>(l: &'a [LayerSparsity], label: &str) -> &'a LayerSparsity {
        l.iter().find(|l| l.label == label).unwrap()
    }

    #[test]
    fn a_2_4_weight_obeys_and_a_random_one_does_not() {
        let l = layers_of(&fixture());
        let labels: Vec<&str> = l.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            ["conv", "rgb", "patch", "fc1", "gemm", "fc2", "head"]
        );
        let fc2 = find(&l, "fc2");
        assert_eq!(
            (fc2.k, fc2.n, fc2.obeys_2_4, fc2.declared.clone()),
            (32, 48, Some(true), None)
        );
        // 2:4 of 32x48: half the values as f32 plus 2 bits per value.
        assert_eq!(
            (fc2.stored_bytes, fc2.dense_bytes, fc2.bytes_2_4),
            (6144, 6144, 768 * 4 + 768 * 2 / 8)
        );
        assert_eq!(find(&l, "fc1").obeys_2_4, Some(false));
        let conv = find(&l, "conv");
        assert_eq!((conv.k, conv.n), (27, 4), "Conv reads as K = I*kh*kw");
        let gemm = find(&l, "gemm");
        assert_eq!(
            (gemm.k, gemm.n),
            (64, 32),
            "transB: stored [32, 64] is [N, K]"
        );
    }

    #[test]
    fn matmul_layers_report_declared_pattern_and_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for pattern in ["2:4", "4:8"] {
            let out = dir
                .path()
                .join(format!("{}.onnx", pattern.replace(':', "_")));
            let opts = Options {
                pattern: parse_pattern(pattern).unwrap(),
                share: 1,
                dense_out: false,
                skips: SkipRules::default(),
                progress: false,
            };
            sparsify(&fixture(), &out, &opts).unwrap();
            let l = layers_of(&out);
            let fc1 = find(&l, "fc1");
            assert_eq!(fc1.op, "NmMatMul");
            assert_eq!(
                fc1.declared,
                Some((parse_pattern(pattern).unwrap(), Ok(())))
            );
            let p = parse_pattern(pattern).unwrap();
            let stored = 4 * NmMatrix::values_len(p, 32, 64) + NmMatrix::indices_len(p, 32, 64);
            assert_eq!((fc1.stored_bytes, fc1.dense_bytes), (stored, 8192));
            // 4:8 keeps 4 of 8: most groups of 4 inside hold 3 or 4 non-zeros.
            assert_eq!(fc1.obeys_2_4, Some(pattern == "2:4"), "{pattern}");
        }
    }

    #[test]
    fn corrupt_matmul_is_reported_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.onnx");
        let opts = Options {
            pattern: NmPattern::TWO_FOUR,
            share: 1,
            dense_out: false,
            skips: SkipRules::default(),
            progress: false,
        };
        sparsify(&fixture(), &out, &opts).unwrap();
        let mut model = crate::commands::onnx_io::read_model_inline(&out).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == "fc1.w.nm_indices")
            .unwrap();
        // Slot 1 of columns 0..4 (elements 64..68, byte 16 at 2 bits each) at position
        // 0, not above slot 0's: breaks the strictly increasing order.
        t.raw_data[16] = 0;
        let l = layers(graph);
        let fc1 = find(&l, "fc1");
        assert!(
            matches!(&fc1.declared, Some((_, Err(e))) if e.contains("not strictly increasing")),
            "{:?}",
            fc1.declared
        );
        assert_eq!(fc1.obeys_2_4, None);
    }

    #[test]
    fn pair_shared_patterns_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut shared = vec![];
        for share in [1, 2] {
            let out = dir.path().join(format!("share{share}.onnx"));
            let opts = Options {
                pattern: NmPattern::TWO_FOUR,
                share,
                dense_out: false,
                skips: SkipRules::default(),
                progress: false,
            };
            sparsify(&fixture(), &out, &opts).unwrap();
            shared.push(find(&layers_of(&out), "fc1").pair_shared.unwrap());
        }
        assert!(shared[0] < 0.5, "{shared:?}");
        assert_eq!(shared[1], 1.0);
        // Not a 2:4 weight: nothing to say.
        assert_eq!(find(&layers_of(&fixture()), "fc1").pair_shared, None);
    }

    #[test]
    fn report_shows_the_table_and_totals() {
        let text = crate::commands::inspect::report(&fixture(), false).unwrap();
        let fc2 = text
            .lines()
            .find(|l| l.trim_start().starts_with("fc2 "))
            .unwrap();
        assert!(
            fc2.contains(" yes ") && fc2.contains("6144 / 6144 / 3264"),
            "{fc2}"
        );
        assert!(
            text.contains("weight layers total: 7 layers, 1 obey 2:4, 0 NmMatMul"),
            "{text}"
        );
    }

    #[test]
    fn missing_weights_do_not_stop_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::copy(fixture(), &model).unwrap();
        let text = crate::commands::inspect::report(&model, false).unwrap();
        assert!(text.contains("ops (17 nodes"), "{text}");
        assert!(
            text.contains("weight layers: weights not read:") && text.contains("weights.bin"),
            "{text}"
        );
    }
}
