//! x86-64 backends of the column-SIMD permute kernel (`colsimd.rs` has the design).
//!
//! Each module maps the kernel's vector primitives to intrinsics and stamps the
//! shared micro-kernel with its register block. Every primitive carries the same
//! `#[target_feature]` as the kernel, so it inlines into it (checked in the
//! disassembly: no calls in the tiles); callers must have checked the features
//! (see `KernelKind::check_available`).
//!
//! * `avx512`: 16 lanes, `vpermps zmm` selects from 16 inputs (4-bit indices);
//!   32 registers hold a 6 x 2 block (12 accumulators + 6 input rows). This is the
//!   design PLATFORM.md measured at 1.68-2.26x over tract on Zen 5. **Not run on
//!   hardware here** (the development CPU has no AVX-512): its logic is the shared
//!   template, tested through the 16-lane array emulation, and only the primitive
//!   mappings below are AVX-512 specific.
//! * `avx2`: 8 lanes, `M` dividing 4. A 4-input group is broadcast to both 128-bit
//!   halves (`vbroadcastf128`) and `vpermilps` selects in-lane with the low 2 bits
//!   of each 4-bit field. On Zen 3 the cross-lane `vpermps ymm` costs two FMA slots
//!   and does not overlap FMAs, while `vpermilps` costs one: 2x faster kernel.
//! * `avx2_cross`: 8 lanes, `M = 8`: cross-lane `vpermps ymm` (low 3 bits).
//!
//! Both AVX2 variants read the same packed layout (`Packed::new(.., 8)`).

pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    pub(crate) const LANES: usize = 16;
    const SUBW: usize = 16;
    const XSUB: usize = 1;
    type VF = __m512;
    type VI = __m512i;

    // SAFETY (whole module): every function requires avx512f, which the caller of
    // `run` guarantees; pointer contracts are those of the colsimd primitives.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vzero() -> VF {
        _mm512_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vload(p: *const f32) -> VF {
        debug_assert_eq!(p as usize % 64, 0);
        _mm512_load_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vzero_i() -> VI {
        _mm512_setzero_si512()
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vloadx(p: *const f32) -> VF {
        _mm512_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vloadx_part(p: *const f32, n: usize) -> VF {
        // Masked-off lanes are not read (no fault past the row) and come back 0.
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vloadi(p: *const f32) -> VI {
        debug_assert_eq!(p as usize % 64, 0);
        _mm512_load_si512(p.cast())
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vperm(idx: VI, x: VF) -> VF {
        _mm512_permutexvar_ps(idx, x)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vsrl4(idx: VI) -> VI {
        _mm512_srli_epi32::<4>(idx)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vfma(a: VF, b: VF, c: VF) -> VF {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vstoreu(p: *mut f32, v: VF) {
        _mm512_storeu_ps(p, v)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn vstoreu_part(p: *mut f32, v: VF, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
    }

    super::super::colsimd::colsimd_kernel!(#[target_feature(enable = "avx512f")]; R = 6, CV = 2);
}

/// Primitives shared by both AVX2 variants (everything but input loads and the permute).
macro_rules! avx2_common {
    () => {
        use std::arch::x86_64::*;

        pub(crate) const LANES: usize = 8;
        type VF = __m256;
        type VI = __m256i;

        // SAFETY (whole module): every function requires avx2 and fma, which the
        // caller of `run` guarantees; pointer contracts are the colsimd primitives'.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vzero() -> VF {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vzero_i() -> VI {
            _mm256_setzero_si256()
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vload(p: *const f32) -> VF {
            debug_assert_eq!(p as usize % 32, 0);
            _mm256_load_ps(p)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn lane_mask(n: usize) -> __m256i {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vloadi(p: *const f32) -> VI {
            debug_assert_eq!(p as usize % 32, 0);
            _mm256_load_si256(p.cast())
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vsrl4(idx: VI) -> VI {
            _mm256_srli_epi32::<4>(idx)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vfma(a: VF, b: VF, c: VF) -> VF {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vstoreu(p: *mut f32, v: VF) {
            _mm256_storeu_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn vstoreu_part(p: *mut f32, v: VF, n: usize) {
            // vmaskmovps writes (and faults on) only the selected lanes.
            _mm256_maskstore_ps(p, lane_mask(n), v)
        }
    };
}

/// AVX2 for `M` dividing 4 (2:4, 1:4, 3:4, 1:2): in-lane `vpermilps` on a group's
/// 4 inputs broadcast to both 128-bit lanes. On Zen 3 a cross-lane `vpermps ymm`
/// costs about two FMA slots and does not overlap with FMAs, `vpermilps` about
/// one (see docs/SPARSE.md), which doubles the speed of this kernel.
pub(crate) mod avx2 {
    avx2_common!();
    const SUBW: usize = 4;
    const XSUB: usize = 2;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vloadx(p: *const f32) -> VF {
        let lo = _mm_loadu_ps(p);
        _mm256_set_m128(lo, lo) // one vbroadcastf128 from memory
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vloadx_part(p: *const f32, n: usize) -> VF {
        // vmaskmovps neither reads nor faults on masked-off lanes; they come back 0.
        let mask = _mm_cmpgt_epi32(_mm_set1_epi32(n as i32), _mm_setr_epi32(0, 1, 2, 3));
        let lo = _mm_maskload_ps(p, mask);
        _mm256_set_m128(lo, lo)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vperm(idx: VI, x: VF) -> VF {
        _mm256_permutevar_ps(x, idx) // bits 1:0 of each lane, within its 128-bit half
    }

    super::super::colsimd::colsimd_kernel!(#[target_feature(enable = "avx2,fma")]; R = 4, CV = 2);
}

/// AVX2 for `M = 8` (4:8 and friends): cross-lane `vpermps` over 8 inputs.
pub(crate) mod avx2_cross {
    avx2_common!();
    const SUBW: usize = 8;
    const XSUB: usize = 1;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vloadx(p: *const f32) -> VF {
        _mm256_loadu_ps(p)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vloadx_part(p: *const f32, n: usize) -> VF {
        // vmaskmovps neither reads nor faults on masked-off lanes; they come back 0.
        _mm256_maskload_ps(p, lane_mask(n))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vperm(idx: VI, x: VF) -> VF {
        _mm256_permutevar8x32_ps(x, idx) // bits 2:0 of each lane
    }

    super::super::colsimd::colsimd_kernel!(#[target_feature(enable = "avx2,fma")]; R = 6, CV = 1);
}
