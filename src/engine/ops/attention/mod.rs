//! Fused self-attention, replacing tract's split-heads / QKᵀ / softmax / PV subgraph.
//!
//! After decluttering, each attention of a ViT exported from PyTorch is eight tract
//! nodes: reshape and two axis moves of the packed `qkv` projection, three gathers,
//! the query scaling, two batched matmuls (each packing both operands per call) and a
//! softmax. On the default model they took ~40 ms of a ~116 ms frame
//! (`maskd bench --profile`): more than the MLPs once those run 2:4-sparse. The
//! [`Attention`] op reads `qkv` in place and writes the heads already interleaved for
//! the output projection; the per-head work is in [`kernel`].
//!
//! [`apply`] rewrites only what it proves equivalent, by following each axis from
//! the `qkv` tensor through the reshape, the moves and the gathers into both
//! einsums' axis strings. The stage graphs also read what each token received (the
//! probabilities summed over heads and queries: token pruning's score); the op gives
//! that as a second output, accumulated from the score tiles it already holds. Any
//! other reader of the probabilities keeps tract's nodes, as do CPUs without a SIMD
//! kernel ([`kernel::Kind::best`]: AVX-512F, else AVX2+FMA on x86-64, NEON on
//! aarch64, each only after it passed its start-up self-test).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(test)]
mod bench;
mod geometry;
pub mod kernel;
mod reference;
mod selftest;
#[cfg(test)]
mod test_graph;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_512;

use std::cell::RefCell;
use std::sync::Mutex;

use tract_core::internal::*;
use tract_core::ops::array::Gather;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};

use super::graph::substitute;
use super::parallel::par_rows;
pub use geometry::Geometry;
use kernel::Kind;

/// `[B, T, 3·H·D]` (or `[T, 3·H·D]`) packed q, k, v → `[B, T, H, D]` (or `[T, H, D]`).
#[derive(Clone, Debug)]
pub struct Attention {
    heads: usize,
    dim: usize,
    scale: f32,
    /// Whether the output keeps the batch axis of a rank-3 input (tract drops it from
    /// the einsum when it is 1).
    keep_batch: bool,
    kind: Kind,
    /// A second output: what each key received, summed over queries, over heads times
    /// a factor (the graph's `1/H`), `[B, 1, T]` or, without a batch axis, `[1, T]`.
    received: Option<Received>,
}

impl Attention {
    pub fn new(heads: usize, dim: usize, scale: f32, keep_batch: bool, kind: Kind) -> Attention {
        Attention {
            heads,
            dim,
            scale,
            keep_batch,
            kind,
            received: None,
        }
    }

    /// With the second output (see the field).
    pub fn with_received(self, factor: f32, batch_axis: bool) -> Attention {
        Attention {
            received: Some(Received { factor, batch_axis }),
            ..self
        }
    }

    fn packed(&self) -> usize {
        3 * self.heads * self.dim
    }
}

/// The second output's factor and whether it has a batch axis (the scores' layout,
/// which can differ from the main output's).
#[derive(Clone, Copy, Debug)]
struct Received {
    factor: f32,
    batch_axis: bool,
}

impl PartialEq for Attention {
    fn eq(&self, other: &Self) -> bool {
        (self.heads, self.dim, self.keep_batch, self.kind)
            == (other.heads, other.dim, other.keep_batch, other.kind)
            && self.scale.to_bits() == other.scale.to_bits()
            && self.received.map(|r| (r.factor.to_bits(), r.batch_axis))
                == other.received.map(|r| (r.factor.to_bits(), r.batch_axis))
    }
}

impl Eq for Attention {}

impl Op for Attention {
    fn name(&self) -> StaticName {
        "Attention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} heads x {}, scale {}, {:?}",
            self.heads, self.dim, self.scale, self.kind
        )])
    }

    op_as_typed_op!();
}

