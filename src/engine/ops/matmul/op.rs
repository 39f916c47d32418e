//! maskd's constant-weight matmul ops: `Y[..., N] = X[..., K] · W + bias`, `W` packed
//! once, as `maskd.NmMatMul` (N:M-sparse `W`, `maskd_kernels::PackedSpmm`) or
//! `maskd.DenseMatMul` (dense `W`, `maskd_kernels::PackedGemm`).
//!
//! Both are one generic op, [`MatMul`], over the [`Weights`] they multiply by: the
//! shapes, the fused epilogues (a GELU, a residual input), the split over the plan's
//! thread pool and the rewrites that fold a bias, a GELU or a residual into the op
//! (`bias.rs`, `act.rs`, `residual.rs`) are the same for both; only the kernel call
//! differs. Every run reads `X` in place and writes straight into a fresh output tensor.
//!
//! Leaves out: reading the op from ONNX (`onnx.rs`) and deciding where it runs
//! (`rewrite.rs`).

use std::fmt;
use std::sync::Arc;

use crate::engine::ops::gelu;
use crate::engine::ops::parallel::{par_parts, par_rows, threads, MIN_WORK};
use maskd_kernels::{KernelKind, NmMatrix, PackedGemm, PackedSpmm, SparseError};
use tract_core::internal::*;

/// How a product is cut over the pool's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One chunk of whole row blocks per thread (`align` rows).
    Rows { align: usize },
    /// The kernel's own column split into one part per thread.
    Columns,
}

/// Runs `each(0..parts)`, typically on the pool (see `PackedSpmm::run_column_parts`).
pub type RunParts<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// What a [`MatMul`] multiplies by: packed weights and their kernel.
pub trait Weights: Send + Sync + 'static {
    /// The op's name in graphs and profiles.
    const OP: &'static str;
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    fn bias(&self) -> Option<&[f32]>;
    /// The same weights with `bias` added to every output row (repacked).
    fn with_bias(&self, bias: Vec<f32>) -> TractResult<Self>
    where
        Self: Sized;
    /// Bit for bit the same weights and bias.
    fn same(&self, other: &Self) -> bool;
    /// Multiply-adds per output row.
    fn fmas_per_row(&self) -> usize;
    /// The precise kernel, e.g. `avx512_gemm_f32_8x32`.
    fn kernel_name(&self) -> &str;
    /// Shape and kind for `Debug`, e.g. `2:4, K=192, N=768`.
    fn describe(&self) -> String;
    /// `y[t, N] = x[t, K] · W + bias` on this thread.
    fn run(&self, x: &[f32], t: usize, y: &mut [f32]);
    /// How `t` rows split over `threads` threads.
    fn split(&self, t: usize, threads: usize) -> Split;
    /// [`Weights::run`] cut by columns into `parts`, run by `par` (see
    /// `PackedSpmm::run_column_parts`); only called when [`Weights::split`] says so.
    fn run_column_parts(&self, x: &[f32], t: usize, y: &mut [f32], parts: usize, par: RunParts);
}

/// The op, with its weights as state (one input `X`, or two with a residual). Fused
/// epilogues are applied to each thread's rows as soon as the kernel wrote them: a
/// GELU, then a residual added from a second input of the output's shape. Clones
/// share the packed weights.
pub struct MatMul<W: Weights> {
    layer: Arc<W>,
    gelu: bool,
    residual: bool,
}

// By hand: a derive would ask `W: Clone`, and the weights are shared, not copied.
impl<W: Weights> Clone for MatMul<W> {
    fn clone(&self) -> MatMul<W> {
        MatMul {
            layer: Arc::clone(&self.layer),
            gelu: self.gelu,
            residual: self.residual,
        }
    }
}

/// `maskd.NmMatMul`: N:M-sparse weights.
pub type NmMatMul = MatMul<SparseWeights>;
/// `maskd.DenseMatMul`: dense weights.
pub type DenseMatMul = MatMul<PackedGemm>;

impl<W: Weights> MatMul<W> {
    fn from_weights(w: W) -> MatMul<W> {
        MatMul {
            layer: Arc::new(w),
            gelu: false,
            residual: false,
        }
    }

