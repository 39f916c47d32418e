//! Dense matmul with constant weights: `y[T, N] = x[T, K] · W + bias`, `W` packed once.
//!
//! tract packs the *activations* of every matmul on every call (`OptMatMulPack`, ~4 ms
//! of a 1-thread frame on the default model) and runs its kernels through a generic
//! scheduler; ONNX Runtime's MLAS keeps `x` in place and packs only `B`, once. This is
//! MLAS's arrangement: `W` is cut into panels of `NR` columns, each stored `k`-major
//! (`panel[k][0..NR]`, zero-padded past `N`, 64-byte aligned), so a register tile of
//! `MR` rows x `NR` columns reads one contiguous vector row of the panel per `k` and
//! broadcasts one `x` value per row. `x` and `y` stay row-major and are read and
//! written in place; the bias is the accumulators' start.
//!
//! | kernel | tile (rows x columns) | accumulators |
//! |---|---|---|
//! | `avx512` | 8 x 32 (two zmm) | 16 zmm |
//! | `avx2` | 6 x 16 (two ymm) | 12 ymm |
//! | `neon` | 8 x 8 (two q), 4 `k` per `x` load, by-lane FMLA | 16 q |
//! | `generic` | 4 x 8, scalar (the reference the others are tested against) | |
//!
//! Selection mirrors the sparse kernels: [`selected`] is [`best`] (the fastest kernel
//! this CPU runs that passes its start-up self-test against `generic`), unless
//! `MASKD_DENSE_KERNEL` forces one, and a forced kernel this CPU cannot run, or that
//! fails its self-test, is an error. Rows split freely across threads (each call is
//! independent and allocation-free); columns split by whole panels
//! ([`PackedGemm::run_column_parts`]).
//!
//! Summation order: every output is its bias plus the products in ascending `k`, in
//! f32, whatever the kernel, tile or split; SIMD kernels use FMA, `generic` a
//! multiply then an add, so they differ from it by rounding only.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

mod error;
mod generic;
mod pack;
mod selftest;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use error::DenseError;
use pack::Panels;

/// Environment variable that forces a dense kernel: `generic`, `avx2`, `avx512` or `neon`.
pub const DENSE_KERNEL_ENV: &str = "MASKD_DENSE_KERNEL";

/// Packed weight bytes per block of panels: half of the smallest L2 maskd targets
/// (256 KiB per core on Cortex-A78AE, 1-2 MiB on Zen 4 and Xeon), leaving the rest
/// for the input rows and the output tile.
const COLUMN_BLOCK_BYTES: usize = 128 * 1024;

/// The dense kernel families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenseKind {
    /// Safe scalar code, every CPU.
    Generic,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// aarch64 NEON (baseline there).
    Neon,
}

impl DenseKind {
    pub const ALL: [DenseKind; 4] = [
        DenseKind::Generic,
        DenseKind::Avx2,
        DenseKind::Avx512,
        DenseKind::Neon,
    ];

    /// The knob spelling.
    pub fn name(self) -> &'static str {
        match self {
            DenseKind::Generic => "generic",
            DenseKind::Avx2 => "avx2",
            DenseKind::Avx512 => "avx512",
            DenseKind::Neon => "neon",
        }
    }

    /// Parses the knob spelling (case-insensitive).
    pub fn from_name(name: &str) -> Result<DenseKind, DenseError> {
        DenseKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| DenseError::UnknownKernel {
                requested: name.to_string(),
            })
    }

    /// `(MR, NR)`: rows and columns of the register tile.
    pub fn tile(self) -> (usize, usize) {
        match self {
            DenseKind::Generic => (generic::MR, generic::NR),
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx2 => (x86::avx2::MR, x86::avx2::NR),
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx512 => (x86::avx512::MR, x86::avx512::NR),
            #[cfg(target_arch = "aarch64")]
            DenseKind::Neon => (aarch64::MR, aarch64::NR),
            #[allow(unreachable_patterns)]
            _ => (generic::MR, generic::NR),
        }
    }

    /// Ok when this build and this CPU can run the kernel.
    pub fn check_available(self) -> Result<(), DenseError> {
        let missing = |reason: &str| {
            Err(DenseError::KernelUnavailable {
                kernel: self.name(),
                reason: reason.to_string(),
            })
        };
        match self {
            DenseKind::Generic => Ok(()),
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx2 => {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Ok(())
                } else {
                    missing("this CPU lacks AVX2 or FMA")
                }
            }
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx512 => {
                if is_x86_feature_detected!("avx512f") {
                    Ok(())
                } else {
                    missing("this CPU lacks AVX-512F")
                }
            }
            #[cfg(target_arch = "aarch64")]
            DenseKind::Neon => Ok(()),
            #[allow(unreachable_patterns)]
            _ => missing(&format!(
                "not built for this architecture ({})",
                std::env::consts::ARCH
            )),
        }
    }
}