thread_local! {
    /// Per-thread scratch (keys transposed, score rows, received sums), grown once and
    /// reused: the frame loop and tract's pool threads run every frame.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(
            x.datum_type() == f32::datum_type()
                && (shape.len() == 2 || shape.len() == 3)
                && shape.last() == Some(&self.packed()),
            "Attention: input is {:?} {:?}, expected f32 [B, T, {}]",
            x.datum_type(),
            shape,
            self.packed()
        );
        let (batch, tokens) = match shape {
            [t, _] => (1, *t),
            [b, t, _] => (*b, *t),
            _ => bail!("Attention: rank checked above"),
        };
        ensure!(
            self.keep_batch || batch == 1,
            "Attention: batch {batch} where the graph drops the batch axis"
        );
        let g = Geometry {
            batch,
            tokens,
            heads: self.heads,
            dim: self.dim,
        };
        let out_shape: TVec<usize> = if self.keep_batch {
            tvec![batch, tokens, self.heads, self.dim]
        } else {
            tvec![tokens, self.heads, self.dim]
        };
        // SAFETY: f32 has no invalid bit patterns and every output row is written by
        // `attend_rows` (the kernel tests poison outputs with NaN to check it).
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut received = match self.received {
            Some(spec) => {
                ensure!(
                    spec.batch_axis || batch == 1,
                    "Attention: batch {batch} where the graph drops the batch axis"
                );
                let shape: TVec<usize> = if spec.batch_axis {
                    tvec![batch, 1, tokens]
                } else {
                    tvec![1, tokens]
                };
                Some((spec.factor, Tensor::zero::<f32>(&shape)?))
            }
            None => None,
        };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let mut received_view = match &mut received {
                Some((_, t)) => Some(t.try_as_plain_ram_mut()?),
                None => None,
            };
            // Each thread sums what keys received from its rows in its scratch, then
            // adds that into the output.
            let total = match &mut received_view {
                Some(v) => Some(Mutex::new(v.as_slice_mut::<f32>()?)),
                None => None,
            };
            let rows = g.rows();
            let need = self.kind.scratch_len(tokens, self.dim);
            let extra = if total.is_some() { rows } else { 0 };
            // Whole query tiles per thread.
            let align = self.kind.tile_rows();
            par_rows(ys, g.out_row().max(1), align, g.work(), |first, chunk| {
                SCRATCH.with_borrow_mut(|s| {
                    if s.len() < need + extra {
                        s.resize(need + extra, 0.0);
                    }
                    let (scratch, local) = s.split_at_mut(need);
                    let mut local = total.as_ref().map(|_| {
                        let l = &mut local[..rows];
                        l.fill(0.0);
                        l
                    });
                    kernel::attend_rows_in(
                        self.kind,
                        &g,
                        self.scale,
                        xs,
                        first,
                        chunk,
                        scratch,
                        local.as_deref_mut(),
                    );
                    if let (Some(total), Some(local)) = (&total, local) {
                        let mut total = total
                            .lock()
                            .map_err(|_| format_err!("Attention: a thread panicked"))?;
                        total
                            .iter_mut()
                            .zip(local.iter())
                            .for_each(|(t, l)| *t += l);
                    }
                    Ok(())
                })
            })?;
        }
        let Some((factor, mut r)) = received else {
            return Ok(tvec!(y.into_tvalue()));
        };
        r.try_as_plain_ram_mut()?
            .as_slice_mut::<f32>()?
            .iter_mut()
            .for_each(|v| *v *= factor);
        Ok(tvec!(y.into_tvalue(), r.into_tvalue()))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type()
                && (x.rank() == 2 || x.rank() == 3)
                && x.shape[x.rank() - 1] == self.packed().to_dim(),
            "Attention: input is {:?}, expected f32 [B, T, {}]",
            x,
            self.packed()
        );
        let (h, d) = (self.heads.to_dim(), self.dim.to_dim());
        let t = x.shape[x.rank() - 2].clone();
        let batch = if x.rank() == 3 {
            x.shape[0].clone()
        } else {
            1.to_dim()
        };
        let received: Option<TVec<TDim>> = self.received.map(|r| {
            if r.batch_axis {
                tvec![batch.clone(), 1.to_dim(), t.clone()]
            } else {
                tvec![1.to_dim(), t.clone()]
            }
        });
        let shape: TVec<TDim> = if self.keep_batch && x.rank() == 3 {
            tvec![x.shape[0].clone(), t, h, d]
        } else {
            tvec![t, h, d]
        };
        let mut facts = tvec!(f32::fact(shape));
        if let Some(r) = received {
            facts.push(f32::fact(r));
        }
        Ok(facts)
    }

    as_op!();
}

/// Replaces every attention subgraph [`Attention`] reproduces; returns how many.
/// Does nothing where no SIMD kernel exists (or passed its self-test); fails if
/// `MASKD_ATTENTION_KERNEL` names a kernel that cannot run.
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    let Some(kind) = Kind::selected()? else {
        return Ok(0);
    };
    apply_with(model, kind)
}

