//! Loading one ONNX graph into a tract plan, once, after checking it against the manifest.
//!
//! Each graph is loaded with tract-onnx, its declared inputs and outputs are compared with
//! what the manifest says (names, element types, ranks, fixed sizes), its fixed dims are
//! pinned and its variable ones (prompt count `P`, token count `T`, text length `L`) are
//! left symbolic, and it is optimised once into a runnable plan. A mismatch is reported
//! naming the file, the input or output and both shapes, e.g.
//! `seg/seg.onnx: input "image" is 1x3x256x256 but the manifest says 1x3x224x224`.
//!
//! Between typing and optimising, `engine.sparse_kernel` is applied to the graph (see
//! `ops/matmul/rewrite.rs`): N:M layers are kept sparse, decompressed, or created from dense
//! matmuls whose weights obey 2:4; [`Plan::sparse`] says what came out.
//!
//! Leaves out: running plans (the runners in `segmenter.rs`, `stages.rs`, `text/encoder.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::config::{EngineConfig, SparseKernel};
use crate::engine::device::{self, Target};
use crate::engine::ops::matmul::{self, SparseLayer, SparseReport};
use crate::engine::ops::{self, Fusions};

/// One dim of an input or output as the manifest describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Left symbolic; the name is the tract symbol and how messages show it.
    Sym(&'static str),
    /// Whatever the graph says (a channel count the manifest does not state).
    Any,
}

/// One input or output the manifest names.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dt: DatumType,
    pub dims: Vec<Dim>,
}

impl IoSpec {
    pub fn new(name: &str, dt: DatumType, dims: &[Dim]) -> IoSpec {
        IoSpec {
            name: name.to_owned(),
            dt,
            dims: dims.to_vec(),
        }
    }
}

/// How plans are built.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Needed by graphs whose `value_info` carries symbolic shapes tract cannot unify
    /// (the int8 MiniLM export).
    pub ignore_value_info: bool,
    /// Thread pool for matmuls; `None` runs on the calling thread.
    pub executor: Option<Executor>,
    /// How N:M layers run (`engine.sparse_kernel`).
    pub sparse_kernel: SparseKernel,
    /// Which of maskd's ops replace tract's nodes (tests turn them off to compare the
    /// two on whole models).
    pub fusions: Fusions,
    /// Where the plans run (`engine.device`, resolved).
    pub target: Target,
}

impl Default for PlanOptions {
    fn default() -> PlanOptions {
        PlanOptions {
            ignore_value_info: false,
            executor: None,
            sparse_kernel: crate::config::DEFAULT_SPARSE_KERNEL,
            fusions: Fusions {
                upsample: true,
                fused_ops: true,
            },
            target: Target::Cpu,
        }
    }
}

impl PlanOptions {
    /// `threads` > 1 gets a private pool of that many threads, shared by every plan
    /// built with these options (so two graphs never oversubscribe the cores).
    pub fn with_threads(threads: usize) -> PlanOptions {
        let executor =
            (threads > 1).then(|| Executor::multithread_with_name(threads, "maskd-tract"));
        PlanOptions {
            executor,
            ..PlanOptions::default()
        }
    }

    /// What `[engine]` asks for on `target`: the one mapping from config to plans, used
    /// by every command that runs the engine. On the GPU, maskd's CPU ops would run on
    /// the host between copies, so tract's nodes stay and N:M weights are decompressed.
    pub fn for_engine(cfg: &EngineConfig, target: Target) -> PlanOptions {
        let options = PlanOptions::with_threads(cfg.threads).with_sparse_kernel(cfg.sparse_kernel);
        match target {
            Target::Cpu => PlanOptions {
                fusions: Fusions {
                    fused_ops: cfg.fused_ops,
                    ..options.fusions
                },
                ..options
            },
            Target::Cuda => PlanOptions {
                sparse_kernel: SparseKernel::Dense,
                fusions: Fusions {
                    upsample: false,
                    fused_ops: false,
                },
                target,
                ..options
            },
        }
    }

    pub fn with_sparse_kernel(self, sparse_kernel: SparseKernel) -> PlanOptions {
        PlanOptions {
            sparse_kernel,
            ..self
        }
    }
}

