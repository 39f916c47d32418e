//! Kernel selection and the kernel-ready weight type [`PackedSpmm`].
//!
//! Dispatch follows tract's `generic()` / `best()`: [`generic`] is the safe scalar
//! kernel every build has; [`best`] overlays what the CPU offers (AVX-512F, else
//! the AVX2+FMA token-SIMD kernel `avx2tok` on x86-64; NEON on aarch64). The older
//! AVX2 column-SIMD kernel stays selectable as `avx2`, and the NEON port of the token
//! kernel, whose speed is unmeasured, as `neontok`. [`selected`] is what [`PackedSpmm::new`]
//! uses: `best()`, unless the `MASKD_SPARSE_KERNEL` environment variable forces a
//! kernel (read once per process). Forcing a kernel the CPU cannot run is an error,
//! not a silent fallback, so an A/B run never measures the wrong thing. Either way a
//! SIMD kernel must first agree with the scalar kernel on a small probe (`selftest`):
//! auto selection skips one that does not ([`skipped_kernels`] says why), a forced
//! one is refused.
//!
//! A SIMD kernel that does not cover a pattern (the column-SIMD x86 kernels need
//! `M` to divide their lane count) leaves that matrix to the generic kernel;
//! [`PackedSpmm::kernel_name`] tells which kernel a matrix really runs on.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::{NmMatrix, NmPattern, SparseError};

pub(crate) mod generic;
mod selftest;

#[cfg(any(target_arch = "x86_64", test))]
pub(crate) mod colsimd;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tok_pack;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_tok;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
#[cfg(target_arch = "aarch64")]
mod aarch64_tok;

/// Environment variable that forces a kernel: `generic`, `avx2`, `avx2tok`, `avx512`,
/// `neon` or `neontok`.
/// Unset or empty means [`best`].
pub const KERNEL_ENV: &str = "MASKD_SPARSE_KERNEL";

/// The kernel families. Which ones can run depends on the build target and CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// Safe scalar code, every pattern, every CPU.
    Generic,
    /// x86-64 AVX2 + FMA, 8-column permute kernel; patterns with `M` in {2, 4, 8}.
    Avx2,
    /// x86-64 AVX2 + FMA, token-SIMD kernel (broadcast weight, no permutes); every
    /// pattern.
    Avx2Tok,
    /// x86-64 AVX-512F, 16-column permute kernel; patterns with `M` in {2, 4, 8, 16}.
    Avx512,
    /// aarch64 NEON, token-SIMD kernel with by-element FMA; every pattern.
    Neon,
    /// aarch64 NEON, the AVX2 token kernel's design (48-row blocks, shared slots);
    /// every pattern. Speed unmeasured (no ARM machine), so opt-in.
    NeonTok,
}

impl KernelKind {
    pub const ALL: [KernelKind; 6] = [
        KernelKind::Generic,
        KernelKind::Avx2,
        KernelKind::Avx2Tok,
        KernelKind::Avx512,
        KernelKind::Neon,
        KernelKind::NeonTok,
    ];