    /// The same layer with the tanh-form GELU after it (shares the packed weights).
    pub fn with_gelu(&self) -> MatMul<W> {
        MatMul {
            layer: Arc::clone(&self.layer),
            gelu: true,
            residual: self.residual,
        }
    }

    pub fn gelu(&self) -> bool {
        self.gelu
    }

    /// The same layer plus a second input added to its output (after the GELU, if
    /// any); shares the packed weights.
    pub fn with_residual(&self) -> MatMul<W> {
        MatMul {
            layer: Arc::clone(&self.layer),
            gelu: self.gelu,
            residual: true,
        }
    }

    pub fn residual(&self) -> bool {
        self.residual
    }

    /// The same weights with `bias` added to every output row (repacks them).
    pub fn with_bias(&self, bias: Vec<f32>) -> TractResult<MatMul<W>> {
        Ok(MatMul {
            layer: Arc::new(self.layer.with_bias(bias)?),
            gelu: self.gelu,
            residual: self.residual,
        })
    }

    pub fn bias(&self) -> Option<&[f32]> {
        self.layer.bias()
    }

    /// The precise kernel, e.g. `avx2_spmm24_f32_4x16` or `avx512_gemm_f32_8x32`.
    pub fn kernel_name(&self) -> &str {
        self.layer.kernel_name()
    }

    pub fn k(&self) -> usize {
        self.layer.k()
    }

    pub fn n(&self) -> usize {
        self.layer.n()
    }

    pub fn weights(&self) -> &W {
        &self.layer
    }
}

/// The weights of one N:M layer: compressed (kept for decompression and equality)
/// and packed.
pub struct SparseWeights {
    matrix: NmMatrix,
    bias: Option<Vec<f32>>,
    spmm: PackedSpmm,
}

/// A column split needs this many column units (octets) per thread to pay for
/// transposing the input once per part; the model's narrowest layers (N = 192, 24
/// octets) qualify on up to 6 threads.
const COLUMN_UNITS_PER_THREAD: usize = 4;

impl Weights for SparseWeights {
    const OP: &'static str = "NmMatMul";

    fn k(&self) -> usize {
        self.matrix.k()
    }

    fn n(&self) -> usize {
        self.matrix.n()
    }

    fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    fn with_bias(&self, bias: Vec<f32>) -> TractResult<SparseWeights> {
        Ok(SparseWeights::new(self.matrix.clone(), Some(bias))?)
    }

    fn same(&self, other: &SparseWeights) -> bool {
        let (a, b) = (&self.matrix, &other.matrix);
        a.pattern() == b.pattern()
            && a.k() == b.k()
            && a.n() == b.n()
            && a.indices() == b.indices()
            && same_bits(a.values(), b.values())
            && opt_bits(self.bias(), other.bias())
    }

    fn fmas_per_row(&self) -> usize {
        let p = self.matrix.pattern();
        self.k().div_ceil(p.m()) * p.n() * self.n()
    }

    fn kernel_name(&self) -> &str {
        self.spmm.kernel_name()
    }

    fn describe(&self) -> String {
        format!("{}, K={}, N={}", self.matrix.pattern(), self.k(), self.n())
    }

    fn run(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.spmm.run(x, t, y)
    }

    fn split(&self, _t: usize, threads: usize) -> Split {
        // The token kernels split by columns: every thread keeps full 48-row blocks,
        // where a row split leaves T = 49 two blocks of 3-4 vectors, bound by FMA
        // latency.
        match self.spmm.column_unit() {
            Some(u) if self.n() / u >= COLUMN_UNITS_PER_THREAD * threads => Split::Columns,
            _ => Split::Rows { align: 8 },
        }
    }

    fn run_column_parts(&self, x: &[f32], t: usize, y: &mut [f32], parts: usize, par: RunParts) {
        self.spmm.run_column_parts(x, t, y, parts, par)
    }
}

impl SparseWeights {
    fn new(matrix: NmMatrix, bias: Option<Vec<f32>>) -> Result<SparseWeights, SparseError> {
        let spmm = PackedSpmm::new(&matrix, bias.as_deref())?;
        Ok(SparseWeights { matrix, bias, spmm })
    }
}

