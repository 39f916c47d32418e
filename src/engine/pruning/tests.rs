//! The pruner on the fixture and, where it is there, the trained model: a schedule of
//! `keep = 1` is the unpruned chain, selection is deterministic and matches a naive
//! reference, merging adds one token, and every schedule error names the manifest,
//! the key and the reason.

use std::path::Path;

use super::*;
use crate::config::PruneStep;
use crate::engine::plan::PlanOptions;
use crate::engine::preprocess::Preprocessor;
use crate::engine::segmenter::tests::{fixture_manifest, fixture_rgb, frame};
use crate::engine::segmenter::Segmenter;
use crate::engine::stages::{KeepAll, StageRunner};
use crate::engine::test_util::max_abs_diff;

fn config(steps: &[(usize, f32)], scorer: TokenScorer, merge: bool) -> PruningConfig {
    PruningConfig {
        schedule: steps
            .iter()
            .map(|&(after_block, keep)| PruneStep { after_block, keep })
            .collect(),
        scorer,
        merge,
    }
}

fn pruner(m: &Manifest, cfg: &PruningConfig) -> Pruner {
    let plan = Plan::resolve(cfg, m).unwrap().expect("a schedule");
    Pruner::new(plan).unwrap()
}

/// The manifest's preprocessed fixture image and `p` deterministic unit prompts.
fn inputs(m: &Manifest, p: usize) -> (TValue, TValue) {
    let (w, h) = (m.image.width, m.image.height);
    let rgb = fixture_rgb(w as usize, h as usize);
    let pre = Preprocessor::new(&m.image);
    let mut image = Tensor::zero::<f32>(&[1, 3, h as usize, w as usize]).unwrap();
    pre.run(
        &frame(&rgb, w, h),
        image
            .to_plain_array_view_mut::<f32>()
            .unwrap()
            .into_slice()
            .unwrap(),
    )
    .unwrap();
    let dim = m.text.dim;
    let text: Vec<f32> = (0..p * dim)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) / (dim as f32).sqrt())
        .collect();
    let text = Tensor::from_shape(&[p, dim], &text).unwrap();
    (image.into_tvalue(), text.into_tvalue())
}

/// Masks and presence of one run of `stages` under `policy`.
fn run(
    stages: &mut StageRunner,
    (image, text): &(TValue, TValue),
    policy: &mut dyn TokenPolicy,
) -> (Vec<f32>, Vec<f32>) {
    stages.run(image.clone(), text.clone(), policy).unwrap();
    let (m, s) = stages.outputs().unwrap();
    (m.to_vec(), s.to_vec())
}

fn real_model() -> Option<Manifest> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.toml");
    match Manifest::load(&path) {
        Ok(m) if m.stages.is_some() => Some(m),
        _ => {
            eprintln!("SKIPPED: {} is absent or has no [stages]", path.display());
            None
        }
    }
}

/// `keep = 1` after every block the model allows: the pruner gathers every token in
/// order and scatters them back, so the decoder gets the very bytes `KeepAll` hands it
/// and the outputs are equal bit for bit (the same plans run the same inputs).
fn keep_one_is_keep_all(m: &Manifest) {
    let blocks = m.stages.as_ref().unwrap().blocks.len();
    let steps: Vec<(usize, f32)> = (0..blocks - 1).map(|b| (b, 1.0)).collect();
    let mut stages = StageRunner::load(m, &PlanOptions::default()).unwrap();
    let inputs = inputs(m, 3);
    let reference = run(&mut stages, &inputs, &mut KeepAll);
    for scorer in [
        TokenScorer::Attention,
        TokenScorer::Norm,
        TokenScorer::Random,
    ] {
        for merge in [false, true] {
            let mut p = pruner(m, &config(&steps, scorer, merge));
            assert_eq!(p.plan().block_tokens(), vec![p.plan().tokens; blocks]);
            let got = run(&mut stages, &inputs, &mut p);
            assert!(got == reference, "{scorer:?} merge {merge}: outputs differ");
        }
    }
}

#[test]
fn keep_one_everywhere_is_the_unpruned_chain_on_the_fixture() {
    keep_one_is_keep_all(&fixture_manifest());
}

#[test]
fn keep_one_everywhere_is_the_unpruned_chain_on_the_real_model() {
    if let Some(m) = real_model() {
        keep_one_is_keep_all(&m);
    }
}