    /// The knob spelling: `generic`, `avx2`, `avx2tok`, `avx512`, `neon`, `neontok`.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Generic => "generic",
            KernelKind::Avx2 => "avx2",
            KernelKind::Avx2Tok => "avx2tok",
            KernelKind::Avx512 => "avx512",
            KernelKind::Neon => "neon",
            KernelKind::NeonTok => "neontok",
        }
    }

    /// Parses the knob spelling (case-insensitive).
    pub fn from_name(name: &str) -> Result<KernelKind, SparseError> {
        KernelKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| SparseError::UnknownKernel {
                requested: name.to_string(),
            })
    }

    /// Ok when this build and this CPU can run the kernel.
    pub fn check_available(self) -> Result<(), SparseError> {
        let missing = |reason: &str| {
            Err(SparseError::KernelUnavailable {
                kernel: self.name(),
                reason: reason.to_string(),
            })
        };
        match self {
            KernelKind::Generic => Ok(()),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 | KernelKind::Avx2Tok => {
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    Ok(())
                } else {
                    missing("this CPU lacks AVX2 or FMA")
                }
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => {
                if is_x86_feature_detected!("avx512f") {
                    Ok(())
                } else {
                    missing("this CPU lacks AVX-512F")
                }
            }
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon | KernelKind::NeonTok => Ok(()), // NEON is baseline on aarch64
            #[allow(unreachable_patterns)]
            _ => missing(&format!(
                "not built for this architecture ({})",
                std::env::consts::ARCH
            )),
        }
    }

    /// Whether this kernel covers `pattern` (availability aside).
    pub fn supports(self, pattern: NmPattern) -> bool {
        match self {
            KernelKind::Generic | KernelKind::Avx2Tok | KernelKind::Neon | KernelKind::NeonTok => {
                true
            }
            KernelKind::Avx2 => 8 % pattern.m() == 0,
            KernelKind::Avx512 => 16 % pattern.m() == 0,
        }
    }
}

/// The always-available scalar kernel.
pub fn generic() -> KernelKind {
    KernelKind::Generic
}

/// The fastest kernel this CPU can run and that passes its self-test (probed on
/// each call; ~7 ms in a release build on Zen 3). On AVX2 `avx2tok` comes before `avx2`: side
/// by side on Zen 3 it is faster over the default model's 12 GEMMs (median 1.42-1.50x
/// vs 1.28-1.37x of tract), though `avx2` is ahead by ~10 % at T = 49.
pub fn best() -> KernelKind {
    pick().0
}

/// [`best`], with the errors of the faster kernels it passed over.
fn pick() -> (KernelKind, Vec<SparseError>) {
    let mut skipped = Vec::new();
    for kind in [
        KernelKind::Avx512,
        KernelKind::Avx2Tok,
        KernelKind::Avx2,
        KernelKind::Neon,
    ] {
        if kind.check_available().is_err() {
            continue;
        }
        match selftest::check(kind) {
            Ok(()) => return (kind, skipped),
            Err(e) => skipped.push(e),
        }
    }
    (KernelKind::Generic, skipped)
}

/// What [`selected`] decided, once per process.
struct Selection {
    kind: KernelKind,
    /// Kernels this CPU has that auto selection skipped, with why.
    skipped: Vec<SparseError>,
}

fn selection() -> &'static Result<Selection, SparseError> {
    static SELECTED: OnceLock<Result<Selection, SparseError>> = OnceLock::new();
    SELECTED.get_or_init(|| select_from(std::env::var(KERNEL_ENV).ok().as_deref()))
}

/// The kernel [`PackedSpmm::new`] uses: `MASKD_SPARSE_KERNEL` if set, else [`best`].
/// Decided once per process; an unknown, unavailable or failing forced kernel is an
/// error (every call returns it), so the daemon can refuse to start.
pub fn selected() -> Result<KernelKind, SparseError> {
    selection().as_ref().map(|s| s.kind).map_err(Clone::clone)
}

/// The faster kernels this CPU has that [`selected`] passed over because their
/// self-test failed (empty when none did, or when a kernel was forced), for the
/// caller to log: running on a slower kernel should not go unnoticed.
pub fn skipped_kernels() -> Vec<SparseError> {
    selection()
        .as_ref()
        .map(|s| s.skipped.clone())
        .unwrap_or_default()
}

fn select_from(knob: Option<&str>) -> Result<Selection, SparseError> {
    match knob.map(str::trim) {
        None | Some("") => {
            let (kind, skipped) = pick();
            Ok(Selection { kind, skipped })
        }
        Some(name) => {
            let kind = KernelKind::from_name(name)?;
            kind.check_available()?;
            selftest::check(kind)?;
            Ok(Selection {
                kind,
                skipped: Vec::new(),
            })
        }
    }
}