/// The fastest dense kernel this CPU runs that passes its self-test.
pub fn best() -> DenseKind {
    pick().0
}

fn pick() -> (DenseKind, Vec<DenseError>) {
    let mut skipped = Vec::new();
    for kind in [DenseKind::Avx512, DenseKind::Avx2, DenseKind::Neon] {
        if kind.check_available().is_err() {
            continue;
        }
        match selftest::check(kind) {
            Ok(()) => return (kind, skipped),
            Err(e) => skipped.push(e),
        }
    }
    (DenseKind::Generic, skipped)
}

struct Selection {
    kind: DenseKind,
    skipped: Vec<DenseError>,
}

fn selection() -> &'static Result<Selection, DenseError> {
    static SELECTED: OnceLock<Result<Selection, DenseError>> = OnceLock::new();
    SELECTED.get_or_init(|| select_from(std::env::var(DENSE_KERNEL_ENV).ok().as_deref()))
}

fn select_from(knob: Option<&str>) -> Result<Selection, DenseError> {
    match knob.map(str::trim) {
        None | Some("") => {
            let (kind, skipped) = pick();
            Ok(Selection { kind, skipped })
        }
        Some(name) => {
            let kind = DenseKind::from_name(name)?;
            kind.check_available()?;
            selftest::check(kind)?;
            Ok(Selection {
                kind,
                skipped: Vec::new(),
            })
        }
    }
}

/// The kernel [`PackedGemm::new`] uses: `MASKD_DENSE_KERNEL` if set, else [`best`];
/// decided once per process. A bad forced kernel is an error on every call, so the
/// daemon refuses to start rather than run something other than what was asked.
pub fn selected() -> Result<DenseKind, DenseError> {
    selection().as_ref().map(|s| s.kind).map_err(Clone::clone)
}

/// Faster kernels this CPU has that [`selected`] skipped because their self-test
/// failed, for the caller to log.
pub fn skipped() -> Vec<DenseError> {
    selection()
        .as_ref()
        .map(|s| s.skipped.clone())
        .unwrap_or_default()
}

/// Most parts of a column split.
const MAX_PARTS: usize = 64;

/// `y`'s pointer, shared by the parts of a column split that write disjoint columns.
struct SyncPtr(*mut f32);

// SAFETY: only `run_column_parts` makes one, whose parts write disjoint columns.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method, not `.0`: a closure would capture the bare (non-`Sync`) field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Dense weights packed once for one kernel.
#[derive(Clone)]
pub struct PackedGemm {
    kind: DenseKind,
    name: String,
    panels: Panels,
}

impl std::fmt::Debug for PackedGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedGemm")
            .field("k", &self.k())
            .field("n", &self.n())
            .field("kernel", &self.name)
            .finish()
    }
}