/// A graph's interface does not match the manifest.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("{}: no input \"{name}\" (the graph's inputs: {})", file.display(), available.join(", "))]
    MissingInput {
        file: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("{}: input \"{name}\" is not named in the manifest", file.display())]
    ExtraInput { file: PathBuf, name: String },
    #[error("{}: no output \"{name}\" (the graph's outputs: {})", file.display(), available.join(", "))]
    MissingOutput {
        file: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("{}: {kind} \"{name}\" is {graph} but the manifest says {manifest}", file.display())]
    Shape {
        file: PathBuf,
        kind: &'static str,
        name: String,
        graph: String,
        manifest: String,
    },
    #[error("{}: {kind} \"{name}\" has type {graph:?} but the manifest says {manifest:?}", file.display())]
    Type {
        file: PathBuf,
        kind: &'static str,
        name: String,
        graph: DatumType,
        manifest: DatumType,
    },
}

/// A loaded, checked, optimised graph.
#[derive(Debug, Clone)]
pub struct Plan {
    pub plan: Arc<TypedSimplePlan>,
    /// The file as the manifest writes it (for messages).
    pub shown: PathBuf,
    sparse: SparseReport,
    /// The pool the plan's ops split their work over (`None`: the calling thread).
    executor: Option<Executor>,
}

impl Plan {
    /// Loads `file` (shown as `shown` in messages), checks and pins its interface, optimises
    /// it. Inputs and outputs of the plan are in the order of `inputs` and `outputs`.
    pub fn load(
        file: &Path,
        shown: &Path,
        inputs: &[IoSpec],
        outputs: &[IoSpec],
        options: &PlanOptions,
    ) -> anyhow::Result<Plan> {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(options.ignore_value_info);
        matmul::register(&mut onnx);
        let mut model = match onnx.model_for_path(file) {
            Ok(model) => model,
            Err(err) => {
                let err = match super::external::diagnose(file, shown) {
                    Some(why) => err.context(why),
                    None => err,
                };
                return Err(err.context(format!("{}: loading the ONNX graph", shown.display())));
            }
        };
        pin_inputs(&mut model, shown, inputs)?;
        select_outputs(&mut model, shown, outputs)?;
        let mut typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .with_context(|| format!("{}: typing the graph", shown.display()))?;
        let dense = matmul::apply(&mut typed, options.sparse_kernel, options.fusions.fused_ops)
            .with_context(|| {
                format!(
                    "{}: applying engine.sparse_kernel = \"{}\"",
                    shown.display(),
                    options.sparse_kernel.as_str()
                )
            })?;
        ops::fuse(&mut typed, options.fusions, &shown.display().to_string())?;
        let run_options = RunOptions {
            executor: options.executor.clone(),
            ..RunOptions::default()
        };
        if options.target == Target::Cuda {
            check_outputs(&typed, shown, outputs)?;
            let sparse = SparseReport::new(&typed, dense.clone());
            match device::prepare_cuda(typed.clone(), &run_options) {
                Ok(plan) => {
                    return Ok(Plan {
                        plan,
                        shown: shown.to_owned(),
                        sparse,
                        executor: options.executor.clone(),
                    })
                }
                // One graph the GPU cannot run does not stop the others: this one runs
                // on the CPU (as tract's nodes, the options say so).
                Err(e) => log::warn!(
                    "{}: the GPU cannot run this graph, it runs on the CPU: {e:#}",
                    shown.display()
                ),
            }
        }
        let typed = typed
            .into_optimized()
            .with_context(|| format!("{}: optimising the graph", shown.display()))?;
        check_outputs(&typed, shown, outputs)?;
        let sparse = SparseReport::new(&typed, dense);
        let plan = TypedSimplePlan::new_with_options(typed, &run_options)
            .with_context(|| format!("{}: building the plan", shown.display()))?;
        Ok(Plan {
            plan,
            shown: shown.to_owned(),
            sparse,
            executor: options.executor.clone(),
        })
    }

    /// Which N:M layers run sparse (kernel and shape) and which run dense.
    pub fn sparse(&self) -> &SparseReport {
        &self.sparse
    }

    /// The layers the sparse kernel runs, in graph order.
    pub fn sparse_layers(&self) -> &[SparseLayer] {
        &self.sparse.sparse
    }