/// Name of the [`selected`] kernel family (`generic`, `avx2`, `avx2tok`, `avx512`, `neon`).
pub fn kernel_name() -> Result<&'static str, SparseError> {
    selected().map(KernelKind::name)
}

#[derive(Clone)]
enum Imp {
    Generic(generic::Packed),
    /// In-lane `vpermilps` kernel, `M` divides 4.
    #[cfg(target_arch = "x86_64")]
    Avx2(colsimd::Packed),
    /// Cross-lane `vpermps` kernel, `M = 8`.
    #[cfg(target_arch = "x86_64")]
    Avx2Cross(colsimd::Packed),
    #[cfg(target_arch = "x86_64")]
    Avx2Tok(x86_tok::Packed),
    #[cfg(target_arch = "x86_64")]
    Avx512(colsimd::Packed),
    #[cfg(target_arch = "aarch64")]
    Neon(aarch64::Packed),
    #[cfg(target_arch = "aarch64")]
    NeonTok(tok_pack::Packed),
    #[cfg(test)]
    Emu(Emu, colsimd::Packed),
}

/// Which array-backed emulation of the x86 kernels (tests only).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emu {
    Lanes8,
    Lanes8InLane,
    Lanes16,
}

/// Most parts of a column split ([`PackedSpmm::run_column_parts`]).
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

/// N:M weights packed once for one kernel, ready to multiply.
///
/// `run` computes `y[T, N] = x[T, K] · W + bias` where `x` and `y` are row-major and
/// contiguous (row stride `K` and `N`). To split work, hand disjoint row ranges of
/// `x` / `y` to different threads (each call is independent and allocation-free),
/// or use [`run_parallel`](Self::run_parallel).
#[derive(Clone)]
pub struct PackedSpmm {
    k: usize,
    n: usize,
    pattern: NmPattern,
    kind: KernelKind,
    name: String,
    row_block: usize,
    imp: Imp,
}

impl std::fmt::Debug for PackedSpmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedSpmm")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("pattern", &self.pattern)
            .field("kernel", &self.name)
            .finish()
    }
}

impl PackedSpmm {
    /// Packs `m` (and an optional bias of `N` values) for the [`selected`] kernel,
    /// or for the generic kernel when the selected one does not cover the pattern.
    /// Fails only if `MASKD_SPARSE_KERNEL` is invalid or the bias length is wrong.
    pub fn new(m: &NmMatrix, bias: Option<&[f32]>) -> Result<PackedSpmm, SparseError> {
        let kind = selected()?;
        let kind = if kind.supports(m.pattern()) {
            kind
        } else {
            KernelKind::Generic
        };
        Self::with_kernel(m, bias, kind)
    }

