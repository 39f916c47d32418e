//! Ranking tokens and choosing the ones to keep: pure functions on slices, into
//! buffers the caller owns (nothing here allocates).
//!
//! The order is total (score descending, then position ascending; NaN ranks by
//! `f32::total_cmp`), so the kept set is a function of the scores alone, whatever
//! `select_nth_unstable_by` does inside, and the kept tokens go on in their spatial
//! order.

use std::cmp::Ordering;

use crate::config::TokenScorer;

/// Fills `scores` (one per token of `tokens`, `width` floats each) as `scorer` ranks
/// them; `attention` is what each token received in the block that made `tokens`.
/// Higher is kept first.
pub fn score(
    scorer: TokenScorer,
    tokens: &[f32],
    width: usize,
    attention: &[f32],
    block: usize,
    scores: &mut [f32],
) {
    match scorer {
        TokenScorer::Attention => scores.copy_from_slice(&attention[..scores.len()]),
        TokenScorer::Norm => {
            // The squared norm ranks like the norm and saves a square root per token.
            for (s, t) in scores.iter_mut().zip(tokens.chunks_exact(width)) {
                *s = t.iter().map(|x| x * x).sum();
            }
        }
        TokenScorer::Random => {
            let mut state = random_seed(tokens, block);
            for s in scores.iter_mut() {
                state = xorshift(state);
                *s = (state >> 40) as f32;
            }
        }
    }
}

/// The random scorer's seed: the block and the bits of the first token, so the draw
/// differs from frame to frame and block to block but is the same for the same frame
/// (a control that stays reproducible). Never zero, xorshift's fixed point.
fn random_seed(tokens: &[f32], block: usize) -> u64 {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (block as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    for x in tokens.iter().take(8) {
        seed = (seed ^ u64::from(x.to_bits())).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
    seed | 1
}

fn xorshift(mut s: u64) -> u64 {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    s
}

/// Rank of token `a` against `b`: higher score first, then lower position.
fn rank(scores: &[f32], a: u32, b: u32) -> Ordering {
    scores[b as usize]
        .total_cmp(&scores[a as usize])
        .then(a.cmp(&b))
}

/// Puts the `keep` best-ranked positions of `scores` into `order[..keep]`, ascending,
/// and the others into `order[keep..]` (in no particular order). `order` must hold
/// `scores.len()` slots; `keep <= scores.len()`.
pub fn top_k(scores: &[f32], keep: usize, order: &mut [u32]) {
    debug_assert_eq!(order.len(), scores.len());
    debug_assert!(keep <= scores.len());
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    if keep < order.len() {
        order.select_nth_unstable_by(keep, |a, b| rank(scores, *a, *b));
    }
    // Unstable sort: the positions are distinct, and a stable sort would allocate.
    order[..keep].sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_best_in_spatial_order_and_breaks_ties_by_position() {
        let scores = [0.1, 0.9, 0.5, 0.9, 0.0, 0.5];
        let mut order = [0u32; 6];
        top_k(&scores, 3, &mut order);
        // 1 and 3 tie at 0.9, 2 and 5 at 0.5: the lower position wins the last slot.
        assert_eq!(&order[..3], &[1, 2, 3]);
        let mut dropped = order[3..].to_vec();
        dropped.sort_unstable();
        assert_eq!(dropped, [0, 4, 5]);
        top_k(&scores, 6, &mut order);
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn top_k_is_the_same_for_any_input_order_of_equal_scores() {
        let scores = [1.0f32; 9];
        let mut order = [0u32; 9];
        top_k(&scores, 4, &mut order);
        assert_eq!(&order[..4], &[0, 1, 2, 3]);
        let nan = [f32::NAN, 2.0, f32::NAN, 1.0];
        let mut order = [0u32; 4];
        top_k(&nan, 2, &mut order);
        let again = {
            let mut o = [0u32; 4];
            top_k(&nan, 2, &mut o);
            o
        };
        assert_eq!(&order[..2], &again[..2]);
    }

    #[test]
    fn norm_and_attention_scores_rank_as_documented() {
        let tokens = [3.0, 4.0, 0.0, 1.0, -6.0, 0.0];
        let mut scores = [0.0; 3];
        score(TokenScorer::Norm, &tokens, 2, &[0.0; 3], 0, &mut scores);
        assert_eq!(scores, [25.0, 1.0, 36.0]);
        score(
            TokenScorer::Attention,
            &tokens,
            2,
            &[0.2, 0.7, 0.1, 9.0],
            0,
            &mut scores,
        );
        assert_eq!(scores, [0.2, 0.7, 0.1], "only the scored tokens' attention");
    }

    #[test]
    fn random_scores_are_a_function_of_the_frame_and_block() {
        let tokens: Vec<f32> = (0..64).map(|i| i as f32 * 0.25).collect();
        let draw = |tokens: &[f32], block| {
            let mut s = [0.0; 16];
            score(TokenScorer::Random, tokens, 4, &[], block, &mut s);
            s
        };
        assert_eq!(draw(&tokens, 1), draw(&tokens, 1));
        assert_ne!(draw(&tokens, 1), draw(&tokens, 2));
        let mut other = tokens.clone();
        other[0] = 7.5;
        assert_ne!(draw(&tokens, 1), draw(&other, 1));
        let s = draw(&tokens, 1);
        assert!(s.iter().any(|v| *v != s[0]), "{s:?}");
    }
}
