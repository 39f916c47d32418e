//! Where the segmenter's graphs run: `engine.device` resolved once, at load.
//!
//! `cpu` is tract's CPU runtime with maskd's ops. `cuda` is tract's own CUDA runtime
//! (`tract-cuda`: cuBLAS matmuls, cuDNN convolutions, NVRTC kernels), compiled in with
//! `--features cuda` (CUDA 13) or `--features cuda-12` (JetPack 6) and loaded at run time
//! through cudarc's dynamic loading, so a CUDA build starts on a machine without a driver
//! and `auto` falls back to the CPU there. Probing and preparing never panic into the
//! daemon: tract-cuda's transform panics when applied without a device, so both run
//! behind `catch_unwind` and come back as errors.
//!
//! On the GPU the graph runs as the GPU wants it: maskd's fused ops and the 2:4 op are CPU
//! code, so the plans keep tract's nodes and N:M weights are decompressed to dense at load
//! ([`super::plan::PlanOptions::for_engine`]). The text encoder (int8 MiniLM, run once per
//! new prompt on its worker thread) stays on the CPU.
//!
//! Leaves out: which graphs are loaded (the pipeline) and the CPU plans (`plan.rs`).

use std::fmt;
use std::sync::Arc;

use tract_core::internal::*;

use crate::config::Device;

/// What `engine.device` resolved to on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    #[default]
    Cpu,
    Cuda,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "CPU",
            Target::Cuda => "GPU (CUDA)",
        }
    }
}

/// Resolves `device` on this machine. `auto` without a usable GPU logs why and gives the
/// CPU; `cuda` without one is an error naming the key and the reason.
pub fn resolve(device: Device) -> anyhow::Result<Target> {
    match device {
        Device::Cpu => Ok(Target::Cpu),
        Device::Auto => match cuda::usable() {
            Ok(()) => {
                log::info!("engine.device = \"auto\": running on the GPU (CUDA)");
                Ok(Target::Cuda)
            }
            Err(why) => {
                log::info!("engine.device = \"auto\": running on the CPU: {why}");
                Ok(Target::Cpu)
            }
        },
        Device::Cuda => cuda::usable()
            .map(|()| Target::Cuda)
            .map_err(|why| anyhow::anyhow!("engine.device = \"cuda\": {why}")),
    }
}

/// Turns `model` (typed, decluttered) into a plan on the GPU. The caller falls back to
/// the CPU for this graph on an error.
pub fn prepare_cuda(model: TypedModel, options: &RunOptions) -> TractResult<Arc<TypedSimplePlan>> {
    cuda::prepare(model, options)
}

/// Where a prepared plan's nodes run, and what crosses between host and device per run.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Nodes whose output lives on the device.
    pub device_nodes: usize,
    /// Nodes computed on the host (sources and constants not counted).
    pub host_nodes: usize,
    /// Host <-> device copies per run.
    pub copies: usize,
    /// Bytes those copies move per run (symbolic in the prompt or token count).
    pub copy_bytes: TDim,
}

impl Placement {
    /// Counts `model`'s nodes; `on_device(node)` says whether a node's output is a device
    /// tensor and `is_copy(node)` whether the node is a host/device copy.
    pub fn count(
        model: &TypedModel,
        on_device: impl Fn(&TypedNode) -> bool,
        is_copy: impl Fn(&TypedNode) -> bool,
    ) -> Placement {
        let mut p = Placement {
            device_nodes: 0,
            host_nodes: 0,
            copies: 0,
            copy_bytes: TDim::Val(0),
        };
        for node in model.nodes() {
            let name = node.op().name();
            if name == "Source" || name == "Const" {
                continue;
            }
            if is_copy(node) {
                p.copies += 1;
                if let Some(fact) = node.outputs.first().map(|o| &o.fact) {
                    let bytes = fact.shape.volume() * fact.datum_type.size_of() as i64;
                    p.copy_bytes = p.copy_bytes.clone() + bytes;
                }
            } else if on_device(node) {
                p.device_nodes += 1;
            } else {
                p.host_nodes += 1;
            }
        }
        p.copy_bytes = p.copy_bytes.simplify();
        p
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} nodes on the GPU, {} on the CPU; {} host/device copies of {} bytes per run",
            self.device_nodes,
            self.device_nodes + self.host_nodes,
            self.host_nodes,
            self.copies,
            self.copy_bytes
        )
    }
}

/// Runs `f`, turning a panic into an error message.
// Without CUDA nothing can panic this way; the function stays for its test.
#[cfg_attr(not(any(feature = "cuda", feature = "cuda-12")), allow(dead_code))]
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned())
    })
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
mod cuda {
    use std::sync::Arc;