impl NmMatMul {
    /// Packs `matrix` (and `bias`, `N` values) for the kernel `maskd_kernels` selects.
    pub fn new(matrix: NmMatrix, bias: Option<Vec<f32>>) -> Result<NmMatMul, SparseError> {
        Ok(MatMul::from_weights(SparseWeights::new(matrix, bias)?))
    }

    pub fn matrix(&self) -> &NmMatrix {
        &self.layer.matrix
    }

    /// Whether a SIMD kernel runs this layer (false: the scalar fallback).
    pub fn is_simd(&self) -> bool {
        self.layer.spmm.kernel() != KernelKind::Generic
    }
}

/// A dense product this small per thread (rows below this many tiles) splits by
/// columns instead: a prompt's few rows, cut by rows, would leave each thread a
/// partial tile.
const ROW_TILES_PER_THREAD: usize = 2;

impl Weights for PackedGemm {
    const OP: &'static str = "DenseMatMul";

    fn k(&self) -> usize {
        PackedGemm::k(self)
    }

    fn n(&self) -> usize {
        PackedGemm::n(self)
    }

    fn bias(&self) -> Option<&[f32]> {
        PackedGemm::bias(self)
    }

    fn with_bias(&self, bias: Vec<f32>) -> TractResult<PackedGemm> {
        PackedGemm::with_kernel(
            &self.weights(),
            self.k(),
            self.n(),
            Some(&bias),
            self.kernel(),
        )
        .map_err(|e| format_err!("{e}"))
    }

    fn same(&self, other: &PackedGemm) -> bool {
        self.k() == other.k()
            && self.n() == other.n()
            && same_bits(&self.weights(), &other.weights())
            && opt_bits(Weights::bias(self), Weights::bias(other))
    }

    fn fmas_per_row(&self) -> usize {
        self.k() * self.n()
    }

    fn kernel_name(&self) -> &str {
        PackedGemm::kernel_name(self)
    }

    fn describe(&self) -> String {
        format!("dense, K={}, N={}", self.k(), self.n())
    }

    fn run(&self, x: &[f32], t: usize, y: &mut [f32]) {
        PackedGemm::run(self, x, t, y)
    }

    fn split(&self, t: usize, threads: usize) -> Split {
        let tile = self.row_block();
        let panels = self.n().div_ceil(self.column_unit());
        if t < ROW_TILES_PER_THREAD * tile * threads && panels >= 2 * threads {
            Split::Columns
        } else {
            Split::Rows { align: tile }
        }
    }

    fn run_column_parts(&self, x: &[f32], t: usize, y: &mut [f32], parts: usize, par: RunParts) {
        PackedGemm::run_column_parts(self, x, t, y, parts, par)
    }
}

impl DenseMatMul {
    /// Packs `w` (row-major `W[K, N]`) and `bias` for the dense kernel
    /// `maskd_kernels` selects.
    pub fn new(w: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> TractResult<DenseMatMul> {
        let gemm = PackedGemm::new(w, k, n, bias).map_err(|e| format_err!("{e}"))?;
        Ok(MatMul::from_weights(gemm))
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn opt_bits(a: Option<&[f32]>, b: Option<&[f32]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_bits(a, b),
        _ => false,
    }
}

impl<W: Weights> fmt::Debug for MatMul<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({}, bias: {}, gelu: {}, residual: {}, {})",
            W::OP,
            self.layer.describe(),
            self.bias().is_some(),
            self.gelu,
            self.residual,
            self.kernel_name()
        )
    }
}

/// Equal when the weights are bit for bit the same (tract merges equal nodes on equal
/// inputs); bits rather than `==` so that the relation is a true `Eq`, NaN included.
impl<W: Weights> PartialEq for MatMul<W> {
    fn eq(&self, other: &Self) -> bool {
        (self.gelu, self.residual) == (other.gelu, other.residual)
            && (Arc::ptr_eq(&self.layer, &other.layer) || self.layer.same(&other.layer))
    }
}

impl<W: Weights> Eq for MatMul<W> {}

