//! Applying `engine.sparse_kernel` to a typed, decluttered graph, and reporting the result.
//!
//! Two kinds of layer can run sparse: `maskd.NmMatMul` nodes (weights stored compressed)
//! and plain matmuls (`EinSum` `...k,kn->...n`, from ONNX `MatMul`) whose constant weight
//! already obeys 2:4 (a model pruned but exported dense). The mode decides:
//!
//! | mode | `NmMatMul` | dense matmul obeying 2:4 |
//! |---|---|---|
//! | `dense` | decompressed to a constant matmul | left dense |
//! | `sparse` | kept, whatever kernel runs it (the scalar `generic` one included) | rewritten to `NmMatMul` |
//! | `auto` | kept if a SIMD kernel covers its pattern, else decompressed | rewritten if a SIMD kernel covers 2:4 |
//!
//! `auto` stays dense where only the scalar kernel would run, because tract's dense
//! matmul beats it; `sparse` is there to force the sparse path (A/B runs, testing the
//! fallback) and never fails for want of a qualifying layer. Only 2:4 is looked for in
//! dense weights: it is the pattern `maskd sparsify` writes and the one the x86 kernels
//! are tuned for; looking for every N:M would turn any small matrix into a candidate.
//!
//! Leaves out: the op itself (`op.rs`) and ONNX parsing (`onnx.rs`).

use std::fmt::Write as _;

use maskd_kernels::{DenseKind, KernelKind, NmMatrix, NmPattern, PackedGemm};
use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use super::op::{DenseMatMul, MatMul, NmMatMul, SparseWeights, Weights};
use crate::config::SparseKernel;

/// Dense matmuls with a shorter `K` are never rewritten: with fewer than two groups an
/// unpruned matrix can obey 2:4 by accident, and there is nothing to gain.
const MIN_REWRITE_K: usize = 8;

/// One layer the plan runs with the sparse kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseLayer {
    /// The graph node's name.
    pub name: String,
    pub pattern: NmPattern,
    pub k: usize,
    pub n: usize,
    /// The precise kernel, e.g. `avx2_spmm24_f32_4x16`.
    pub kernel: String,
}

/// Which N:M layers of a plan run sparse and which run dense.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseReport {
    pub sparse: Vec<SparseLayer>,
    /// Names of N:M layers (compressed, or dense obeying 2:4) that run dense.
    pub dense: Vec<String>,
}

impl SparseReport {
    /// Lists the `NmMatMul` nodes of `model` (in node order) beside the `dense` names.
    pub fn new(model: &TypedModel, dense: Vec<String>) -> SparseReport {
        let sparse = model
            .nodes()
            .iter()
            .filter_map(|node| {
                let op = node.op_as::<NmMatMul>()?;
                Some(SparseLayer {
                    name: node.name.clone(),
                    pattern: op.matrix().pattern(),
                    k: op.k(),
                    n: op.n(),
                    kernel: op.kernel_name().to_owned(),
                })
            })
            .collect();
        SparseReport { sparse, dense }
    }

    /// One line: `12 layers 2:4 sparse (avx2_spmm24_f32_4x16), 0 dense`; patterns or
    /// kernels that differ get one `N layers P sparse (kernel)` part each.
    pub fn summary(&self) -> String {
        let mut groups: Vec<(NmPattern, &str, usize)> = Vec::new();
        for l in &self.sparse {
            match groups
                .iter_mut()
                .find(|(p, k, _)| *p == l.pattern && *k == l.kernel)
            {
                Some(g) => g.2 += 1,
                None => groups.push((l.pattern, &l.kernel, 1)),
            }
        }
        let mut s = String::new();
        if groups.is_empty() {
            s.push_str("0 layers sparse");
        }
        for (i, (pattern, kernel, count)) in groups.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let layers = if *count == 1 { "layer" } else { "layers" };
            let _ = write!(s, "{sep}{count} {layers} {pattern} sparse ({kernel})");
        }
        let _ = write!(s, ", {} dense", self.dense.len());
        s
    }
}

