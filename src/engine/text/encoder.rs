//! The prompt encoder graph (MiniLM and kin): token ids -> one L2-normalised embedding.
//!
//! Feeds `input_ids`, an all-ones `attention_mask` and (if the graph has it) all-zero
//! `token_type_ids`, each i64 `[1, L]` with `L` symbolic, so one plan serves every prompt
//! length; then mean-pools the hidden states over the attention mask and L2-normalises,
//! as the reference encoder (`training/textenc.py`) does. Pooling runs in f64 like the
//! reference's numpy code.
//!
//! Leaves out: tokenizing (`tokenizer.rs`) and threading (`worker.rs`).

use std::path::Path;

use anyhow::Context;
use tract_onnx::prelude::*;

use crate::engine::manifest::Manifest;
use crate::engine::plan::{Dim, IoSpec, Plan, PlanOptions};

#[derive(Debug)]
pub struct TextEncoder {
    plan: Plan,
    state: TypedSimpleState,
    dim: usize,
    type_ids: bool,
}

impl TextEncoder {
    /// Loads and checks `[text] model`. Runs single-threaded: it works in the background
    /// and must not take cores from the frame loop.
    pub fn load(manifest: &Manifest) -> anyhow::Result<TextEncoder> {
        let t = &manifest.text;
        let ids = [Dim::Fixed(1), Dim::Sym("L")];
        let i64_ = i64::datum_type();
        let mut inputs = vec![
            IoSpec::new(&t.input_ids, i64_, &ids),
            IoSpec::new(&t.attention_mask, i64_, &ids),
        ];
        if let Some(name) = &t.token_type_ids {
            inputs.push(IoSpec::new(name, i64_, &ids));
        }
        let outputs = [IoSpec::new(
            &t.output,
            f32::datum_type(),
            &[Dim::Fixed(1), Dim::Sym("L"), Dim::Fixed(t.dim)],
        )];
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
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The graph file as the manifest names it.
    pub fn shown(&self) -> &Path {
        &self.plan.shown
    }

    /// Embeds one tokenized prompt (`[CLS] ... [SEP]`).
    pub fn encode(&mut self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        let l = ids.len();
        anyhow::ensure!(l > 0, "no tokens to encode");
        let input_ids = tract_ndarray::Array2::from_shape_fn((1, l), |(_, i)| ids[i] as i64);
        let mask = tract_ndarray::Array2::<i64>::ones((1, l));
        let mut inputs: TVec<TValue> = tvec!(input_ids.into_tvalue(), mask.into_tvalue());
        if self.type_ids {
            inputs.push(tract_ndarray::Array2::<i64>::zeros((1, l)).into_tvalue());
        }
        let outputs = self
            .state
            .run(inputs)
            .with_context(|| format!("{}: running", self.plan.shown.display()))?;
        let hidden = crate::engine::plan::output_f32(&outputs, 0, "last_hidden_state")?;
        anyhow::ensure!(
            hidden.len() == l * self.dim,
            "{}: output has {} values, {l}x{} expected",
            self.plan.shown.display(),
            hidden.len(),
            self.dim
        );
        Ok(mean_pool_normalize(hidden, self.dim))
    }
}

/// Mean over rows of a `[L, dim]` matrix (all rows attended), then L2 normalisation.
pub fn mean_pool_normalize(hidden: &[f32], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dim];
    let rows = hidden.len() / dim;
    for row in hidden.chunks_exact(dim) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += *v as f64;
        }
    }
    let n = rows.max(1) as f64;
    let norm = sum
        .iter()
        .map(|s| (s / n) * (s / n))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    sum.iter().map(|s| (s / n / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::text::tokenizer::Tokenizer;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn pooling_is_mean_then_unit_length() {
        let v = mean_pool_normalize(&[1.0, 0.0, 3.0, 4.0], 2);
        // mean (2, 2) -> (0.7071, 0.7071)
        assert!(
            (v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (v[1] - v[0]).abs() < 1e-7,
            "{v:?}"
        );
    }

    #[test]
    fn fixture_encoder_runs_any_length() {
        let m = Manifest::load(&root().join("tests/data/fixture/fixture.toml")).unwrap();
        let mut enc = TextEncoder::load(&m).unwrap();
        for ids in [&[2u32, 3][..], &[2, 40, 41, 42, 3]] {
            let v = enc.encode(ids).unwrap();
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
        let tok =
            Tokenizer::from_vocab_file(&m.text.vocab, m.text.lowercase, m.text.max_tokens).unwrap();
        let mut enc = TextEncoder::load(&m).unwrap();
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
            assert_eq!(tok.encode(prompt).ids, want_ids, "token ids of {prompt:?}");
            let want: Vec<f64> = vec.split(' ').map(|s| s.parse().unwrap()).collect();
            let got = enc.encode(&want_ids).unwrap();
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
