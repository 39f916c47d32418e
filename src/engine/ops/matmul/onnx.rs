//! Reading `maskd.NmMatMul` nodes from ONNX (format: `docs/SPARSE.md` section 2).
//!
//! tract-onnx looks ops up by `op_type` alone, so [`register`] adds `NmMatMul` to a
//! loader's register and the builder checks the domain itself. The node becomes an
//! expansion that, when the graph is typed, reads `values`, `indices` and `bias` from
//! their initialisers, validates them with `NmMatrix::from_parts`, packs them once and
//! wires an [`NmMatMul`] whose only input is `X`. Every error names the node.
//!
//! Leaves out: where the op runs (`rewrite.rs` applies `engine.sparse_kernel`).

use maskd_kernels::{NmMatrix, NmPattern};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::op::NmMatMul;

/// The ONNX domain of maskd's custom ops.
pub const DOMAIN: &str = "maskd";

/// Teaches `onnx` the op type `NmMatMul` (domain `maskd`).
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("NmMatMul", matmul);
}

fn matmul(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let what = || format!("node `{}` (maskd.NmMatMul)", node.name);
    ensure!(
        node.domain == DOMAIN,
        "{}: domain is `{}`, expected `{DOMAIN}`",
        what(),
        node.domain
    );
    let attr = |name: &str| -> TractResult<usize> {
        let v: i64 = node.get_attr(name).with_context(what)?;
        usize::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .with_context(|| format!("{}: attribute {name} = {v}, expected > 0", what()))
    };
    let (n, m, k) = (attr("n")?, attr("m")?, attr("k")?);
    let pattern = NmPattern::new(n, m).with_context(what)?;
    let has_bias = match node.input.len() {
        3 => false,
        4 if !node.input[3].is_empty() => true,
        4 => false,
        len => bail!(
            "{}: {len} inputs, expected X, values, indices and an optional bias",
            what()
        ),
    };
    Ok((
        expand(NmMatMulOnnx {
            pattern,
            k,
            has_bias,
        }),
        vec![],
    ))
}

/// The node as parsed: attributes only; the weights are read when it is typed.
#[derive(Debug, Clone)]
struct NmMatMulOnnx {
    pattern: NmPattern,
    k: usize,
    has_bias: bool,
}

impl Expansion for NmMatMulOnnx {
    fn name(&self) -> StaticName {
        "NmMatMul".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3 + self.has_bias as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.equals(&inputs[1].rank, 2)?;
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = usize::try_from(rank).ok().filter(|r| *r > 0);
            let Some(rank) = rank else {
                bail!("NmMatMul: X must have at least one dim");
            };
            for i in 0..rank - 1 {
                s.equals(&inputs[0].shape[i], &outputs[0].shape[i])?;
            }
            s.equals(&outputs[0].shape[rank - 1], &inputs[1].shape[1])
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let op = self
            .build(model, inputs)
            .with_context(|| format!("node `{prefix}` (maskd.NmMatMul)"))?;
        model.wire_node(prefix, op, &inputs[..1])
    }
}

impl NmMatMulOnnx {
    fn build(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<NmMatMul> {
        let konst = |ix: usize, what: &str| -> TractResult<Arc<Tensor>> {
            model
                .outlet_fact(inputs[ix])?
                .konst
                .clone()
                .with_context(|| format!("{what} is not a constant initialiser"))
        };
        let values = konst(1, "values")?;
        ensure!(
            values.datum_type() == f32::datum_type() && values.rank() == 2,
            "values is {:?} {:?}, expected f32 [G*N, N_out]",
            values.datum_type(),
            values.shape()
        );
        let n_out = values.shape()[1];
        let indices = konst(2, "indices")?;
        ensure!(
            indices.datum_type() == u8::datum_type(),
            "indices is {:?}, expected uint8",
            indices.datum_type()
        );
        let x = model.outlet_fact(inputs[0])?;
        if let Some(Ok(k)) = x.shape.last().map(|d| d.to_usize()) {
            ensure!(
                k == self.k,
                "input X is {:?} but attribute k = {}",
                x.shape,
                self.k
            );
        }
        let matrix = NmMatrix::from_parts(
            self.pattern,
            self.k,
            n_out,
            plain::<f32>(&values)?,
            plain::<u8>(&indices)?,
        )?;
        let bias = if self.has_bias {
            let bias = konst(3, "bias")?;
            ensure!(
                bias.datum_type() == f32::datum_type(),
                "bias is {:?}, expected f32",
                bias.datum_type()
            );
            Some(plain::<f32>(&bias)?)
        } else {
            None
        };
        Ok(NmMatMul::new(matrix, bias)?)
    }
}

fn plain<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
    Ok(t.try_as_plain_ram()?.as_slice::<T>()?.to_vec())
}