    /// The `ix`-th output's shape after optimisation (concrete where the graph fixes it).
    pub fn output_shape(&self, ix: usize) -> anyhow::Result<Vec<TDim>> {
        Ok(self
            .plan
            .model()
            .output_fact(ix)?
            .shape
            .iter()
            .cloned()
            .collect())
    }

    /// Runs `state` (spawned from this plan) on `inputs`, from inside the plan's pool
    /// when it has one. Why: an op that splits its work from a thread outside the pool
    /// injects the job, wakes a pool thread, which wakes the next, and then has to be
    /// woken itself when they finish; from a pool thread the split only wakes the
    /// others. With ~100 split ops per frame the extra wake-ups cost more than a tenth
    /// of a 2-thread frame.
    pub fn run(
        &self,
        state: &mut TypedSimpleState,
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        match &self.executor {
            Some(Executor::MultiThread(pool)) => pool.install(|| state.run(inputs)),
            _ => state.run(inputs),
        }
    }

    /// A fresh state (one per runner, reused for every run).
    pub fn spawn(&self) -> anyhow::Result<TypedSimpleState> {
        self.plan
            .spawn()
            .with_context(|| format!("{}: spawning a state", self.shown.display()))
    }
}

fn input_names(model: &InferenceModel) -> Vec<String> {
    let outlets = model
        .input_outlets()
        .map(|o| o.to_vec())
        .unwrap_or_default();
    outlets
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect()
}

fn pin_inputs(model: &mut InferenceModel, shown: &Path, inputs: &[IoSpec]) -> anyhow::Result<()> {
    let available = input_names(model);
    for name in &available {
        if !inputs.iter().any(|i| &i.name == name) {
            return Err(InterfaceError::ExtraInput {
                file: shown.to_owned(),
                name: name.clone(),
            }
            .into());
        }
    }
    for spec in inputs {
        if !available.contains(&spec.name) {
            return Err(InterfaceError::MissingInput {
                file: shown.to_owned(),
                name: spec.name.clone(),
                available: available.clone(),
            }
            .into());
        }
    }
    model.set_input_names(inputs.iter().map(|i| i.name.as_str()))?;
    for (ix, spec) in inputs.iter().enumerate() {
        let declared = model.input_fact(ix)?.clone();
        match declared.datum_type.concretize() {
            Some(dt) if dt != spec.dt => {
                return Err(InterfaceError::Type {
                    file: shown.to_owned(),
                    kind: "input",
                    name: spec.name.clone(),
                    graph: dt,
                    manifest: spec.dt,
                }
                .into());
            }
            _ => {}
        }
        let graph_dims: Option<Vec<Option<TDim>>> = (!declared.shape.is_open())
            .then(|| declared.shape.dims().map(|d| d.concretize()).collect());
        match &graph_dims {
            Some(dims) if !dims_compatible(dims, &spec.dims) => {
                return Err(InterfaceError::Shape {
                    file: shown.to_owned(),
                    kind: "input",
                    name: spec.name.clone(),
                    graph: show_dims(dims),
                    manifest: show_spec(&spec.dims),
                }
                .into());
            }
            _ => {}
        }
        let declared_dims: Vec<Option<TDim>> = graph_dims.unwrap_or_default();
        let shape: TVec<TDim> = spec
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Fixed(n) => n.to_dim(),
                Dim::Sym(s) => model.symbols.sym(s).to_dim(),
                Dim::Any => declared_dims
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| model.symbols.new_with_prefix("any").to_dim()),
            })
            .collect();
        model.set_input_fact(ix, InferenceFact::dt_shape(spec.dt, shape))?;
    }
    Ok(())
}

/// A graph dim fits a manifest dim if it is unknown/symbolic (we pin it), or equal when fixed.
/// A fixed graph dim where the manifest wants a variable one does not fit.
fn dims_compatible(graph: &[Option<TDim>], spec: &[Dim]) -> bool {
    graph.len() == spec.len()
        && graph
            .iter()
            .zip(spec)
            .all(|(g, s)| match (g.as_ref().and_then(|g| g.as_i64()), s) {
                (None, _) | (_, Dim::Any) => true,
                (Some(g), Dim::Fixed(n)) => g == *n as i64,
                (Some(_), Dim::Sym(_)) => false,
            })
}