/// Applies `mode` to `model` (typed; decluttered, so matmuls are `EinSum`s with their
/// weights as constants), then, with `dense`, turns every other f32 matmul with a
/// constant weight into `maskd.DenseMatMul` where a SIMD dense kernel runs (or one is
/// forced with `MASKD_DENSE_KERNEL`), and folds biases, GELUs and residual additions
/// into both ops. Returns the names of the N:M layers left or made dense.
pub fn apply(
    model: &mut TypedModel,
    mode: SparseKernel,
    dense_ops: bool,
) -> TractResult<Vec<String>> {
    // The selected kernel family; a bad MASKD_SPARSE_KERNEL fails here, at load.
    let family = match mode {
        SparseKernel::Dense => KernelKind::Generic,
        _ => maskd_kernels::selected()?,
    };
    if mode != SparseKernel::Dense {
        for e in maskd_kernels::skipped_kernels() {
            log::warn!("{e}; running on a slower kernel");
        }
    }
    let simd = |p: NmPattern| family != KernelKind::Generic && family.supports(p);
    let keep_sparse = |p: NmPattern| match mode {
        SparseKernel::Dense => false,
        SparseKernel::Sparse => true,
        SparseKernel::Auto => simd(p),
    };
    let mut dense = Vec::new();
    for id in model.eval_order()? {
        let name = model.node(id).name.clone();
        if let Some(op) = model.node(id).op_as::<NmMatMul>().cloned() {
            if !keep_sparse(op.matrix().pattern()) {
                densify(model, id, &op).with_context(|| format!("node `{name}`: decompressing"))?;
                dense.push(name);
            }
        } else if let Some(c) = constant_matmul(model, id)?.filter(obeys_24) {
            if keep_sparse(NmPattern::TWO_FOUR) {
                let matrix = NmMatrix::from_dense_checked(&c.w, c.k, c.n, NmPattern::TWO_FOUR)?;
                let op = NmMatMul::new(matrix, None)?;
                replace(model, id, op, &c)
                    .with_context(|| format!("node `{name}`: rewriting to NmMatMul"))?;
            } else {
                dense.push(name);
            }
        }
    }
    if dense_ops && dense_kernel_wanted()? {
        let flattened = flatten_contractions(model)?;
        log::debug!("{flattened} two-axis contractions flattened for DenseMatMul");
        let mut count = 0;
        for id in model.eval_order()? {
            let name = model.node(id).name.clone();
            if let Some(c) = constant_matmul(model, id)? {
                let op = DenseMatMul::new(&c.w, c.k, c.n, None)
                    .with_context(|| format!("node `{name}`: packing its weights"))?;
                replace(model, id, op, &c)
                    .with_context(|| format!("node `{name}`: rewriting to DenseMatMul"))?;
                count += 1;
            }
        }
        log::debug!("{count} dense matmuls run as DenseMatMul");
    }
    epilogues::<SparseWeights>(model, "NmMatMul")?;
    epilogues::<PackedGemm>(model, "DenseMatMul")?;
    Ok(dense)
}