/// [`apply`] with the kernel given (the tests and the benchmark pick each one).
pub fn apply_with(model: &mut TypedModel, kind: Kind) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(found) = find(model, id, kind)? else {
            continue;
        };
        let name = format!("{}.attention", model.node(found.softmax).name);
        let mut outputs: TVec<OutletId> = tvec![found.output.into()];
        outputs.extend(found.received.map(OutletId::from));
        substitute(model, &name, found.op, &[found.qkv], &outputs)
            .with_context(|| format!("node `{name}`: fusing attention"))?;
        replaced += 1;
    }
    Ok(replaced)
}

/// An attention subgraph, found from its softmax.
struct Found {
    softmax: usize,
    /// The packed projection the fused op reads.
    qkv: OutletId,
    /// The `P · V` einsum whose output the fused op replaces.
    output: usize,
    /// The sum over queries whose output the op's second output replaces.
    received: Option<usize>,
    op: Attention,
}

/// What an axis of a tensor in the subgraph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Batch,
    /// Token axis of `qkv` (and of q, k and v before the einsums tell them apart).
    Tok,
    /// The packed `3·H·D` axis before the reshape.
    Packed,
    /// Which of q, k, v (the gathered axis).
    Part,
    Head,
    Dim,
    Query,
    Key,
}

/// q, k or v as gathered out of the packed tensor.
struct Operand {
    scale: f32,
    part: i64,
    gather_axis: usize,
    packed: OutletId,
}

fn find(model: &TypedModel, softmax: usize, kind: Kind) -> TractResult<Option<Found>> {
    let node = model.node(softmax);
    let Some(sm) = node.op_as::<Softmax>() else {
        return Ok(None);
    };
    let rank = node.outputs[0].fact.rank();
    if sm.kind != SoftmaxKind::Softmax
        || sm.quant_output_dt.is_some()
        || sm.axes.as_slice() != [rank - 1]
        || node.outputs[0].fact.datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    let Some(qk) = single_einsum_input(model, node.inputs[0]) else {
        return Ok(None);
    };
    // The probabilities go to `P · V`, and in the stage graphs also to the sums that
    // score tokens for pruning; any other reader keeps tract's nodes.
    let succs = node.outputs[0].successors.as_slice();
    let pv_at = succs
        .iter()
        .position(|s| model.node(s.node).op_is::<EinSum>());
    let (Some(pv_at), 1..=2) = (pv_at, succs.len()) else {
        return Ok(None);
    };
    let succ = &succs[pv_at];
    let other = succs
        .iter()
        .enumerate()
        .find(|(i, _)| *i != pv_at)
        .map(|(_, s)| s.node);
    let pv_node = model.node(succ.node);
    let Some(pv) = pv_node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if succ.slot != 0 || pv_node.inputs.len() != 2 || !plain_f32(pv) {
        return Ok(None);
    }
    let qk_node = model.node(qk);
    let Some(qk_op) = qk_node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let (Some(q), Some(k), Some(v)) = (
        operand(model, qk_node.inputs[0])?,
        operand(model, qk_node.inputs[1])?,
        operand(model, pv_node.inputs[1])?,
    ) else {
        return Ok(None);
    };
    if (q.part, k.part, v.part) != (0, 1, 2)
        || q.packed != k.packed
        || k.packed != v.packed
        || q.gather_axis != k.gather_axis
        || k.gather_axis != v.gather_axis
        || v.scale != 1.0
    {
        return Ok(None);
    }
    let Some((qkv, labels, heads, dim)) = unpack(model, q.packed)? else {
        return Ok(None);
    };
    if labels.get(q.gather_axis) != Some(&Role::Part) || !kind.supports(dim) {
        return Ok(None);
    }
    let mut each: Vec<Role> = labels.clone();
    each.remove(q.gather_axis);
    let as_role = |of: Role| -> Vec<Role> {
        each.iter()
            .map(|&r| if r == Role::Tok { of } else { r })
            .collect()
    };
    let qkv_fact = model.outlet_fact(qkv)?;
    let batch_is_one = qkv_fact.rank() == 2 || qkv_fact.shape[0] == 1.to_dim();
    let Some(scores) = einsum_roles(qk_op, &[as_role(Role::Query), as_role(Role::Key)]) else {
        return Ok(None);
    };
    if !matches_order(
        &scores,
        &[Role::Batch, Role::Head, Role::Query, Role::Key],
        batch_is_one,
    ) {
        return Ok(None);
    }
    let Some(out) = einsum_roles(pv, &[scores.clone(), as_role(Role::Key)]) else {
        return Ok(None);
    };
    let want = [Role::Batch, Role::Query, Role::Head, Role::Dim];
    if !matches_order(&out, &want, batch_is_one) {
        return Ok(None);
    }
    let keep_batch = out.first() == Some(&Role::Batch);
    let mut op = Attention::new(heads, dim, q.scale * k.scale, keep_batch, kind);
    let mut received = None;
    if let Some(first) = other {
        let Some((node, factor)) = received_sums(model, first, &scores)? else {
            return Ok(None);
        };
        let batch_axis = scores.first() == Some(&Role::Batch);
        op = op.with_received(factor, batch_axis);
        // The op's second output must have exactly the shape the graph had there.
        let facts = op.output_facts(&[model.outlet_fact(qkv)?])?;
        if facts.get(1).map(|f| &f.shape) != Some(&model.node(node).outputs[0].fact.shape) {
            return Ok(None);
        }
        received = Some(node);
    }
    Ok(Some(Found {
        softmax,
        qkv,
        output: succ.node,
        received,
        op,
    }))
}