/// Against the fused full graph (the daemon's path without a schedule) the stage chain
/// agrees to float tolerance, not bit for bit: tract optimises each stage graph on its
/// own, so a sum may be split differently at a block's boundary. The masks, thresholded,
/// are the same.
#[test]
fn keep_one_everywhere_matches_the_full_graph_to_tolerance() {
    let m = fixture_manifest();
    let options = PlanOptions::default();
    let mut full = Segmenter::load(&m, &options).unwrap();
    let mut pruned = Segmenter::load_pruned(
        &m,
        &options,
        &config(&[(0, 1.0)], TokenScorer::Attention, false),
    )
    .unwrap();
    assert!(full.pruner().is_none() && pruned.pruner().is_some());
    let (image, text) = inputs(&m, 2);
    let mut outs = Vec::new();
    for seg in [&mut full, &mut pruned] {
        let src = image.to_plain_array_view::<f32>().unwrap();
        let src = src.as_slice().unwrap();
        seg.write_image(|buf| buf.copy_from_slice(src)).unwrap();
        let rows = text.to_plain_array_view::<f32>().unwrap();
        let rows = rows.as_slice().unwrap();
        seg.set_text(rows.chunks(m.text.dim)).unwrap();
        seg.run().unwrap();
        let (masks, scores) = seg.outputs().unwrap();
        outs.push((masks.to_vec(), scores.to_vec()));
    }
    let (md, sd) = (
        max_abs_diff(&outs[0].0, &outs[1].0),
        max_abs_diff(&outs[0].1, &outs[1].1),
    );
    assert!(
        md <= 1e-4 && sd <= 1e-4,
        "mask diff {md}, presence diff {sd}"
    );
    let on = |v: &[f32]| v.iter().map(|x| *x > 0.0).collect::<Vec<_>>();
    assert_eq!(on(&outs[0].0), on(&outs[1].0));
}

/// The pruner's choice, gather and DToP restore against a naive version written from
/// the definition (sort by score, stable; copy rows), after block 0 of the fixture.
#[test]
fn pruning_matches_a_naive_reference_and_repeats_exactly() {
    let m = fixture_manifest();
    let mut stages = StageRunner::load(&m, &PlanOptions::default()).unwrap();
    let inputs = inputs(&m, 2);
    for scorer in [TokenScorer::Attention, TokenScorer::Norm] {
        let mut p = pruner(&m, &config(&[(0, 0.5)], scorer, false));
        let got = run(&mut stages, &inputs, &mut p);
        assert_eq!(stages.attention(1).unwrap().len(), 8, "block 1 saw half");
        let again = run(&mut stages, &inputs, &mut p);
        assert!(got == again, "{scorer:?}: a second frame differs");
        let mut naive = Naive {
            scorer,
            kept: Vec::new(),
            grid: None,
        };
        let want = run(&mut stages, &inputs, &mut naive);
        assert!(got == want, "{scorer:?}: differs from the naive reference");
        let mut kept = naive.kept.clone();
        kept.sort_unstable();
        kept.dedup();
        assert_eq!(kept.len(), 8);
    }
}

/// Keeps the best-scored half after block 0: scores sorted descending with a stable
/// sort (ties to the lower position), the grid of block 0's output with the kept rows
/// overwritten by the last block's.
struct Naive {
    scorer: TokenScorer,
    kept: Vec<usize>,
    grid: Option<Vec<f32>>,
}

impl TokenPolicy for Naive {
    fn after_block(
        &mut self,
        block: usize,
        tokens: TValue,
        attn: &[f32],
    ) -> anyhow::Result<TValue> {
        if block != 0 {
            return Ok(tokens);
        }
        let view = tokens.to_plain_array_view::<f32>()?;
        let (t, c) = (view.shape()[1], view.shape()[2]);
        let data: Vec<f32> = view.iter().copied().collect();
        let score = |i: usize| match self.scorer {
            TokenScorer::Attention => attn[i],
            _ => data[i * c..(i + 1) * c].iter().map(|x| x * x).sum(),
        };
        let mut order: Vec<usize> = (0..t).collect();
        order.sort_by(|a, b| score(*b).total_cmp(&score(*a)));
        self.kept = order[..t / 2].to_vec();
        self.kept.sort();
        let rows: Vec<f32> = self
            .kept
            .iter()
            .flat_map(|&i| data[i * c..(i + 1) * c].to_vec())
            .collect();
        self.grid = Some(data);
        Ok(Tensor::from_shape(&[1, self.kept.len(), c], &rows)?.into_tvalue())
    }

    fn before_decoder(&mut self, tokens: TValue) -> anyhow::Result<TValue> {
        let mut grid = self.grid.take().context("no grid")?;
        let view = tokens.to_plain_array_view::<f32>()?;
        let c = view.shape()[2];
        let rows: Vec<f32> = view.iter().copied().collect();
        for (j, &at) in self.kept.iter().enumerate() {
            grid[at * c..(at + 1) * c].copy_from_slice(&rows[j * c..(j + 1) * c]);
        }
        Ok(Tensor::from_shape(&[1, grid.len() / c, c], &grid)?.into_tvalue())
    }
}