/// Rewrites every f32 `EinSum` that contracts the data's last two axes with the first
/// two of a constant `[B, K, N]` weight, in order, into a reshape of those axes to one
/// and a plain `...k,kn->...n` on the weight reshaped to `[B·K, N]`: the same sums, in
/// the same order. Why: a ViT's attention output projection reads the heads unmerged
/// (`mbk,bkn->mn`, heads `b`), and as such it is no matmul `DenseMatMul` takes; the
/// data axes are adjacent and row-major, so the reshape is free.
fn flatten_contractions(model: &mut TypedModel) -> TractResult<usize> {
    let mut count = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
            continue;
        }
        let facts: Vec<TypedFact> = model.node_input_facts(id)?.into_iter().cloned().collect();
        let (data, weight) = (&facts[0], &facts[1]);
        let Some(w) = weight.konst.clone() else {
            continue;
        };
        let output = node.outputs[0].fact.clone();
        let (dr, orank) = (data.rank(), output.rank());
        if data.konst.is_some() || w.rank() != 3 || w.datum_type() != f32::datum_type() || dr < 3 {
            continue;
        }
        let axes = op.axes.clone();
        let at = |io: InOut, pos: usize| axes.axis((io, pos)).ok();
        let (Some(b), Some(k), Some(n)) = (
            at(InOut::In(0), dr - 2),
            at(InOut::In(0), dr - 1),
            at(InOut::Out(0), orank - 1),
        ) else {
            continue;
        };
        let contracted = |a: &Axis, wpos: usize| {
            a.inputs[0].len() == 1 && a.inputs[1].as_slice() == [wpos] && a.outputs[0].is_empty()
        };
        if !contracted(b, 0)
            || !contracted(k, 1)
            || n.inputs[1].as_slice() != [2]
            || !n.inputs[0].is_empty()
        {
            continue;
        }
        // Every other data axis passes through to the output, in order, and the output
        // has nothing else.
        let mut passed = Vec::new();
        let mut plain = orank == dr - 1;
        for i in 0..dr - 2 {
            match at(InOut::In(0), i) {
                Some(a)
                    if a.inputs[0].len() == 1
                        && a.inputs[1].is_empty()
                        && a.outputs[0].len() == 1 =>
                {
                    passed.push(a.outputs[0][0])
                }
                _ => plain = false,
            }
        }
        if !plain || passed.iter().enumerate().any(|(i, &o)| o != i) {
            continue;
        }
        let (Ok(bd), Ok(kd)) = (data.shape[dr - 2].to_usize(), data.shape[dr - 1].to_usize())
        else {
            continue;
        };
        let (wb, wk, wn) = (w.shape()[0], w.shape()[1], w.shape()[2]);
        if (wb, wk) != (bd, kd) {
            continue;
        }
        let name = node.name.clone();
        let x = node.inputs[0];
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, x)?;
        let merged = patch.wire_node(
            format!("{name}.merge"),
            AxisOp::Reshape(
                dr - 2,
                tvec![bd.to_dim(), kd.to_dim()],
                tvec![(bd * kd).to_dim()],
            ),
            &[tap],
        )?[0];
        let flat = patch.add_const(
            format!("{name}.weight"),
            w.into_tensor().into_shape(&[wb * wk, wn])?,
        )?;
        let lead: String = "abcdefghij".chars().take(dr - 2).collect();
        ensure!(dr - 2 <= 10, "rank {dr}");
        let mapping: AxesMapping = format!("{lead}k,kn->{lead}n").parse()?;
        let y = patch.wire_node(
            &name,
            EinSum::new(mapping, f32::datum_type()),
            &[merged, flat],
        )?[0];
        patch.shunt_outside(model, id.into(), y)?;
        patch
            .apply(model)
            .with_context(|| format!("node `{name}`: flattening its contraction"))?;
        count += 1;
    }
    Ok(count)
}

/// Whether maskd's dense kernel should replace tract's matmuls: where it is SIMD (the
/// scalar one is slower than tract's), or where `MASKD_DENSE_KERNEL` forces one (an
/// A/B run, a test of the fallback). A forced kernel that cannot run is an error here,
/// at load.
fn dense_kernel_wanted() -> TractResult<bool> {
    let kind = maskd_kernels::dense::selected().map_err(|e| format_err!("{e}"))?;
    for e in maskd_kernels::dense::skipped() {
        log::warn!("{e}; running on a slower kernel");
    }
    let forced =
        std::env::var_os(maskd_kernels::dense::DENSE_KERNEL_ENV).is_some_and(|v| !v.is_empty());
    Ok(forced || kind != DenseKind::Generic)
}