impl PackedGemm {
    /// Packs `w` (row-major `W[K, N]`) and an optional bias of `N` values for the
    /// [`selected`] kernel.
    pub fn new(
        w: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> Result<PackedGemm, DenseError> {
        Self::with_kernel(w, k, n, bias, selected()?)
    }

    /// Packs for exactly `kind`; an error if this CPU cannot run it.
    pub fn with_kernel(
        w: &[f32],
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
        kind: DenseKind,
    ) -> Result<PackedGemm, DenseError> {
        if k == 0 || n == 0 || w.len() != k * n {
            return Err(DenseError::Shape { len: w.len(), k, n });
        }
        if let Some(b) = bias {
            if b.len() != n {
                return Err(DenseError::BiasLength { len: b.len(), n });
            }
        }
        kind.check_available()?;
        let (mr, nr) = kind.tile();
        Ok(PackedGemm {
            kind,
            name: format!("{}_gemm_f32_{mr}x{nr}", kind.name()),
            panels: Panels::new(w, k, n, bias, nr),
        })
    }

    /// `y[T, N] = x[T, K] · W + bias`; `x` holds `t * K` floats, `y` `t * N`, both
    /// row-major and contiguous. `y` is overwritten. No allocation.
    ///
    /// # Panics
    /// If the slice lengths do not match `t`.
    pub fn run(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.check_lengths(x, t, y);
        // SAFETY: lengths checked; the panels cover every column.
        unsafe { self.run_panels(x.as_ptr(), t, y.as_mut_ptr(), 0..self.panels.count()) }
    }

    /// Output columns per unit of a column split: the panel width.
    pub fn column_unit(&self) -> usize {
        self.panels.nr()
    }

    /// [`run`](Self::run) with the columns cut into at most `parts` ranges of whole
    /// panels, each computed over all `t` rows by one call of `each(i)`; `par(parts,
    /// each)` runs them (typically on a thread pool); a part it skips runs here
    /// afterwards, one it runs twice is computed once. Why: a few rows (a prompt's
    /// embedding, a pruned token set) split by rows leave threads with partial tiles.
    ///
    /// # Panics
    /// If the slice lengths do not match `t`.
    pub fn run_column_parts(
        &self,
        x: &[f32],
        t: usize,
        y: &mut [f32],
        parts: usize,
        par: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
    ) {
        self.check_lengths(x, t, y);
        let units = self.panels.count();
        let per = units.div_ceil(parts.clamp(1, MAX_PARTS));
        let parts = units.div_ceil(per);
        if t == 0 || parts == 1 {
            return self.run(x, t, y);
        }
        let claimed: [AtomicBool; MAX_PARTS] = std::array::from_fn(|_| AtomicBool::new(false));
        let yp = SyncPtr(y.as_mut_ptr());
        let each = |i: usize| {
            if i >= parts || claimed[i].swap(true, Ordering::AcqRel) {
                return;
            }
            // SAFETY: `y` is borrowed mutably for this whole call and `par` cannot keep
            // `each` past it; parts cover disjoint panels, each runs at most once
            // (`claimed`), and a panel's tiles write only its own columns.
            unsafe { self.run_panels(x.as_ptr(), t, yp.get(), i * per..((i + 1) * per).min(units)) }
        };
        par(parts, &each);
        for i in 0..parts {
            each(i);
        }
    }

    /// Panels `panels` (columns `NR * start .. min(NR * end, N)`) over all `t` rows.
    ///
    /// # Safety
    /// `x` holds `t * K` floats and `y` `t * N`; nothing else touches those columns
    /// of `y` meanwhile.
    unsafe fn run_panels(&self, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
        if t == 0 || panels.is_empty() {
            return;
        }
        // The kernels walk rows outside panels, so every row tile streams all of its
        // panels again: for weights larger than L2 (fc1/fc2 of the default model are
        // 1 MiB) that stream comes from L3, which two threads then share. Blocks of
        // panels small enough to stay in L2 are instead read from memory once per call.
        let per = (COLUMN_BLOCK_BYTES / (self.k().max(1) * self.panels.nr() * 4)).max(1);
        let mut first = panels.start;
        while first < panels.end {
            let end = (first + per).min(panels.end);
            // SAFETY: a sub-range of the caller's panels, under the same contract.
            unsafe { self.run_block(x, t, y, first..end) };
            first = end;
        }
    }

    /// [`run_panels`](Self::run_panels) on one block of panels, by the selected kernel.
    ///
    /// # Safety
    /// As for `run_panels`.
    unsafe fn run_block(&self, x: *const f32, t: usize, y: *mut f32, panels: Range<usize>) {
        match self.kind {
            DenseKind::Generic => generic::run(&self.panels, x, t, y, panels),
            // SAFETY (all below): `with_kernel` checked the CPU features; the rest is
            // the caller's.
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx2 => x86::avx2::run(&self.panels, x, t, y, panels),
            #[cfg(target_arch = "x86_64")]
            DenseKind::Avx512 => x86::avx512::run(&self.panels, x, t, y, panels),
            #[cfg(target_arch = "aarch64")]
            DenseKind::Neon => aarch64::run(&self.panels, x, t, y, panels),
            #[allow(unreachable_patterns)]
            _ => unreachable!("with_kernel refused {:?}", self.kind),
        }
    }

    fn check_lengths(&self, x: &[f32], t: usize, y: &[f32]) {
        let (k, n) = (self.k(), self.n());
        assert_eq!(x.len(), t * k, "x must hold t*K = {t}*{k} floats");
        assert_eq!(y.len(), t * n, "y must hold t*N = {t}*{n} floats");
    }

    pub fn kernel(&self) -> DenseKind {
        self.kind
    }

    /// The precise kernel, e.g. `avx512_gemm_f32_8x32`.
    pub fn kernel_name(&self) -> &str {
        &self.name
    }

    /// Rows per register tile: the best granularity for splitting rows.
    pub fn row_block(&self) -> usize {
        self.kind.tile().0
    }

    pub fn k(&self) -> usize {
        self.panels.k()
    }

    pub fn n(&self) -> usize {
        self.panels.n()
    }

    /// The weights as given, row-major `W[K, N]` (unpacked from the panels).
    pub fn weights(&self) -> Vec<f32> {
        self.panels.unpack()
    }

    /// The bias as given, `None` when there was none.
    pub fn bias(&self) -> Option<&[f32]> {
        self.panels.bias()
    }

    /// Bytes of the packed weights and bias in memory.
    pub fn packed_bytes(&self) -> usize {
        self.panels.bytes()
    }
}