    use tract_core::internal::*;
    use tract_core::runtime::runtime_for_name;
    // Linking the crate registers its runtime under the name "cuda".
    use tract_cuda as _;
    use tract_gpu::fact::DeviceTypedFactExt;

    use super::{catch, Placement};

    pub fn usable() -> Result<(), String> {
        match catch(|| runtime_for_name("cuda")) {
            Ok(Ok(Some(_))) => Ok(()),
            Ok(Ok(None)) => Err("tract's CUDA runtime is not registered in this build".into()),
            Ok(Err(e)) => Err(format!("no usable CUDA driver or GPU: {e:#}")),
            Err(panic) => Err(format!("probing CUDA panicked: {panic}")),
        }
    }

    pub fn prepare(model: TypedModel, options: &RunOptions) -> TractResult<Arc<TypedSimplePlan>> {
        let rt = runtime_for_name("cuda")?.context("tract's CUDA runtime is not registered")?;
        let runnable = catch(|| rt.prepare_with_options(model, options))
            .map_err(|p| anyhow!("tract-cuda panicked while preparing the graph: {p}"))??;
        let plan = runnable
            .typed_plan()
            .cloned()
            .context("tract-cuda returned a plan that is not a typed plan")?;
        let placement = Placement::count(
            plan.model(),
            |n| n.outputs.iter().any(|o| o.fact.as_device_fact().is_some()),
            |n| n.op().name().starts_with("DeviceSync"),
        );
        log::info!("{placement}");
        Ok(plan)
    }
}

#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
mod cuda {
    use std::sync::Arc;

    use tract_core::internal::*;

    pub const WITHOUT: &str =
        "this maskd was built without CUDA (cargo build --release --features cuda)";

    pub fn usable() -> Result<(), String> {
        Err(WITHOUT.into())
    }

    pub fn prepare(_: TypedModel, _: &RunOptions) -> TractResult<Arc<TypedSimplePlan>> {
        bail!("{WITHOUT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::math::{add, mul, sub};

    #[test]
    fn cpu_is_always_the_cpu() {
        assert_eq!(resolve(Device::Cpu).unwrap(), Target::Cpu);
    }

    /// On a machine without a usable GPU (every CI machine, cuda build or not), `auto`
    /// falls back and `cuda` is an error that names the key and says why, not a panic.
    #[test]
    fn without_a_gpu_auto_falls_back_and_cuda_is_an_error() {
        if cuda::usable().is_ok() {
            eprintln!("a usable GPU is present: the fallback cannot be checked here");
            return;
        }
        assert_eq!(resolve(Device::Auto).unwrap(), Target::Cpu);
        let err = format!("{:#}", resolve(Device::Cuda).unwrap_err());
        assert!(err.starts_with("engine.device = \"cuda\": "), "{err}");
        #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
        assert!(err.ends_with("built without CUDA (cargo build --release --features cuda)"));
        #[cfg(any(feature = "cuda", feature = "cuda-12"))]
        assert!(err.contains("no usable CUDA driver or GPU"), "{err}");
    }

    #[test]
    fn panics_become_errors() {
        assert_eq!(catch(|| 3), Ok(3));
        assert_eq!(
            catch(|| -> u8 { panic!("no device") }),
            Err("no device".to_owned())
        );
        let n = 7;
        assert_eq!(
            catch(|| -> u8 { panic!("device {n} lost") }),
            Err("device 7 lost".to_owned())
        );
    }

    /// Counting on a CPU model with a stand-in rule: the `Add` is "on the device", the
    /// `Mul` is a "copy" of a 2 x P f32 tensor.
    #[test]
    fn placement_counts_nodes_and_copy_bytes() {
        let mut model = TypedModel::default();
        let p = model.symbols.sym("P");
        let x = model
            .add_source("x", f32::fact([2.to_dim(), p.to_dim()]))
            .unwrap();
        let y = model.wire_node("add", add(), &[x, x]).unwrap();
        let z = model.wire_node("mul", mul(), &[y[0], y[0]]).unwrap();
        let w = model.wire_node("sub", sub(), &[z[0], x]).unwrap();
        model.select_output_outlets(&w).unwrap();
        let placement = Placement::count(&model, |n| n.name == "add", |n| n.name == "mul");
        assert_eq!(
            (
                placement.device_nodes,
                placement.host_nodes,
                placement.copies
            ),
            (1, 1, 1)
        );
        assert_eq!(placement.copy_bytes, (p.to_dim() * 8).simplify());
        assert_eq!(
            placement.to_string(),
            "1 of 2 nodes on the GPU, 1 on the CPU; 1 host/device copies of 8*P bytes per run"
        );
    }
}