/// Folds biases, GELUs and residual additions into the `W` ops.
fn epilogues<W: Weights>(model: &mut TypedModel, op: &str) -> TractResult<()> {
    let folded = super::bias::fold::<W>(model)?;
    log::debug!("{folded} bias additions folded into {op}");
    let fused = super::act::fold::<W>(model)?;
    log::debug!("{fused} GELUs fused into {op}");
    let fused = super::residual::fold::<W>(model)?;
    log::debug!("{fused} residual additions fused into {op}");
    Ok(())
}

fn obeys_24(c: &Candidate) -> bool {
    c.k >= MIN_REWRITE_K && NmPattern::TWO_FOUR.check(&c.w, c.k, c.n).is_ok()
}

/// A dense matmul the rewrite can replace.
struct Candidate {
    /// The data input.
    x: OutletId,
    /// The weight, row-major `W[K, N]`.
    w: Vec<f32>,
    k: usize,
    n: usize,
    layout: Layout,
}

/// Unit axes that decluttering moved into or out of the matmul: `NmMatMul` keeps the
/// leading dims of its input, so these are removed before it and added after it.
#[derive(Default)]
struct Layout {
    /// Unit axes only the data input has, positions in the data input, descending.
    drop: Vec<usize>,
    /// Unit axes only the output has, positions in the output, ascending.
    add: Vec<usize>,
}

/// If node `id` is an f32 `EinSum` `...k,kn->...n` (or `...k,nk->...n`) whose weight is a
/// constant: what replacing it needs.
fn constant_matmul(model: &TypedModel, id: usize) -> TractResult<Option<Candidate>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let facts = model.node_input_facts(id)?;
    let w_slot = match (facts[0].konst.is_some(), facts[1].konst.is_some()) {
        (false, true) => 1,
        (true, false) => 0,
        _ => return Ok(None),
    };
    let d_slot = 1 - w_slot;
    let (Some(weight), data) = (facts[w_slot].konst.clone(), facts[d_slot]) else {
        return Ok(None);
    };
    if weight.datum_type() != f32::datum_type()
        || weight.rank() != 2
        || data.datum_type != f32::datum_type()
        || data.rank() == 0
    {
        return Ok(None);
    }
    let output = &node.outputs[0].fact;
    let Some((k_pos, n_pos, layout)) = matmul_axes(&op.axes, d_slot, w_slot, data, output)? else {
        return Ok(None);
    };
    let (k, n) = (weight.shape()[k_pos], weight.shape()[n_pos]);
    if k == 0 || n == 0 {
        return Ok(None);
    }
    let raw = weight.try_as_plain_ram()?.as_slice::<f32>()?;
    let w: Vec<f32> = if k_pos == 0 {
        raw.to_vec()
    } else {
        (0..k * n).map(|i| raw[(i % n) * k + i / n]).collect()
    };
    Ok(Some(Candidate {
        x: node.inputs[d_slot],
        w,
        k,
        n,
        layout,
    }))
}

