//! AVX2 + FMA tanh-form GELU, 8 lanes, with the rational tanh tract's scalar code uses
//! (so both agree to a few ulp).

use std::arch::x86_64::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const COEF: f32 = 0.044_715;
/// tract's scalar `stanh`: `p(x²)·x / q(x²)` on `[-7.5, 7.5]`, highest power first.
const TANH_CLAMP: f32 = 7.5;
#[allow(clippy::excessive_precision)]
const TANH_ALPHA: [f32; 7] = [
    -8.488492677e-14,
    5.277853000e-11,
    -2.022500419e-8,
    0.00001115424833,
    0.003103950131,
    0.1308400453,
    0.9999999934,
];
#[allow(clippy::excessive_precision)]
const TANH_BETA: [f32; 4] = [0.0002546136580, 0.02449515379, 0.4641733162, 1.0];

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `xs[i] = gelu(xs[i])` in place.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu(xs: &mut [f32]) {
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        let x = _mm256_loadu_ps(c.as_ptr());
        _mm256_storeu_ps(c.as_mut_ptr(), gelu8(x));
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut tail = [0f32; 8];
        tail[..rest.len()].copy_from_slice(rest);
        let y = gelu8(_mm256_loadu_ps(tail.as_ptr()));
        _mm256_storeu_ps(tail.as_mut_ptr(), y);
        rest.copy_from_slice(&tail[..rest.len()]);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gelu8(x: __m256) -> __m256 {
    let s = _mm256_set1_ps;
    let x2 = _mm256_mul_ps(x, x);
    // sqrt(2/pi) * (x + 0.044715 x^3)
    let inner = _mm256_mul_ps(
        s(SQRT_2_OVER_PI),
        _mm256_fmadd_ps(_mm256_mul_ps(s(COEF), x2), x, x),
    );
    let t = tanh8(inner);
    _mm256_mul_ps(_mm256_mul_ps(s(0.5), x), _mm256_add_ps(s(1.0), t))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tanh8(x: __m256) -> __m256 {
    let s = _mm256_set1_ps;
    let x = _mm256_min_ps(_mm256_max_ps(x, s(-TANH_CLAMP)), s(TANH_CLAMP));
    let x2 = _mm256_mul_ps(x, x);
    let a = &TANH_ALPHA;
    let mut p = s(a[0]);
    for &c in &a[1..] {
        p = _mm256_fmadd_ps(x2, p, s(c));
    }
    let p = _mm256_mul_ps(p, x);
    let b = &TANH_BETA;
    let mut q = s(b[0]);
    for &c in &b[1..] {
        q = _mm256_fmadd_ps(x2, q, s(c));
    }
    _mm256_div_ps(p, q)
}