/// The chain an exported `probs.mean(heads).mean(queries)` starts with: a sum over
/// the heads, a constant factor, the emptied axis removed, a sum over the queries.
/// Returns that last sum's node and the factor; the division by the token count after
/// it stays tract's (its factor is symbolic).
fn received_sums(
    model: &TypedModel,
    first: usize,
    scores: &[Role],
) -> TractResult<Option<(usize, f32)>> {
    let sole_successor = |id: usize| -> Option<usize> {
        let [s] = model.node(id).outputs[0].successors.as_slice() else {
            return None;
        };
        Some(s.node)
    };
    let sums_over = |id: usize, axis: Option<usize>| -> bool {
        model.node(id).op_as::<Reduce>().is_some_and(|r| {
            r.reducer == Reducer::Sum && axis.is_some_and(|a| r.axes.as_slice() == [a])
        })
    };
    let head = scores.iter().position(|&r| r == Role::Head);
    if !sums_over(first, head) {
        return Ok(None);
    }
    let Some(mul) = sole_successor(first) else {
        return Ok(None);
    };
    let mul_node = model.node(mul);
    let is_mul = mul_node
        .op_as::<TypedBinOp>()
        .is_some_and(|b| b.0.name() == "Mul");
    if !is_mul || mul_node.inputs.len() != 2 {
        return Ok(None);
    }
    let mut factor = None;
    for &i in &mul_node.inputs {
        let fact = model.outlet_fact(i)?;
        if let Some(k) = fact.konst.as_ref().filter(|k| k.len() == 1) {
            factor = k.cast_to_scalar::<f32>().ok();
        } else if i.node != first {
            return Ok(None);
        }
    }
    let (Some(factor), Some(rm)) = (factor, sole_successor(mul)) else {
        return Ok(None);
    };
    let removes_head = matches!(
        model.node(rm).op_as::<AxisOp>(),
        Some(AxisOp::Rm(a)) if Some(*a) == head
    );
    let mut rest: Vec<Role> = scores.to_vec();
    if let Some(h) = head {
        rest.remove(h);
    }
    let Some(last) = sole_successor(rm) else {
        return Ok(None);
    };
    let query = rest.iter().position(|&r| r == Role::Query);
    if !removes_head || !sums_over(last, query) {
        return Ok(None);
    }
    Ok(Some((last, factor)))
}

fn plain_f32(op: &EinSum) -> bool {
    op.operating_dt == f32::datum_type() && op.q_params.is_none()
}

/// The two-input f32 einsum producing `outlet`, read by nothing else.
fn single_einsum_input(model: &TypedModel, outlet: OutletId) -> Option<usize> {
    let node = model.node(outlet.node);
    let op = node.op_as::<EinSum>()?;
    (node.inputs.len() == 2 && plain_f32(op) && node.outputs[0].successors.len() == 1)
        .then_some(node.id)
}