/// For a two-input mapping: `Some((k position, n position) in the weight, layout)` when
/// the data input's last axis is contracted with one weight axis, the other weight axis
/// is the output's last, and every other axis is in neither the weight nor the
/// contraction: either in both data and output (same relative order) or a unit axis in
/// only one of them.
fn matmul_axes(
    axes: &AxesMapping,
    d: usize,
    w: usize,
    data: &TypedFact,
    output: &TypedFact,
) -> TractResult<Option<(usize, usize, Layout)>> {
    let (d_rank, o_rank) = (data.rank(), output.rank());
    if axes.input_count() != 2 || axes.output_count() != 1 || o_rank == 0 {
        return Ok(None);
    }
    let k_axis = axes.axis((InOut::In(d), d_rank - 1))?;
    let n_axis = axes.axis((InOut::Out(0), o_rank - 1))?;
    let once = |v: &[usize]| (v.len() == 1).then(|| v[0]);
    let (Some(k_pos), Some(n_pos)) = (once(&k_axis.inputs[w]), once(&n_axis.inputs[w])) else {
        return Ok(None);
    };
    if k_axis.inputs[d].len() != 1
        || !k_axis.outputs[0].is_empty()
        || !n_axis.inputs[d].is_empty()
        || k_pos == n_pos
    {
        return Ok(None);
    }
    let unit = |f: &TypedFact, i: usize| f.shape[i].is_one();
    let mut layout = Layout::default();
    let mut passed = Vec::new(); // output positions of the pass-through axes, data order
    for i in 0..d_rank - 1 {
        let a = axes.axis((InOut::In(d), i))?;
        if a.inputs[d].len() != 1 || !a.inputs[w].is_empty() || a.outputs[0].len() > 1 {
            return Ok(None);
        }
        match a.outputs[0].first() {
            Some(&o) => passed.push(o),
            None if unit(data, i) => layout.drop.push(i),
            None => return Ok(None),
        }
    }
    if passed.windows(2).any(|p| p[0] >= p[1]) {
        return Ok(None);
    }
    for o in 0..o_rank - 1 {
        if passed.contains(&o) {
            continue;
        }
        let a = axes.axis((InOut::Out(0), o))?;
        if !(a.inputs[d].is_empty() && a.inputs[w].is_empty() && unit(output, o)) {
            return Ok(None);
        }
        layout.add.push(o);
    }
    layout.drop.reverse();
    Ok(Some((k_pos, n_pos, layout)))
}

/// Replaces node `id` by `op` running `c`, keeping the node's name.
fn replace<W: Weights>(
    model: &mut TypedModel,
    id: usize,
    op: MatMul<W>,
    c: &Candidate,
) -> TractResult<()> {
    let name = model.node(id).name.clone();
    let mut patch = TypedModelPatch::default();
    let mut wire = patch.tap_model(model, c.x)?;
    for &axis in &c.layout.drop {
        wire = patch.wire_node(format!("{name}.rm{axis}"), AxisOp::Rm(axis), &[wire])?[0];
    }
    wire = patch.wire_node(&name, op, &[wire])?[0];
    for &axis in &c.layout.add {
        wire = patch.wire_node(format!("{name}.add{axis}"), AxisOp::Add(axis), &[wire])?[0];
    }
    patch.shunt_outside(model, id.into(), wire)?;
    patch.apply(model)
}

/// Replaces the `NmMatMul` node `id` by the dense equivalent an ONNX `MatMul` (+ `Add`)
/// would have given: `EinSum` with the decompressed weight as a constant.
fn densify(model: &mut TypedModel, id: usize, op: &NmMatMul) -> TractResult<()> {
    let name = model.node(id).name.clone();
    let x = model.node(id).inputs[0];
    let rank = model.outlet_fact(x)?.rank();
    ensure!(
        (1..=11).contains(&rank),
        "input of rank {rank}, expected 1 to 11"
    );
    let (k, n) = (op.k(), op.n());
    let lead: String = "abcdefghij".chars().take(rank - 1).collect();
    let axes: AxesMapping = format!("{lead}k,kn->{lead}n").parse()?;
    let mut patch = TypedModelPatch::default();
    let tap = patch.tap_model(model, x)?;
    let w = patch.add_const(
        format!("{name}.weight"),
        Tensor::from_shape(&[k, n], &op.matrix().to_dense())?,
    )?;
    let mut y = patch.wire_node(
        format!("{name}.matmul"),
        EinSum::new(axes, f32::datum_type()),
        &[tap, w],
    )?[0];
    if let Some(bias) = op.bias() {
        let mut shape = vec![1; rank];
        shape[rank - 1] = n;
        let b = patch.add_const(format!("{name}.bias"), Tensor::from_shape(&shape, bias)?)?;
        y = patch.wire_node(format!("{name}.add"), tract_core::ops::math::add(), &[y, b])?[0];
    }
    patch.shunt_outside(model, id.into(), y)?;
    patch.apply(model)
}
