//! The prompt encoder graph: token ids -> one embedding, pooled as `text.pooling` says.
//!
//! Feeds `input_ids`, the tokenizer's `attention_mask` (all ones unless the tokenizer
//! file pads) and (if the graph has it) all-zero `token_type_ids`, each i64 `[1, L]` with
//! `L` symbolic, so one plan serves every prompt length. Then pools the output:
//! `mean` over the attended tokens (sentence-transformers, `training/textenc.py`), `cls`
//! at the first attended token, `eos` at the first attended end-of-text token (where
//! `transformers`' CLIP takes its pooled output), or `none` for a graph whose output is
//! already `[1, dim]` (CLIP's projected `text_embeds`); and L2-normalises when
//! `text.normalize` (CLIPSeg's FiLM wants the raw projection, so it can be off).
//! Pooling runs in f64 like the reference's numpy code.
//!
//! Leaves out: tokenizing (`tokenizer.rs`) and threading (`worker.rs`).

use std::path::Path;

use anyhow::Context;
use tract_onnx::prelude::*;

use crate::engine::manifest::{Manifest, Pooling};
use crate::engine::plan::{Dim, IoSpec, Plan, PlanOptions};
use crate::engine::text::{Tokenizer, Tokens};

/// `text.pooling` with the token it needs resolved against the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Mean,
    First,
    /// The first attended position holding this id.
    AtToken(u32),
    /// The graph pools.
    Done,
}

impl Pool {
    /// Resolves `pooling` for `tokenizer`; fails, saying why, when the tokenizer does
    /// not put the token the pooling reads (`maskd inspect` reports this too).
    pub fn resolve(pooling: Pooling, tokenizer: &Tokenizer) -> Result<Pool, String> {
        let (start, end) = tokenizer.start_end();
        match pooling {
            Pooling::Mean => Ok(Pool::Mean),
            Pooling::None => Ok(Pool::Done),
            Pooling::Cls => start.map(|_| Pool::First).ok_or_else(|| {
                "\"cls\" reads the token put before the text, and the tokenizer puts none \
                 (its post_processor adds no leading special token)"
                    .into()
            }),
            Pooling::Eos => end.map(Pool::AtToken).ok_or_else(|| {
                "\"eos\" reads the end-of-text token, and the tokenizer appends none \
                 (its post_processor adds no trailing special token)"
                    .into()
            }),
        }
    }
}

/// Encoded once at load ([`TextEncoder::self_test`]); short enough for any `max_tokens`.
pub const TEST_PROMPT: &str = "red circle";

#[derive(Debug)]
pub struct TextEncoder {
    plan: Plan,
    state: TypedSimpleState,
    dim: usize,
    type_ids: bool,
    pool: Pool,
    normalize: bool,
}

