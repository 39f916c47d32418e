//! Mask generators shared by the encoders' property tests.

use proptest::prelude::*;

/// (width, height, bits) built from runs, so that long runs, 1-pixel runs,
/// empty masks and 0-sized masks all occur.
pub(crate) fn mask_strategy() -> impl Strategy<Value = (u32, u32, Vec<u8>)> {
    (0u32..40, 0u32..40).prop_flat_map(|(w, h)| {
        let n = (w * h) as usize;
        prop::collection::vec((any::<bool>(), 1usize..50), 0..20).prop_map(move |runs| {
            let mut bits: Vec<u8> = runs
                .iter()
                .flat_map(|&(v, len)| std::iter::repeat_n(u8::from(v), len))
                .collect();
            bits.resize(n, 0);
            (w, h, bits)
        })
    })
}
