//! The f64-accumulating scalar attention every SIMD kernel is checked against (by the
//! property tests and by the start-up self-test), and the path where no SIMD kernel
//! exists.

use std::ops::Range;

use super::geometry::Geometry;

/// Queries `rows` of item `b`, head `h`, into `out` (those rows only, all heads wide);
/// `scores` holds at least `g.tokens` floats. With `received` (`g.tokens` floats),
/// adds each key's probability from these rows.
#[allow(clippy::too_many_arguments)]
pub fn head(
    g: &Geometry,
    scale: f32,
    qkv: &[f32],
    b: usize,
    h: usize,
    rows: Range<usize>,
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