    /// Packs `m` for exactly `kind`; an error if this CPU cannot run it or it does
    /// not cover the pattern.
    pub fn with_kernel(
        m: &NmMatrix,
        bias: Option<&[f32]>,
        kind: KernelKind,
    ) -> Result<PackedSpmm, SparseError> {
        if let Some(b) = bias {
            if b.len() != m.n() {
                return Err(SparseError::BiasLength {
                    len: b.len(),
                    n: m.n(),
                });
            }
        }
        kind.check_available()?;
        if !kind.supports(m.pattern()) {
            return Err(SparseError::KernelUnavailable {
                kernel: kind.name(),
                reason: format!("pattern {} not covered", m.pattern()),
            });
        }
        let (imp, tile) = match kind {
            KernelKind::Generic => (Imp::Generic(generic::Packed::new(m, bias)), None),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => {
                let packed = colsimd::Packed::new(m, bias, x86::avx2::LANES).expect("M divides 8");
                if 4 % m.pattern().m() == 0 {
                    let tile = (x86::avx2::ROWS, x86::avx2::COL_VECS * x86::avx2::LANES);
                    (Imp::Avx2(packed), Some(tile))
                } else {
                    let tile = (x86::avx2_cross::ROWS, x86::avx2_cross::COL_VECS * 8);
                    (Imp::Avx2Cross(packed), Some(tile))
                }
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2Tok => (
                Imp::Avx2Tok(x86_tok::Packed::new(m, bias)),
                Some((x86_tok::ROWS, x86_tok::COLS)),
            ),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => (
                Imp::Avx512(
                    colsimd::Packed::new(m, bias, x86::avx512::LANES).expect("M divides 16"),
                ),
                Some((
                    x86::avx512::ROWS,
                    x86::avx512::COL_VECS * x86::avx512::LANES,
                )),
            ),
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => (
                Imp::Neon(aarch64::Packed::new(m, bias)),
                Some((aarch64::ROWS, aarch64::COLS)),
            ),
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonTok => (
                Imp::NeonTok(tok_pack::Packed::new(m, bias)),
                Some((aarch64_tok::ROWS, aarch64_tok::COLS)),
            ),
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_available refused {kind:?}"),
        };
        Ok(Self::assemble(m, kind, imp, tile))
    }

    fn assemble(
        m: &NmMatrix,
        kind: KernelKind,
        imp: Imp,
        tile: Option<(usize, usize)>,
    ) -> PackedSpmm {
        let p = m.pattern();
        let op = if p.m() < 10 {
            format!("spmm{}{}", p.n(), p.m())
        } else {
            format!("spmm{}_{}", p.n(), p.m())
        };
        let name = match tile {
            Some((r, c)) => format!("{}_{op}_f32_{r}x{c}", kind.name()),
            None => format!("{}_{op}_f32", kind.name()),
        };
        PackedSpmm {
            k: m.k(),
            n: m.n(),
            pattern: p,
            kind,
            name,
            row_block: tile.map_or(1, |t| t.0),
            imp,
        }
    }

    /// Array-backed build of the x86 kernel logic, for tests: `Emu::Lanes8`,
    /// `Lanes8InLane` (the AVX2 kernel's `vpermilps` scheme) or `Lanes16`.
    #[cfg(test)]
    pub(crate) fn emulated(m: &NmMatrix, bias: Option<&[f32]>, emu: Emu) -> Option<PackedSpmm> {
        use colsimd::emu::{emu16, emu8, emu8_lane};
        let lanes = if emu == Emu::Lanes16 { 16 } else { 8 };
        if emu == Emu::Lanes8InLane && 4 % m.pattern().m() != 0 {
            return None;
        }
        let packed = colsimd::Packed::new(m, bias, lanes)?;
        let tile = match emu {
            Emu::Lanes8 => (emu8::ROWS, emu8::COL_VECS * emu8::LANES),
            Emu::Lanes8InLane => (emu8_lane::ROWS, emu8_lane::COL_VECS * emu8_lane::LANES),
            Emu::Lanes16 => (emu16::ROWS, emu16::COL_VECS * emu16::LANES),
        };
        Some(Self::assemble(
            m,
            KernelKind::Generic,
            Imp::Emu(emu, packed),
            Some(tile),
        ))
    }

    /// `y[T, N] = x[T, K] · W + bias`. `x` holds `t * K` floats (row stride `K`),
    /// `y` holds `t * N` floats (row stride `N`); `y` is overwritten. No allocation.
    ///
    /// # Panics
    /// If the slice lengths do not match `t`.
    pub fn run(&self, x: &[f32], t: usize, y: &mut [f32]) {
        self.check_lengths(x, t, y);
        if t == 0 {
            return;
        }
        match &self.imp {
            Imp::Generic(p) => p.run(x, y),
            // SAFETY: lengths checked above; `with_kernel` checked the CPU features
            // and packed `p` with this backend's lane count.
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(p) => unsafe { x86::avx2::run(p, x.as_ptr(), t, y.as_mut_ptr()) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Cross(p) => unsafe { x86::avx2_cross::run(p, x.as_ptr(), t, y.as_mut_ptr()) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Tok(p) => unsafe {
                x86_tok::run(p, x.as_ptr(), t, y.as_mut_ptr(), 0..p.noct())
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(p) => unsafe { x86::avx512::run(p, x.as_ptr(), t, y.as_mut_ptr()) },
            // SAFETY: as above; NEON is baseline on aarch64.
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(p) => unsafe { aarch64::run(p, x.as_ptr(), t, y.as_mut_ptr()) },
            // SAFETY: as above.
            #[cfg(target_arch = "aarch64")]
            Imp::NeonTok(p) => unsafe {
                aarch64_tok::run(p, x.as_ptr(), t, y.as_mut_ptr(), 0..p.noct())
            },
            // SAFETY: plain Rust arrays; lengths checked above.
            #[cfg(test)]
            Imp::Emu(emu, p) => unsafe {
                match emu {
                    Emu::Lanes8 => colsimd::emu::emu8::run(p, x.as_ptr(), t, y.as_mut_ptr()),
                    Emu::Lanes8InLane => {
                        colsimd::emu::emu8_lane::run(p, x.as_ptr(), t, y.as_mut_ptr())
                    }
                    Emu::Lanes16 => colsimd::emu::emu16::run(p, x.as_ptr(), t, y.as_mut_ptr()),
                }
            },
        }
    }

    /// [`run`](Self::run) split by rows over `threads` threads (the calling thread
    /// takes the last share), with `std::thread::scope`. Row shares are multiples of
    /// [`row_block`](Self::row_block). Spawning costs some 10-30 µs per thread, which
    /// small products do not repay: callers with a pool should split rows themselves.
    pub fn run_parallel(&self, x: &[f32], t: usize, y: &mut [f32], threads: usize) {
        let threads = threads.max(1);
        let rb = self.row_block;
        let share = t.div_ceil(threads).div_ceil(rb) * rb;
        if threads == 1 || share >= t {
            return self.run(x, t, y);
        }
        self.check_lengths(x, t, y);
        std::thread::scope(|s| {
            let mut xs = x
                .chunks(share * self.k)
                .zip(y.chunks_mut(share * self.n))
                .peekable();
            while let Some((xc, yc)) = xs.next() {
                let rows = xc.len() / self.k;
                if xs.peek().is_some() {
                    s.spawn(move || self.run(xc, rows, yc));
                } else {
                    self.run(xc, rows, yc);
                }
            }
        });
    }

    /// Output columns per unit of a column split ([`run_column_parts`](Self::run_column_parts)):
    /// 8 for the token kernels, `None` for kernels that only split by rows.
    pub fn column_unit(&self) -> Option<usize> {
        match &self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Tok(_) => Some(tok_pack::OCT),
            #[cfg(target_arch = "aarch64")]
            Imp::NeonTok(_) => Some(tok_pack::OCT),
            _ => None,
        }
    }

    /// [`run`](Self::run), with the output columns cut into at most `parts` ranges of
    /// whole [`column_unit`](Self::column_unit)s, each computed over all `t` rows by one
    /// call of `each(i)`, `i < parts`. `par(parts, each)` runs them, typically on a
    /// thread pool (`(0..parts).into_par_iter().for_each(each)` with rayon); a part it
    /// skips is run here afterwards, and a part it runs twice is computed once. Every
    /// output has the same bits as with `run`.
    ///
    /// Why: split by rows, `T = 49` on 2 threads leaves each thread 3-4 vectors of 8
    /// rows, blocks that FMA latency bounds; split by columns, every part keeps
    /// the full 48-row blocks (the input panel is transposed once per part).
    /// Kernels without a column unit run `run` on this thread. No allocation.
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
        let Some(unit) = self.column_unit() else {
            return self.run(x, t, y);
        };
        self.check_lengths(x, t, y);
        let units = self.n.div_ceil(unit);
        let per = units.div_ceil(parts.clamp(1, MAX_PARTS));
        let parts = units.div_ceil(per);
        if t == 0 || parts == 1 {
            return self.run(x, t, y);
        }
        // Each part claims its columns once, so even a `par` that calls `each(i)`
        // twice at once cannot have two threads writing the same outputs.
        let claimed: [AtomicBool; MAX_PARTS] = std::array::from_fn(|_| AtomicBool::new(false));
        let yp = SyncPtr(y.as_mut_ptr());
        let each = |i: usize| {
            if i >= parts || claimed[i].swap(true, Ordering::AcqRel) {
                return;
            }
            let octs = i * per..((i + 1) * per).min(units);
            // SAFETY: `y` is borrowed mutably for this whole call, and `par` cannot
            // keep `each` past it; the parts' unit ranges are disjoint and each is
            // run at most once (`claimed`), and the kernels write only the columns
            // of their units; lengths are checked above.
            unsafe { self.run_units(x.as_ptr(), t, yp.get(), octs) }
        };
        par(parts, &each);
        for i in 0..parts {
            each(i);
        }
    }

    /// The token kernels on units (octets of columns) `octs` only.
    ///
    /// # Safety
    /// `x` holds `t * K` floats, `y` holds `t * N`; nothing else accesses columns
    /// `8 * octs.start..8 * octs.end` of `y` meanwhile.
    unsafe fn run_units(&self, x: *const f32, t: usize, y: *mut f32, octs: Range<usize>) {
        match &self.imp {
            // SAFETY: `with_kernel` checked the CPU features; the rest is the caller's.
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Tok(p) => x86_tok::run(p, x, t, y, octs),
            // SAFETY: as above; NEON is baseline on aarch64.
            #[cfg(target_arch = "aarch64")]
            Imp::NeonTok(p) => aarch64_tok::run(p, x, t, y, octs),
            _ => unreachable!("column_unit() is Some only for the token kernels"),
        }
    }

    /// Panics unless `x` holds `t * K` floats and `y` holds `t * N`.
    fn check_lengths(&self, x: &[f32], t: usize, y: &[f32]) {
        assert_eq!(
            x.len(),
            t * self.k,
            "x must hold t*K = {t}*{} floats",
            self.k
        );
        assert_eq!(
            y.len(),
            t * self.n,
            "y must hold t*N = {t}*{} floats",
            self.n
        );
    }

    /// The kernel family this matrix runs on.
    pub fn kernel(&self) -> KernelKind {
        self.kind
    }

    /// The precise kernel: ISA, op with pattern, type and register tile, e.g.
    /// `avx512_spmm24_f32_6x32` (6 rows x 32 columns) or `generic_spmm24_f32`.
    pub fn kernel_name(&self) -> &str {
        &self.name
    }

    /// Rows per register block: the best granularity for splitting rows.
    pub fn row_block(&self) -> usize {
        self.row_block
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn pattern(&self) -> NmPattern {
        self.pattern
    }

    /// Bytes of the packed weights and bias in memory (kernel layouts pad).
    pub fn packed_bytes(&self) -> usize {
        match &self.imp {
            Imp::Generic(p) => p.bytes(),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(p) | Imp::Avx2Cross(p) | Imp::Avx512(p) => p.bytes(),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Tok(p) => p.bytes(),
            #[cfg(target_arch = "aarch64")]
            Imp::Neon(p) => p.bytes(),
            #[cfg(target_arch = "aarch64")]
            Imp::NeonTok(p) => p.bytes(),
            #[cfg(test)]
            Imp::Emu(_, p) => p.bytes(),
        }
    }

    /// For the token kernel, the fraction of its slots that feed both columns of a
    /// pair from one input load (1.0 when pairs of columns share their patterns);
    /// `None` for kernels without shared slots.
    pub fn shared_fraction(&self) -> Option<f64> {
        match &self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2Tok(p) => Some(p.shared_fraction()),
            #[cfg(target_arch = "aarch64")]
            Imp::NeonTok(p) => Some(p.shared_fraction()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