fn select_outputs(
    model: &mut InferenceModel,
    shown: &Path,
    outputs: &[IoSpec],
) -> anyhow::Result<()> {
    let available: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();
    let mut outlets = Vec::with_capacity(outputs.len());
    for spec in outputs {
        let outlet = model
            .output_outlets()?
            .iter()
            .zip(&available)
            .find(|(_, name)| **name == spec.name)
            .map(|(o, _)| *o);
        match outlet {
            Some(o) => outlets.push(o),
            None => {
                return Err(InterfaceError::MissingOutput {
                    file: shown.to_owned(),
                    name: spec.name.clone(),
                    available,
                }
                .into());
            }
        }
    }
    model.select_output_outlets(&outlets)?;
    Ok(())
}

fn check_outputs(model: &TypedModel, shown: &Path, outputs: &[IoSpec]) -> anyhow::Result<()> {
    for (ix, spec) in outputs.iter().enumerate() {
        let fact = model.output_fact(ix)?;
        if fact.datum_type != spec.dt {
            return Err(InterfaceError::Type {
                file: shown.to_owned(),
                kind: "output",
                name: spec.name.clone(),
                graph: fact.datum_type,
                manifest: spec.dt,
            }
            .into());
        }
        let dims: Vec<Option<TDim>> = fact.shape.iter().map(|d| Some(d.clone())).collect();
        // After pinning, a fixed output dim must come out as that number and a variable one
        // must still be variable (else the graph ignores the prompt or token count).
        let ok = dims.len() == spec.dims.len()
            && dims.iter().zip(&spec.dims).all(|(g, s)| {
                match (g.as_ref().and_then(|g| g.as_i64()), s) {
                    (Some(g), Dim::Fixed(n)) => g == *n as i64,
                    (None, Dim::Sym(_)) | (_, Dim::Any) => true,
                    _ => false,
                }
            });
        if !ok {
            return Err(InterfaceError::Shape {
                file: shown.to_owned(),
                kind: "output",
                name: spec.name.clone(),
                graph: show_dims(&dims),
                manifest: show_spec(&spec.dims),
            }
            .into());
        }
    }
    Ok(())
}

/// `1x3x224x224`, with symbols by name and unknown dims as `?`.
pub fn show_dims(dims: &[Option<TDim>]) -> String {
    join_x(dims.iter().map(|d| match d {
        Some(d) => d.to_string(),
        None => "?".to_owned(),
    }))
}

pub fn show_spec(dims: &[Dim]) -> String {
    join_x(dims.iter().map(|d| match d {
        Dim::Fixed(n) => n.to_string(),
        Dim::Sym(s) => (*s).to_owned(),
        Dim::Any => "?".to_owned(),
    }))
}

fn join_x(parts: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = parts.collect();
    if v.is_empty() {
        "a scalar".to_owned()
    } else {
        v.join("x")
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Any => f.write_str("?"),
        }
    }
}

