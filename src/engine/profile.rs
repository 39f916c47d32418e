//! Where a frame's time goes inside the segmenter plan, by operator kind.
//!
//! Only `maskd bench --profile` turns this on: it replaces tract's evaluation loop with one
//! that times every node, which costs a clock read and a map lookup per node, so the
//! daemon's hot path never pays for it. Nodes are grouped by operator name (`OptMatMul`,
//! `NmMatMul`, `Softmax`, ...) because a 2:4 model only changes some of them: the share of
//! the frame the matmuls take bounds what a sparse kernel can gain end to end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

/// Accumulated time and evaluations per operator name.
#[derive(Debug, Default, Clone)]
pub struct OpProfile {
    by_op: BTreeMap<String, (Duration, u64)>,
    runs: u64,
    /// One row per node (`op node-name`) instead of per operator kind.
    per_node: bool,
}

/// One row of [`OpProfile::rows`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpRow {
    pub op: String,
    /// Milliseconds per run of the plan.
    pub ms_per_run: f64,
    /// Share of the plan's timed total, 0..1.
    pub share: f64,
    /// Evaluations of nodes of this kind per run.
    pub nodes_per_run: f64,
}

impl OpProfile {
    /// `per_node`: a row per graph node (named `op node-name`) rather than per op kind.
    pub fn new(per_node: bool) -> OpProfile {
        OpProfile {
            per_node,
            ..OpProfile::default()
        }
    }

    /// Runs `state` once on `inputs`, timing each node into this profile.
    pub fn run(
        &mut self,
        state: &mut TypedSimpleState,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let by_op = &mut self.by_op;
        let per_node = self.per_node;
        let out = state.run_plan_with_eval(inputs, |ctx, op_state, node, input| {
            let start = Instant::now();
            let r = tract_core::plan::eval(ctx, op_state, node, input);
            let key = if per_node {
                format!("{} {}", node.op().name(), node.name)
            } else {
                node.op().name().to_string()
            };
            let slot = by_op.entry(key).or_default();
            slot.0 += start.elapsed();
            slot.1 += 1;
            r
        })?;
        self.runs += 1;
        Ok(out)
    }

    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Operator kinds, most time first.
    pub fn rows(&self) -> Vec<OpRow> {
        let runs = self.runs.max(1) as f64;
        let total: f64 = self.by_op.values().map(|(d, _)| d.as_secs_f64()).sum();
        let mut rows: Vec<OpRow> = self
            .by_op
            .iter()
            .map(|(op, (d, n))| OpRow {
                op: op.clone(),
                ms_per_run: d.as_secs_f64() * 1e3 / runs,
                share: d.as_secs_f64() / total.max(1e-12),
                nodes_per_run: *n as f64 / runs,
            })
            .collect();
        rows.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_counts_every_node_and_shares_sum_to_one() {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([2, 3])).expect("source");
        let w = model
            .add_const("w", tensor2(&[[1f32, 2.], [3., 4.], [5., 6.]]))
            .expect("const");
        let mm = model
            .wire_node(
                "mm",
                tract_core::ops::einsum::EinSum::new(
                    "mk,kn->mn".parse().expect("axes"),
                    f32::datum_type(),
                ),
                &[a, w],
            )
            .expect("einsum");
        let b = model
            .add_const("b", tensor2(&[[1f32, 1.], [1., 1.]]))
            .expect("const");
        let out = model
            .wire_node("bias", tract_core::ops::math::add(), &[mm[0], b])
            .expect("add")[0];
        model.select_output_outlets(&[out]).expect("outputs");
        let plan = model.into_runnable().expect("plan");
        let mut state = plan.spawn().expect("state");
        let mut prof = OpProfile::default();
        for _ in 0..3 {
            let x = tensor2(&[[1f32, 0., 0.], [0., 1., 0.]]);
            let r = prof.run(&mut state, tvec!(x.into())).expect("run");
            assert_eq!(r[0].shape(), &[2, 2]);
        }
        assert_eq!(prof.runs(), 3);
        let rows = prof.rows();
        assert!(rows.iter().any(|r| r.op == "EinSum"), "{rows:?}");
        let share: f64 = rows.iter().map(|r| r.share).sum();
        assert!((share - 1.0).abs() < 1e-9, "{share}");
        assert!(rows.windows(2).all(|w| w[0].ms_per_run >= w[1].ms_per_run));
    }
}
