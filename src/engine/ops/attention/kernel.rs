//! Fused multi-head self-attention over a packed `qkv` tensor: the portable reference
//! and the dispatch to the per-architecture kernels.
//!
//! `qkv` is `[batch, tokens, 3, heads, dim]` row-major (the qkv projection's output,
//! unsplit) and the result is `[batch, tokens, heads, dim]` (what the output
//! projection reads), so neither side needs a transpose or a copy per head.

use super::geometry::Geometry;
#[cfg(target_arch = "x86_64")]
use super::x86;

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// f64-accumulating scalar code: the reference, and the path where no SIMD kernel
    /// exists.
    Reference,
    /// AVX2 + FMA, 6 queries × 16 lanes per register tile.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kind {
    /// The fastest kernel this CPU runs, if any beats tract's own graph. `None` on CPUs
    /// without one: there tract's SIMD matmuls beat the scalar reference, so the graph
    /// is better left alone.
    pub fn best() -> Option<Kind> {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Some(Kind::Avx2);
        }
        None
    }

    /// Whether this kernel handles heads of width `dim`.
    pub fn supports(self, dim: usize) -> bool {
        match self {
            Kind::Reference => dim > 0,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => dim > 0 && dim.is_multiple_of(x86::LANES),
        }
    }
}

/// Scratch floats a kernel needs for `tokens` keys of width `dim`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub fn scratch_len(kind: Kind, tokens: usize, dim: usize) -> usize {
    match kind {
        Kind::Reference => tokens,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => x86::scratch_len(tokens, dim),
    }
}

/// Output rows `row0 ..` (flattened `batch * tokens`) of attention, as many as `out`
/// holds. `scratch` must hold [`scratch_len`] floats; `qkv` holds every row.
///
/// # Panics
/// If the slices are shorter than `g` says (the op checks shapes before calling).
/// With `received` (`g.batch * g.tokens` floats), also adds to `received[b * T + j]`
/// the probability key `j` of item `b` gets from each of these rows, summed over heads.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
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
    assert!(
        scratch.len() >= scratch_len(kind, g.tokens, g.dim),
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
                Kind::Reference => reference_head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv),
                // SAFETY: `Kind::Avx2` is only chosen after `x86::available()` (see
                // `best`), and the asserts above bound every index the kernel uses.
                #[cfg(target_arch = "x86_64")]
                Kind::Avx2 => unsafe { x86::head(g, scale, qkv, b, h, i0..i1, seg, scratch, recv) },
            }
        }
        r += i1 - i0;
    }
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
    let mut scratch = vec![0f32; scratch_len(kind, g.tokens, g.dim)];
    attend_rows(kind, g, scale, qkv, 0, out, &mut scratch, received);
}

/// Queries `rows` of item `b`, head `h`, into `out` (those rows only, all heads wide).
#[allow(clippy::too_many_arguments)]
fn reference_head(
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
    scores: &mut [f32],
    mut received: Option<&mut [f32]>,
) {
    let (t, d) = (g.tokens, g.dim);
    let at = |tok: usize, which: usize| (b * t + tok) * g.qkv_row() + (which * g.heads + h) * d;
    let first = rows.start;
    for i in rows {
        let q = &qkv[at(i, 0)..at(i, 0) + d];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores[..t].iter_mut().enumerate() {
            let k = &qkv[at(j, 1)..at(j, 1) + d];
            let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
            *s = (dot * scale as f64) as f32;
            max = max.max(*s);
        }
        let mut sum = 0f64;
        for s in scores[..t].iter_mut() {
            *s = (*s - max).exp();
            sum += *s as f64;
        }
        if let Some(r) = received.as_deref_mut() {
            for (r, &s) in r.iter_mut().zip(&scores[..t]) {
                *r += (s as f64 / sum) as f32;
            }
        }
        let o = &mut out[(i - first) * g.out_row() + h * d..][..d];
        for (c, o) in o.iter_mut().enumerate() {
            let acc: f64 = (0..t)
                .map(|j| scores[j] as f64 * qkv[at(j, 2) + c] as f64)
                .sum();
            *o = (acc / sum) as f32;
        }
    }
}