impl TextEncoder {
    /// Loads and checks `[text] model` for prompts tokenized by `tokenizer`. Runs
    /// single-threaded: it works in the background and must not take cores from the
    /// frame loop.
    pub fn load(manifest: &Manifest, tokenizer: &Tokenizer) -> anyhow::Result<TextEncoder> {
        let t = &manifest.text;
        let pool = Pool::resolve(t.pooling, tokenizer).map_err(|reason| {
            anyhow::anyhow!("{}: text.pooling: {reason}", manifest.path.display())
        })?;
        let ids = [Dim::Fixed(1), Dim::Sym("L")];
        let i64_ = i64::datum_type();
        let mut inputs = vec![
            IoSpec::new(&t.input_ids, i64_, &ids),
            IoSpec::new(&t.attention_mask, i64_, &ids),
        ];
        if let Some(name) = &t.token_type_ids {
            inputs.push(IoSpec::new(name, i64_, &ids));
        }
        let out_dims: &[Dim] = match pool {
            Pool::Done => &[Dim::Fixed(1), Dim::Fixed(t.dim)],
            _ => &[Dim::Fixed(1), Dim::Sym("L"), Dim::Fixed(t.dim)],
        };
        let outputs = [IoSpec::new(&t.output, f32::datum_type(), out_dims)];
        // The int8 MiniLM export declares value_info shapes that tract cannot unify.
        let options = PlanOptions {
            ignore_value_info: true,
            ..PlanOptions::default()
        };
        let plan = Plan::load(
            &t.model,
            manifest.relative(&t.model),
            &inputs,
            &outputs,
            &options,
        )
        .with_context(|| format!("{}: text.model", manifest.path.display()))?;
        let state = plan.spawn()?;
        Ok(TextEncoder {
            plan,
            state,
            dim: t.dim,
            type_ids: t.token_type_ids.is_some(),
            pool,
            normalize: t.normalize,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The graph file as the manifest names it.
    pub fn shown(&self) -> &Path {
        &self.plan.shown
    }

    /// Encodes [`TEST_PROMPT`], so that a graph which loads but cannot run fails every
    /// command at start-up with tract's own error (the node that failed), not each
    /// prompt later with a symptom (a bench timeout, a prompt that never gets masks).
    pub fn self_test(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<Vec<f32>> {
        let tokens = tokenizer.encode(TEST_PROMPT)?;
        self.encode(&tokens)
            .with_context(|| format!("encoding the test prompt {TEST_PROMPT:?}"))
    }

    /// Embeds one tokenized prompt. A failed run's error names the graph and, through
    /// tract's context, the node that failed.
    pub fn encode(&mut self, tokens: &Tokens) -> anyhow::Result<Vec<f32>> {
        let l = tokens.ids.len();
        anyhow::ensure!(l > 0, "no tokens to encode");
        anyhow::ensure!(
            tokens.attention_mask.len() == l,
            "{l} token ids but {} attention mask values",
            tokens.attention_mask.len()
        );
        let ids = &tokens.ids;
        let input_ids = tract_ndarray::Array2::from_shape_fn((1, l), |(_, i)| ids[i] as i64);
        let mask =
            tract_ndarray::Array2::from_shape_fn((1, l), |(_, i)| tokens.attention_mask[i] as i64);
        let mut inputs: TVec<TValue> = tvec!(input_ids.into_tvalue(), mask.into_tvalue());
        if self.type_ids {
            inputs.push(tract_ndarray::Array2::<i64>::zeros((1, l)).into_tvalue());
        }
        let shown = self.plan.shown.display();
        let outputs = self
            .state
            .run(inputs)
            .with_context(|| format!("{shown}: running"))?;
        let out = crate::engine::plan::output_f32(&outputs, 0, "text output")?;
        let rows = if self.pool == Pool::Done { 1 } else { l };
        anyhow::ensure!(
            out.len() == rows * self.dim,
            "{shown}: output has {} values, {rows}x{} expected",
            out.len(),
            self.dim
        );
        let row = |i: usize| &out[i * self.dim..(i + 1) * self.dim];
        let attended = |i: &usize| tokens.attention_mask[*i] != 0;
        let pooled: Vec<f64> = match self.pool {
            Pool::Done => to_f64(row(0)),
            Pool::Mean => mean_rows((0..l).filter(attended).map(row), self.dim),
            Pool::First => match (0..l).find(attended) {
                Some(i) => to_f64(row(i)),
                None => anyhow::bail!("no attended token to pool"),
            },
            Pool::AtToken(id) => match (0..l).filter(attended).find(|i| ids[*i] == id) {
                Some(i) => to_f64(row(i)),
                None => anyhow::bail!("no end-of-text token (id {id}) among the prompt's tokens"),
            },
        };
        Ok(finish(pooled, self.normalize))
    }
}

fn to_f64(row: &[f32]) -> Vec<f64> {
    row.iter().map(|v| *v as f64).collect()
}

fn mean_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> Vec<f64> {
    let mut sum = vec![0f64; dim];
    let mut n = 0usize;
    for row in rows {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += *v as f64;
        }
        n += 1;
    }
    let n = n.max(1) as f64;
    sum.iter().map(|s| s / n).collect()
}

/// To f32, L2-normalised when `normalize`.
fn finish(v: Vec<f64>, normalize: bool) -> Vec<f32> {
    let scale = if normalize {
        1.0 / v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12)
    } else {
        1.0
    };
    v.iter().map(|x| (x * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn mean_skips_padding_and_normalize_is_optional() {
        let rows = [[1.0f32, 0.0], [3.0, 4.0], [100.0, 100.0]];
        let attended = [true, true, false];
        let kept = rows
            .iter()
            .zip(attended)
            .filter(|(_, a)| *a)
            .map(|(r, _)| &r[..]);
        let raw = finish(mean_rows(kept, 2), false);
        assert_eq!(raw, [2.0, 2.0]);
        let unit = finish(vec![3.0, 4.0], true);
        assert!(
            (unit[0] - 0.6).abs() < 1e-7 && (unit[1] - 0.8).abs() < 1e-7,
            "{unit:?}"
        );
    }

    #[test]
    fn pooling_needs_the_token_it_reads() {
        let wp = Tokenizer::WordPiece(
            crate::engine::text::wordpiece::WordPiece::from_tokens(
                ["[UNK]", "[CLS]", "[SEP]"],
                true,
                8,
            )
            .unwrap(),
        );
        assert_eq!(Pool::resolve(Pooling::Eos, &wp), Ok(Pool::AtToken(2)));
        assert_eq!(Pool::resolve(Pooling::Cls, &wp), Ok(Pool::First));
        assert_eq!(Pool::resolve(Pooling::None, &wp), Ok(Pool::Done));
        assert_eq!(Pool::resolve(Pooling::Mean, &wp), Ok(Pool::Mean));
    }

    #[test]
    fn pooling_is_mean_then_unit_length() {
        let v = finish(mean_rows([1.0, 0.0, 3.0, 4.0].chunks_exact(2), 2), true);
        // mean (2, 2) -> (0.7071, 0.7071)
        assert!(
            (v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (v[1] - v[0]).abs() < 1e-7,
            "{v:?}"
        );
    }

    #[test]
    fn fixture_encoder_runs_any_length() {
        let m = Manifest::load(&root().join("tests/data/fixture/fixture.toml")).unwrap();
        let tok = Tokenizer::load(&m.text).unwrap();
        let mut enc = TextEncoder::load(&m, &tok).unwrap();
        for ids in [&[2u32, 3][..], &[2, 40, 41, 42, 3]] {
            let v = enc.encode(&Tokens::unpadded(ids.to_vec(), 0)).unwrap();
            assert_eq!(v.len(), 16);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
    }

    /// The `[text]` section of `models/default.toml`, so this test can run before the
    /// segmenter exists (parsing does not look for the other files).
    const REAL_TEXT: &str = r#"
name = "real-text-only"
[text]
model = "text/minilm-l6-v2-int8.onnx"
vocab = "text/vocab.txt"
lowercase = true
max_tokens = 128
input_ids = "input_ids"
attention_mask = "attention_mask"
token_type_ids = "token_type_ids"
output = "last_hidden_state"
dim = 384
[image]
width = 224
height = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[segmenter]
model = "seg/seg.onnx"
mask_size = [56, 56]
"#;

    /// The real MiniLM against the trainer's reference embeddings (tokenizer included).
    /// Skipped, saying so, while `models/text/` or the reference file is absent.
    #[test]
    fn real_encoder_matches_reference_embeddings() {
        let reference = root().join("tests/data/text_reference.tsv");
        let model = root().join("models/text/minilm-l6-v2-int8.onnx");
        if !model.exists() || !reference.exists() {
            eprintln!(
                "SKIPPED: {} or {} is absent",
                model.display(),
                reference.display()
            );
            return;
        }
        let m = Manifest::parse(REAL_TEXT, &root().join("models/default.toml")).unwrap();
        let tok = Tokenizer::load(&m.text).unwrap();
        let mut enc = TextEncoder::load(&m, &tok).unwrap();
        let text = std::fs::read_to_string(&reference).unwrap();
        let mut worst = (f64::MAX, String::new());
        let mut n = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut cols = line.split('\t');
            let (prompt, ids, vec) = (
                cols.next().unwrap(),
                cols.next().unwrap(),
                cols.next().unwrap(),
            );
            let want_ids: Vec<u32> = ids.split(' ').map(|s| s.parse().unwrap()).collect();
            let tokens = tok.encode(prompt).unwrap();
            assert_eq!(tokens.ids, want_ids, "token ids of {prompt:?}");
            let want: Vec<f64> = vec.split(' ').map(|s| s.parse().unwrap()).collect();
            let got = enc.encode(&tokens).unwrap();
            let dot: f64 = got.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
            let norm = want.iter().map(|b| b * b).sum::<f64>().sqrt();
            let cos = dot / norm;
            if cos < worst.0 {
                worst = (cos, prompt.to_owned());
            }
            n += 1;
        }
        eprintln!(
            "real encoder: {n} prompts, worst cosine {:.6} ({:?})",
            worst.0, worst.1
        );
        assert!(n >= 50, "only {n} reference prompts");
        assert!(worst.0 >= 0.999, "cosine {} for {:?}", worst.0, worst.1);
    }
}