#[test]
fn scorers_choose_differently_and_merge_adds_a_context_token() {
    let m = fixture_manifest();
    let mut stages = StageRunner::load(&m, &PlanOptions::default()).unwrap();
    let inputs = inputs(&m, 2);
    let mut outs = Vec::new();
    for scorer in [
        TokenScorer::Attention,
        TokenScorer::Norm,
        TokenScorer::Random,
    ] {
        let mut p = pruner(&m, &config(&[(0, 0.25)], scorer, false));
        outs.push(run(&mut stages, &inputs, &mut p));
        assert_eq!(stages.attention(1).unwrap().len(), 4);
    }
    assert!(
        outs[0] != outs[1] || outs[1] != outs[2],
        "three scorers, one choice"
    );

    let mut p = pruner(&m, &config(&[(0, 0.25)], TokenScorer::Attention, true));
    assert_eq!(p.plan().block_tokens(), [16, 5]);
    let merged = run(&mut stages, &inputs, &mut p);
    assert_eq!(
        stages.attention(1).unwrap().len(),
        5,
        "4 kept + the context token"
    );
    assert_eq!(merged.0.len(), 2 * 16 * 16);
    assert!(merged.0.iter().chain(&merged.1).all(|v| v.is_finite()));
    assert!(merged != outs[0], "the context token changed nothing");
    assert!(
        run(&mut stages, &inputs, &mut p) == merged,
        "merge repeats exactly"
    );
}

#[test]
fn token_counts_follow_the_schedule_multiplicatively() {
    let m = real_model().unwrap_or_else(fixture_manifest);
    let st = m.stages.as_ref().unwrap();
    if st.tokens != 196 || st.blocks.len() != 8 {
        eprintln!("SKIPPED: not the 196-token, 8-block model");
        return;
    }
    let plan = |steps: &[(usize, f32)], merge| {
        Plan::resolve(&config(steps, TokenScorer::Norm, merge), &m)
            .unwrap()
            .unwrap()
            .block_tokens()
    };
    assert_eq!(
        plan(&[(1, 0.5), (4, 0.5)], false),
        [196, 196, 98, 98, 98, 49, 49, 49]
    );
    assert_eq!(
        plan(&[(2, 0.6)], false),
        [196, 196, 196, 118, 118, 118, 118, 118]
    );
    assert_eq!(
        plan(&[(1, 0.5), (4, 0.5)], true),
        [196, 196, 99, 99, 99, 50, 50, 50]
    );
}

/// Every schedule the model cannot take fails with the manifest, the key and why.
#[test]
fn schedule_errors_name_the_manifest_key_and_reason() {
    let m = fixture_manifest();
    let err =
        |cfg: PruningConfig, m: &Manifest| format!("{:#}", Plan::resolve(&cfg, m).unwrap_err());
    let shown = m.path.display().to_string();
    let cases = [
        (
            config(&[(1, 0.5)], TokenScorer::Norm, false),
            "pruning.schedule[0].after_block: 1 is beyond the model's depth: it has 2 blocks (0..=1)",
        ),
        (
            config(&[(0, 0.01)], TokenScorer::Norm, false),
            "pruning.schedule[0].keep: 0.01 of the 16 tokens entering block 1 is 0 tokens; at least 1 must stay",
        ),
        (
            config(&[(0, 0.0)], TokenScorer::Norm, false),
            "pruning.schedule[0].keep: 0 must be in (0, 1]",
        ),
        (
            config(&[(0, 1.5)], TokenScorer::Norm, false),
            "pruning.schedule[0].keep: 1.5 must be in (0, 1]",
        ),
        (
            config(&[(0, 0.5), (0, 0.5)], TokenScorer::Norm, false),
            "pruning.schedule[1].after_block: 0 does not follow the previous step's 0",
        ),
    ];
    for (cfg, want) in cases {
        let got = err(cfg, &m);
        assert!(got.starts_with(&format!("{shown}: {want}")), "{got}");
    }
    let mut flat = fixture_manifest();
    flat.stages = None;
    let got = err(config(&[(0, 0.5)], TokenScorer::Norm, false), &flat);
    assert!(
        got.starts_with(&format!(
            "{shown}: pruning.schedule: the model has no [stages] section"
        )),
        "{got}"
    );
    // No schedule: nothing to check, on any model.
    assert!(Plan::resolve(&PruningConfig::default(), &flat)
        .unwrap()
        .is_none());
}

/// A schedule the 2:4 model cannot take (it ships without stage graphs) fails at load.
#[test]
fn a_schedule_on_the_shipped_two_four_model_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sparse24.toml");
    let Ok(m) = Manifest::load(&path) else {
        eprintln!("SKIPPED: {} is absent", path.display());
        return;
    };
    if m.stages.is_some() {
        eprintln!("SKIPPED: {} has [stages] now", path.display());
        return;
    }
    let err = Segmenter::load_pruned(
        &m,
        &PlanOptions::default(),
        &config(&[(2, 0.5)], TokenScorer::Norm, false),
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("sparse24.toml: pruning.schedule: the model has no [stages] section"),
        "{err}"
    );
}