impl<W: Weights> Op for MatMul<W> {
    fn name(&self) -> StaticName {
        W::OP.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl<W: Weights> EvalOp for MatMul<W> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = W::OP;
        let (x, r) = if self.residual {
            let (x, r) = args_2!(inputs);
            (x, Some(r))
        } else {
            (args_1!(inputs), None)
        };
        let (k, n) = (self.k(), self.n());
        let shape = x.shape();
        ensure!(
            x.datum_type() == f32::datum_type() && shape.last() == Some(&k),
            "{op}: input is {:?} {:?}, expected f32 with last dim K = {k}",
            x.datum_type(),
            shape
        );
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let mut out_shape: TVec<usize> = shape.into();
        if let Some(last) = out_shape.last_mut() {
            *last = n;
        }
        // SAFETY: f32 has no invalid bit patterns, and both kernels overwrite every
        // element of `y` (their contract; the kernel tests poison `y` with NaN to check
        // it), so no uninitialised value is ever read. Skipping the zeroing saves a
        // pass over the output on every frame.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let rs = match &r {
            Some(r) => {
                ensure!(
                    r.datum_type() == f32::datum_type() && r.shape() == out_shape.as_slice(),
                    "{op}: residual is {:?} {:?}, expected f32 {:?}",
                    r.datum_type(),
                    r.shape(),
                    out_shape
                );
                Some(r.try_as_plain_ram()?.as_slice::<f32>()?)
            }
            None => None,
        };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            let layer = &*self.layer;
            // Work is split over the pool the plan installed for this run (the engine's
            // `threads`); small products stay on this thread (`MIN_WORK`).
            let work = rows * layer.fmas_per_row();
            let threads = threads();
            // The fused GELU and residual, on output rows `first..` held in `chunk`.
            let epilogue = |first: usize, chunk: &mut [f32]| {
                if self.gelu {
                    gelu::run(chunk);
                }
                if let Some(rs) = rs {
                    let r = &rs[first * n..first * n + chunk.len()];
                    chunk.iter_mut().zip(r).for_each(|(y, r)| *y += r);
                }
            };
            let split = layer.split(rows, threads);
            if threads > 1 && work >= MIN_WORK && split == Split::Columns {
                layer
                    .run_column_parts(xs, rows, ys, threads, &|parts, each| par_parts(parts, each));
                if self.gelu || rs.is_some() {
                    par_rows(ys, n.max(1), 8, rows * n, |first, chunk| {
                        epilogue(first, chunk);
                        Ok(())
                    })?;
                }
            } else {
                // Otherwise rows, one chunk per thread in whole row blocks, each
                // chunk's epilogue while its rows are still in cache.
                let align = match split {
                    Split::Rows { align } => align,
                    Split::Columns => 8,
                };
                par_rows(ys, n.max(1), align, work, |first, chunk| {
                    let t = chunk.len() / n;
                    layer.run(&xs[first * k..(first + t) * k], t, chunk);
                    epilogue(first, chunk);
                    Ok(())
                })?;
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl<W: Weights> TypedOp for MatMul<W> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let op = W::OP;
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "{op}: input is {:?}, expected f32",
            x.datum_type
        );
        let mut shape: TVec<TDim> = x.shape.iter().cloned().collect();
        let Some(last) = shape.last_mut() else {
            bail!("{op}: input is a scalar, expected [..., K = {}]", self.k());
        };
        if let Ok(k) = last.to_usize() {
            ensure!(
                k == self.k(),
                "{op}: input's last dim is {k}, the weights have K = {}",
                self.k()
            );
        }
        *last = self.n().to_dim();
        if self.residual {
            let r = inputs
                .get(1)
                .with_context(|| format!("{op}: residual input missing"))?;
            ensure!(
                r.datum_type == f32::datum_type() && r.shape.iter().eq(shape.iter()),
                "{op}: residual is {:?}, expected f32 {:?}",
                r,
                shape
            );
        }
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            rows * self.layer.fmas_per_row()
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use maskd_kernels::NmPattern;
    use proptest::prelude::*;
    use tract_linalg::multithread::Executor;

