//! Fused multi-head self-attention over a packed `qkv` tensor: which kernel runs, and
//! the dispatch to the per-architecture kernels.
//!
//! `qkv` is `[batch, tokens, 3, heads, dim]` row-major (the qkv projection's output,
//! unsplit) and the result is `[batch, tokens, heads, dim]` (what the output
//! projection reads), so neither side needs a transpose or a copy per head.
//!
//! Every SIMD kernel must agree with the f64 reference on a small probe before it is
//! chosen ([`super::selftest`]): a kernel that a miscompile or a CPU erratum made wrong
//! would not crash, it would publish wrong masks. Auto selection skips such a kernel
//! (logged); a forced one is refused.

use std::sync::OnceLock;

#[cfg(target_arch = "aarch64")]
use super::aarch64;
use super::geometry::Geometry;
use super::reference;
use super::selftest;
#[cfg(target_arch = "x86_64")]
use super::{x86, x86_512};

/// Forces the attention kernel: `avx512`, `avx2`, `neon`, or `tract` (keep tract's
/// nodes). Unset or empty: the fastest kernel this CPU has that passes its self-test.
pub const KERNEL_ENV: &str = "MASKD_ATTENTION_KERNEL";

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// f64-accumulating scalar code: the reference the SIMD kernels are checked
    /// against. Never selected for a graph: tract's own SIMD matmuls beat it.
    Reference,
    /// AVX2 + FMA, 6 queries × 16 keys per register tile.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F, 14 queries × 32 keys per register tile.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// NEON, 8 queries × 12 keys per register tile.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// Why a forced kernel (`MASKD_ATTENTION_KERNEL`) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{KERNEL_ENV}={0:?}: unknown attention kernel (avx512, avx2, neon or tract)")]
    Unknown(String),
    #[error("{KERNEL_ENV}={0}: this CPU does not have it")]
    Unavailable(&'static str),
    #[error("attention kernel {kernel} failed its self-test: {detail}")]
    SelfTest {
        kernel: &'static str,
        detail: String,
    },
}

impl Kind {
    /// The SIMD kernels of this architecture, fastest first.
    pub(super) const CANDIDATES: &'static [Kind] = &[
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2,
        #[cfg(target_arch = "aarch64")]
        Kind::Neon,
    ];

    /// The kernel the graphs use ([`Kind::selected`]), or `None` where tract's nodes
    /// stay: no SIMD kernel on this CPU passed its self-test, the knob says `tract`, or
    /// the knob is invalid (then [`super::apply`] reports [`Kind::selected`]'s error).
    pub fn best() -> Option<Kind> {
        Kind::selected().ok().flatten()
    }

    /// `MASKD_ATTENTION_KERNEL` if set, else the fastest kernel this CPU has that
    /// passes its self-test; decided once per process.
    pub fn selected() -> Result<Option<Kind>, SelectError> {
        static SELECTED: OnceLock<Result<Option<Kind>, SelectError>> = OnceLock::new();
        SELECTED
            .get_or_init(|| {
                let knob = std::env::var(KERNEL_ENV).ok();
                select(knob.as_deref(), Kind::CANDIDATES, &|k| k.self_test())
            })
            .clone()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => "avx512",
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => "neon",
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Kind::Reference => true,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => x86::available(),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => x86_512::available(),
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => aarch64::available(),
        }
    }

    /// Whether this kernel handles heads of width `dim`.
    pub fn supports(self, dim: usize) -> bool {
        match self {
            Kind::Reference => dim > 0,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => dim > 0 && dim.is_multiple_of(x86::LANES),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => dim > 0 && dim.is_multiple_of(x86_512::LANES),
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => dim > 0 && dim.is_multiple_of(aarch64::LANES),
        }
    }

    /// Queries per register tile: a thread's rows are best a multiple of it.
    pub fn tile_rows(self) -> usize {
        match self {
            Kind::Reference => 1,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => x86::TILE,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => x86_512::ROWS,
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => aarch64::ROWS,
        }
    }

    /// Scratch floats the kernel needs for `tokens` keys of width `dim`.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(unused_variables)
    )]
    pub fn scratch_len(self, tokens: usize, dim: usize) -> usize {
        match self {
            Kind::Reference => tokens,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => x86::scratch_len(tokens, dim),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 => x86_512::scratch_len(tokens, dim),
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => aarch64::scratch_len(tokens, dim),
        }
    }

    fn self_test(self) -> Result<(), SelectError> {
        selftest::check(&|g, scale, qkv, row0, out, recv| {
            attend_rows(self, g, scale, qkv, row0, out, recv)
        })
        .map_err(|detail| SelectError::SelfTest {
            kernel: self.name(),
            detail,
        })
    }
}

