//! The one graph edit every maskd rewrite makes: put an op in place of a subgraph.

use tract_core::internal::*;

/// Wires `op` (named `name`) on `inputs` and makes every reader of `replaced[i]` read
/// the op's output `i` instead. The subgraph left without readers is pruned when the
/// model is optimised.
pub fn substitute(
    model: &mut TypedModel,
    name: &str,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    replaced: &[OutletId],
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let taps = inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let wires = patch.wire_node(name, op, &taps)?;
    ensure!(
        wires.len() >= replaced.len(),
        "`{name}` has {} outputs, {} to replace",
        wires.len(),
        replaced.len()
    );
    for (&old, &new) in replaced.iter().zip(&wires) {
        patch.shunt_outside(model, old, new)?;
    }
    patch.apply(model)
}