    /// A random matrix pruned to `pattern`, with about a third of its groups all zero.
    fn matrix(pattern: NmPattern, k: usize, n: usize, seed: &[f32]) -> NmMatrix {
        let mut w: Vec<f32> = (0..k * n)
            .map(|i| seed[i % seed.len()] + i as f32 * 1e-3)
            .collect();
        for g in 0..pattern.groups(k) {
            for c in 0..n {
                if (g * 7 + c * 3) % 3 == 0 {
                    for r in g * pattern.m()..((g + 1) * pattern.m()).min(k) {
                        w[r * n + c] = 0.0;
                    }
                }
            }
        }
        NmMatrix::from_dense_pruned(&w, k, n, pattern).unwrap()
    }

    /// f64 reference on the decompressed weights.
    fn reference(m: &NmMatrix, bias: Option<&[f32]>, x: &[f32], t: usize) -> Vec<f64> {
        let (k, n, w) = (m.k(), m.n(), m.to_dense());
        let mut y = vec![0f64; t * n];
        for r in 0..t {
            for c in 0..n {
                let mut acc = bias.map_or(0.0, |b| b[c] as f64);
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[i * n + c] as f64;
                }
                y[r * n + c] = acc;
            }
        }
        y
    }

    fn run_plan(op: &NmMatMul, x: &Tensor, threads: usize) -> Tensor {
        let mut model = TypedModel::default();
        let shape: TVec<usize> = x.shape().into();
        let src = model.add_source("x", f32::fact(&shape)).unwrap();
        let y = model.wire_node("fc", op.clone(), &[src]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let options = RunOptions {
            executor: (threads > 1).then(|| Executor::multithread(threads)),
            ..RunOptions::default()
        };
        let plan = TypedSimplePlan::new_with_options(model, &options).unwrap();
        let mut out = plan
            .spawn()
            .unwrap()
            .run(tvec!(x.clone().into_tvalue()))
            .unwrap();
        out.remove(0).into_tensor()
    }

    fn check(pattern: NmPattern, lead: &[usize], k: usize, n: usize, bias: bool, seed: &[f32]) {
        let m = matrix(pattern, k, n, seed);
        let b: Option<Vec<f32>> = bias.then(|| (0..n).map(|c| c as f32 * 0.25 - 1.0).collect());
        let t: usize = lead.iter().product();
        let xv: Vec<f32> = (0..t * k)
            .map(|i| ((i * 37) % 101) as f32 / 16.0 - 3.0)
            .collect();
        let mut shape = lead.to_vec();
        shape.push(k);
        let x = Tensor::from_shape(&shape, &xv).unwrap();
        let op = NmMatMul::new(m.clone(), b.clone()).unwrap();
        let want = reference(&m, b.as_deref(), &xv, t);
        let y = op
            .eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))
            .unwrap();
        let mut want_shape = lead.to_vec();
        want_shape.push(n);
        assert_eq!(y[0].shape(), &want_shape[..]);
        let got = y[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                ((*g as f64) - w).abs() <= 1e-5 * scale,
                "{pattern} lead {lead:?} K {k} N {n} bias {bias}: y[{i}] = {g}, want {w}"
            );
        }
        // Through a plan, on one thread and on a two-thread pool: the same bits (rows are
        // independent, so splitting them cannot change a result).
        for threads in [1, 2] {
            let planned = run_plan(&op, &x, threads);
            let planned = planned
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            assert_eq!(planned, got, "threads {threads}");
        }
    }

    #[test]
    fn named_shapes_match_the_dense_reference() {
        let p24 = NmPattern::TWO_FOUR;
        let seed = [0.5, -1.25, 2.0, -0.75, 0.1, 3.0, -2.5];
        check(p24, &[1], 7, 5, true, &seed); // T = 1, K % 4 != 0
        check(p24, &[1, 13], 22, 17, false, &seed); // odd T, padded tail group
        check(p24, &[196], 192, 64, true, &seed); // enough work to split across threads
        check(NmPattern::new(1, 3).unwrap(), &[2, 3], 25, 6, true, &seed);
        check(NmPattern::new(2, 8).unwrap(), &[5], 19, 9, false, &seed);
    }

    /// The fused GELU and residual epilogues give the same bits on a two-thread pool
    /// (where the token kernels split by columns, then run the epilogues by rows) as
    /// on one thread, at T = 49 (the pruned token count) and 196.
    #[test]
    fn fused_epilogues_same_bits_on_two_threads() {
        let seed = [0.5, -1.25, 2.0, -0.75, 0.1, 3.0, -2.5];
        let (k, n) = (192, 64);
        let m = matrix(NmPattern::TWO_FOUR, k, n, &seed);
        let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.01 - 0.3).collect();
        let base = NmMatMul::new(m, Some(bias)).unwrap();
        for t in [49, 196] {
            let xv: Vec<f32> = (0..t * k)
                .map(|i| ((i * 37) % 101) as f32 / 64.0 - 0.8)
                .collect();
            let rv: Vec<f32> = (0..t * n)
                .map(|i| ((i * 13) % 29) as f32 / 8.0 - 1.5)
                .collect();
            let x = Tensor::from_shape(&[t, k], &xv).unwrap();
            let r = Tensor::from_shape(&[t, n], &rv).unwrap();
            for op in [
                base.with_gelu(),
                base.with_residual(),
                base.with_gelu().with_residual(),
            ] {
                let run = |threads: usize| {
                    let mut model = TypedModel::default();
                    let mut inputs = vec![model.add_source("x", f32::fact([t, k])).unwrap()];
                    if op.residual() {
                        inputs.push(model.add_source("r", f32::fact([t, n])).unwrap());
                    }
                    let y = model.wire_node("fc", op.clone(), &inputs).unwrap();
                    model.select_output_outlets(&y).unwrap();
                    let options = RunOptions {
                        executor: (threads > 1).then(|| Executor::multithread(threads)),
                        ..RunOptions::default()
                    };
                    let plan = TypedSimplePlan::new_with_options(model, &options).unwrap();
                    let mut feed = tvec!(x.clone().into_tvalue());
                    if op.residual() {
                        feed.push(r.clone().into_tvalue());
                    }
                    let out = plan.spawn().unwrap().run(feed).unwrap();
                    out[0]
                        .try_as_plain_ram()
                        .unwrap()
                        .as_slice::<f32>()
                        .unwrap()
                        .to_vec()
                };
                let one = run(1);
                let two = run(2);
                let same = one
                    .iter()
                    .zip(&two)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "T={t} gelu {} residual {}", op.gelu(), op.residual());
                // The epilogues did run: the fused op differs from the plain product.
                let plain = base
                    .eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))
                    .unwrap();
                let plain = plain[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                assert_ne!(one, plain);
            }
        }
    }

    #[test]
    fn all_zero_weights_give_the_bias() {
        let op = NmMatMul::new(
            NmMatrix::from_dense_pruned(&[0.0; 12], 4, 3, NmPattern::TWO_FOUR).unwrap(),
            Some(vec![1.0, 2.0, 3.0]),
        )
        .unwrap();
        let x = Tensor::from_shape(&[2, 4], &[1.0f32; 8]).unwrap();
        let y = op
            .eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))
            .unwrap();
        assert_eq!(
            y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
            &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn wrong_input_width_is_refused() {
        let op = NmMatMul::new(
            NmMatrix::from_dense_pruned(&[1.0; 12], 4, 3, NmPattern::TWO_FOUR).unwrap(),
            None,
        )
        .unwrap();
        let fact = f32::fact([2, 5]);
        let err = op.output_facts(&[&fact]).unwrap_err();
        assert!(
            format!("{err}").contains("last dim is 5, the weights have K = 4"),
            "{err}"
        );
        let x = Tensor::zero::<f32>(&[2, 5]).unwrap();
        assert!(op
            .eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue()))
            .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn random_shapes_match_the_dense_reference(
            t in prop_oneof![Just(1usize), 1usize..40],
            k in 1usize..70,
            n in 1usize..40,
            m in prop_oneof![Just(4usize), 2usize..9],
            bias: bool,
            seed in proptest::collection::vec(-4.0f32..4.0, 1..9),
        ) {
            let pattern = NmPattern::new((m / 2).max(1), m).unwrap();
            check(pattern, &[t], k, n, bias, &seed);
        }
    }
}