/// Follows an einsum operand back through an optional scalar `Mul` to its `Gather`.
fn operand(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Operand>> {
    let mut node = model.node(outlet.node);
    let mut scale = 1f32;
    if let Some(bin) = node.op_as::<TypedBinOp>() {
        if bin.0.name() != "Mul" || node.inputs.len() != 2 {
            return Ok(None);
        }
        let facts = [
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        ];
        let scalar = |f: &TypedFact| {
            f.konst
                .as_ref()
                .filter(|t| t.len() == 1 && t.datum_type() == f32::datum_type())
                .and_then(|t| t.cast_to_scalar::<f32>().ok())
        };
        let (ci, c) = match (scalar(facts[0]), scalar(facts[1])) {
            (None, Some(c)) => (1, c),
            (Some(c), None) => (0, c),
            _ => return Ok(None),
        };
        // The factor must only broadcast: a higher rank would add axes to the operand.
        if facts[ci].rank() > facts[1 - ci].rank() {
            return Ok(None);
        }
        let other = node.inputs[1 - ci];
        scale = c;
        node = model.node(other.node);
    }
    let Some(gather) = node.op_as::<Gather>() else {
        return Ok(None);
    };
    if node.inputs.len() != 2 || gather.output_type.is_some() {
        return Ok(None);
    }
    let idx = model.outlet_fact(node.inputs[1])?;
    let Some(part) = idx
        .konst
        .as_ref()
        .filter(|t| t.rank() == 0)
        .and_then(|t| t.cast_to_scalar::<i64>().ok())
    else {
        return Ok(None);
    };
    Ok(Some(Operand {
        scale,
        part,
        gather_axis: gather.axis,
        packed: node.inputs[0],
    }))
}

/// Follows the split-heads tensor back through axis moves to the reshape of the
/// packed projection; returns the projection, the roles of the split tensor's axes,
/// heads and head width.
#[allow(clippy::type_complexity)]
fn unpack(
    model: &TypedModel,
    split: OutletId,
) -> TractResult<Option<(OutletId, Vec<Role>, usize, usize)>> {
    let mut moves = vec![];
    let mut at = split;
    loop {
        let node = model.node(at.node);
        match node.op_as::<AxisOp>() {
            Some(AxisOp::Move(from, to)) if node.inputs.len() == 1 => {
                moves.push((*from, *to));
                at = node.inputs[0];
            }
            Some(AxisOp::Reshape(axis, from, to)) if node.inputs.len() == 1 => {
                let src = node.inputs[0];
                let fact = model.outlet_fact(src)?;
                if fact.datum_type != f32::datum_type() || !(2..=3).contains(&fact.rank()) {
                    return Ok(None);
                }
                let mut roles = if fact.rank() == 3 {
                    vec![Role::Batch, Role::Tok, Role::Packed]
                } else {
                    vec![Role::Tok, Role::Packed]
                };
                let dims: Option<Vec<usize>> = to.iter().map(|d| d.to_usize().ok()).collect();
                let Some([3, heads, dim]) = dims.and_then(|d| <[usize; 3]>::try_from(d).ok())
                else {
                    return Ok(None);
                };
                if *axis != fact.rank() - 1
                    || from.as_slice() != [fact.shape[*axis].clone()]
                    || fact.shape[*axis] != (3 * heads * dim).to_dim()
                {
                    return Ok(None);
                }
                roles.splice(*axis..*axis + 1, [Role::Part, Role::Head, Role::Dim]);
                for &(from, to) in moves.iter().rev() {
                    if from >= roles.len() || to >= roles.len() {
                        return Ok(None);
                    }
                    let r = roles.remove(from);
                    roles.insert(to, r);
                }
                return Ok(Some((src, roles, heads, dim)));
            }
            _ => return Ok(None),
        }
    }
}

/// Roles of an einsum's output axes given its inputs' roles, if its axis letters
/// agree with them one to one.
fn einsum_roles(op: &EinSum, inputs: &[Vec<Role>]) -> Option<Vec<Role>> {
    let (ins, outs) = op.axes.to_strs();
    if ins.len() != inputs.len() || outs.len() != 1 {
        return None;
    }
    let mut map: Vec<(char, Role)> = vec![];
    for (letters, roles) in ins.iter().zip(inputs) {
        if letters.chars().count() != roles.len() {
            return None;
        }
        for (c, &r) in letters.chars().zip(roles) {
            match map.iter().find(|(mc, mr)| *mc == c || *mr == r) {
                Some(&(mc, mr)) if mc == c && mr == r => {}
                Some(_) => return None,
                None => map.push((c, r)),
            }
        }
    }
    outs[0]
        .chars()
        .map(|c| map.iter().find(|(mc, _)| *mc == c).map(|&(_, r)| r))
        .collect()
}

/// `roles == want`, or `want` without its leading batch axis when the batch is 1.
fn matches_order(roles: &[Role], want: &[Role], batch_is_one: bool) -> bool {
    roles == want || (batch_is_one && roles == &want[1..])
}