/// The selection rule, with the candidates and their check passed in (the tests pass
/// a failing one): the knob's kernel if it is available and passes, else the first
/// available candidate that passes. Skipped candidates are logged.
pub(super) fn select(
    knob: Option<&str>,
    candidates: &[Kind],
    check: &dyn Fn(Kind) -> Result<(), SelectError>,
) -> Result<Option<Kind>, SelectError> {
    match knob.map(str::trim) {
        None | Some("") => {
            for &kind in candidates.iter().filter(|k| k.available()) {
                match check(kind) {
                    Ok(()) => return Ok(Some(kind)),
                    Err(e) => log::warn!("{e}; trying the next attention kernel"),
                }
            }
            Ok(None)
        }
        Some("tract") => Ok(None),
        Some(name) => {
            let Some(&kind) = candidates.iter().find(|k| k.name() == name) else {
                return Err(SelectError::Unknown(name.to_string()));
            };
            if !kind.available() {
                return Err(SelectError::Unavailable(kind.name()));
            }
            check(kind)?;
            Ok(Some(kind))
        }
    }
}

/// Output rows `row0 ..` (flattened `batch * tokens`) of attention, as many as `out`
/// holds. `scratch` must hold [`Kind::scratch_len`] floats; `qkv` holds every row.
///
/// # Panics
/// If the slices are shorter than `g` says (the op checks shapes before calling).
/// With `received` (`g.batch * g.tokens` floats), also adds to `received[b * T + j]`
/// the probability key `j` of item `b` gets from each of these rows, summed over heads.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_in(
    kind: Kind,
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    row0: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    mut received: Option<&mut [f32]>,
) {
    assert!(
        qkv.len() >= g.rows() * g.qkv_row(),
        "qkv shorter than geometry"
    );
    assert!(
        out.len().is_multiple_of(g.out_row().max(1)),
        "partial output row"
    );
    assert!(
        row0 + out.len() / g.out_row().max(1) <= g.rows(),
        "rows past the end"
    );
    assert!(
        kind.supports(g.dim),
        "kernel does not support dim {}",
        g.dim
    );
    assert!(kind.available(), "kernel {} not on this CPU", kind.name());
    assert!(
        scratch.len() >= kind.scratch_len(g.tokens, g.dim),
        "scratch too short"
    );
    assert!(
        received.as_ref().is_none_or(|r| r.len() == g.rows()),
        "received is not batch * tokens long"
    );
    let rows = out.len() / g.out_row().max(1);
    let mut r = row0;
    // Rows are split per batch item: keys and values never cross items.
    while r < row0 + rows {
        let b = r / g.tokens;
        let i0 = r % g.tokens;
        let i1 = (g.tokens).min(i0 + (row0 + rows - r));
        let seg = &mut out[(r - row0) * g.out_row()..(r - row0 + i1 - i0) * g.out_row()];
        for h in 0..g.heads {
            let recv = received
                .as_deref_mut()
                .map(|r| &mut r[b * g.tokens..(b + 1) * g.tokens]);
            match kind {
                Kind::Reference => reference::head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv),
                // SAFETY: the CPU has AVX2 and FMA (`available()` asserted above); the
                // asserts above bound every index the kernel uses.
                #[cfg(target_arch = "x86_64")]
                Kind::Avx2 => unsafe { x86::head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv) },
                // SAFETY: the CPU has AVX-512F (`available()` asserted above); the
                // asserts above bound every index the kernel uses.
                #[cfg(target_arch = "x86_64")]
                Kind::Avx512 => unsafe {
                    x86_512::head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv)
                },
                // SAFETY: NEON (`available()` asserted above); the asserts above bound
                // every index the kernel uses.
                #[cfg(target_arch = "aarch64")]
                Kind::Neon => unsafe {
                    aarch64::head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv)
                },
            }
        }
        r += i1 - i0;
    }
}

/// [`attend_rows_in`] with its own scratch (allocated per call: tests and probes).
pub fn attend_rows(
    kind: Kind,
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    row0: usize,
    out: &mut [f32],
    received: Option<&mut [f32]>,
) {
    let mut scratch = vec![0f32; kind.scratch_len(g.tokens, g.dim)];
    attend_rows_in(kind, g, scale, qkv, row0, out, &mut scratch, received);
}

/// Every output row at once: `out` holds `g.rows() * g.out_row()` floats.
pub fn attend(
    kind: Kind,
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    out: &mut [f32],
    received: Option<&mut [f32]>,
) {
    attend_rows(kind, g, scale, qkv, 0, out, received);
}