/// Reads a run's output `ix` as f32 (no copy).
pub fn output_f32<'a>(
    outputs: &'a TVec<TValue>,
    ix: usize,
    what: &str,
) -> anyhow::Result<&'a [f32]> {
    let value = outputs
        .get(ix)
        .with_context(|| format!("missing output {what}"))?;
    let view = value
        .try_as_plain_ram()
        .with_context(|| format!("output {what}: not in memory"))?;
    view.as_slice::<f32>()
        .with_context(|| format!("output {what}: not f32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[engine]` maps to plans one way on the CPU and, on the GPU, to tract's own nodes
    /// with dense weights whatever the config asks.
    #[test]
    fn engine_config_maps_to_plan_options() {
        let cfg = EngineConfig {
            threads: 2,
            sparse_kernel: SparseKernel::Sparse,
            fused_ops: false,
            ..EngineConfig::with_defaults(PathBuf::from("m.toml"))
        };
        let cpu = PlanOptions::for_engine(&cfg, Target::Cpu);
        assert_eq!(
            (cpu.sparse_kernel, cpu.fusions, cpu.target),
            (
                SparseKernel::Sparse,
                Fusions {
                    upsample: true,
                    fused_ops: false
                },
                Target::Cpu
            )
        );
        assert!(cpu.executor.is_some());
        let gpu = PlanOptions::for_engine(
            &EngineConfig {
                fused_ops: true,
                ..cfg
            },
            Target::Cuda,
        );
        assert_eq!(
            (gpu.sparse_kernel, gpu.fusions, gpu.target),
            (
                SparseKernel::Dense,
                Fusions {
                    upsample: false,
                    fused_ops: false
                },
                Target::Cuda
            )
        );
    }

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/fixture")
            .join(rel)
    }

    fn seg_specs(width: usize) -> (Vec<IoSpec>, Vec<IoSpec>) {
        let f = f32::datum_type();
        let inputs = vec![
            IoSpec::new(
                "image",
                f,
                &[
                    Dim::Fixed(1),
                    Dim::Fixed(3),
                    Dim::Fixed(width),
                    Dim::Fixed(width),
                ],
            ),
            IoSpec::new("text", f, &[Dim::Sym("P"), Dim::Fixed(16)]),
        ];
        let outputs = vec![
            IoSpec::new(
                "mask_logits",
                f,
                &[Dim::Sym("P"), Dim::Fixed(16), Dim::Fixed(16)],
            ),
            IoSpec::new("presence_logits", f, &[Dim::Sym("P")]),
        ];
        (inputs, outputs)
    }

    fn load_seg(inputs: &[IoSpec], outputs: &[IoSpec]) -> anyhow::Result<Plan> {
        Plan::load(
            &fixture("seg/seg.onnx"),
            Path::new("seg/seg.onnx"),
            inputs,
            outputs,
            &PlanOptions::default(),
        )
    }

    #[test]
    fn fixture_segmenter_loads_and_runs_with_any_prompt_count() {
        let (inputs, outputs) = seg_specs(64);
        let plan = load_seg(&inputs, &outputs).unwrap();
        let mut state = plan.spawn().unwrap();
        for p in [1usize, 3] {
            let image = Tensor::zero::<f32>(&[1, 3, 64, 64]).unwrap();
            let text = Tensor::zero::<f32>(&[p, 16]).unwrap();
            let out = state
                .run(tvec!(image.into_tvalue(), text.into_tvalue()))
                .unwrap();
            assert_eq!(out[0].shape(), &[p, 16, 16]);
            assert_eq!(out[1].shape(), &[p]);
            assert_eq!(output_f32(&out, 1, "presence").unwrap().len(), p);
        }
    }

    #[test]
    fn wrong_image_size_names_file_input_and_both_shapes() {
        let (inputs, outputs) = seg_specs(224);
        let err = load_seg(&inputs, &outputs).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "seg/seg.onnx: input \"image\" is 1x3x64x64 but the manifest says 1x3x224x224"
        );
    }

    #[test]
    fn missing_and_extra_names() {
        let (mut inputs, outputs) = seg_specs(64);
        inputs[1].name = "prompt".into();
        let err = format!("{:#}", load_seg(&inputs, &outputs).unwrap_err());
        assert_eq!(
            err,
            "seg/seg.onnx: input \"text\" is not named in the manifest"
        );

        let (inputs, mut outputs) = seg_specs(64);
        outputs[1].name = "scores".into();
        let err = format!("{:#}", load_seg(&inputs, &outputs).unwrap_err());
        assert!(
            err.contains(
                "no output \"scores\" (the graph's outputs: mask_logits, presence_logits)"
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_mask_size_is_an_output_mismatch() {
        let (inputs, mut outputs) = seg_specs(64);
        outputs[0].dims = vec![Dim::Sym("P"), Dim::Fixed(56), Dim::Fixed(56)];
        let err = format!("{:#}", load_seg(&inputs, &outputs).unwrap_err());
        assert_eq!(
            err,
            "seg/seg.onnx: output \"mask_logits\" is Px16x16 but the manifest says Px56x56"
        );
    }

    #[test]
    fn shapes_render_readably() {
        assert_eq!(show_spec(&[Dim::Sym("P"), Dim::Fixed(384)]), "Px384");
        assert_eq!(show_dims(&[Some(1.to_dim()), None]), "1x?");
        assert_eq!(show_spec(&[]), "a scalar");
    }
}
