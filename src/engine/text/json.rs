//! `[text] tokenizer`: a `tokenizer.json` run by the `tokenizers` crate, the library that
//! wrote the file, so WordPiece, byte-level BPE (CLIP, GPT-2, RoBERTa) and Unigram (T5,
//! XLM-R) tokenize exactly as in the exporter's Python.
//!
//! The file's padding is kept (CLIP's is a fixed 77, filled with `<|endoftext|>`). Its
//! truncation length becomes the limit, but truncation itself is turned off, so an
//! over-long text is measured and refused rather than cut (see `tokenizer.rs`).
//!
//! Leaves out: pairs of sequences, offsets, decoding.

use std::path::{Path, PathBuf};

use tokenizers::{ModelWrapper, PaddingStrategy};

use super::tokenizer::{TokenizerError, Tokens};
use crate::engine::manifest::DEFAULT_MAX_TOKENS;

/// Tokenized once at load to learn which special tokens the file wraps around a text.
const PROBE: &str = "a photo";

#[derive(Debug, Clone)]
pub struct JsonTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    max_tokens: usize,
    start: Option<u32>,
    end: Option<u32>,
}

impl JsonTokenizer {
    /// Reads `path`; `max_tokens` (from the manifest) overrides the file's truncation
    /// length but may not exceed it (the model was not made for longer sequences).
    pub fn from_file(
        path: &Path,
        max_tokens: Option<usize>,
    ) -> Result<JsonTokenizer, TokenizerError> {
        let json_err = |cause: String| TokenizerError::Json {
            path: path.to_owned(),
            cause,
        };
        // `from_file` folds a missing file into its own error type; read it here so the
        // message is the usual io one.
        let bytes = std::fs::read(path).map_err(|cause| TokenizerError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let mut inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| json_err(e.to_string()))?;
        let truncates_at = inner.get_truncation().map(|t| t.max_length);
        let max_tokens = match (max_tokens, truncates_at) {
            (Some(asked), Some(file)) if asked > file => {
                return Err(TokenizerError::Unusable {
                    path: path.to_owned(),
                    reason: format!(
                    "truncates to {file} tokens, text.max_tokens asks for {asked} (at most {file})"
                ),
                })
            }
            (Some(asked), _) => asked,
            (None, Some(file)) => file,
            (None, None) => DEFAULT_MAX_TOKENS,
        };
        inner
            .with_truncation(None)
            .map_err(|e| json_err(e.to_string()))?;
        let probe = inner
            .encode(PROBE, true)
            .map_err(|e| json_err(format!("tokenizing {PROBE:?}: {e}")))?;
        let (start, end) = wrapping(
            probe.get_ids(),
            probe.get_special_tokens_mask(),
            probe.get_attention_mask(),
        );
        Ok(JsonTokenizer {
            inner,
            path: path.to_owned(),
            max_tokens,
            start,
            end,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn start_end(&self) -> (Option<u32>, Option<u32>) {
        (self.start, self.end)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn describe(&self) -> String {
        let model = match self.inner.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };
        let token = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_else(|| "nothing".into())
        };
        let padding = match self.inner.get_padding().map(|p| &p.strategy) {
            Some(PaddingStrategy::Fixed(n)) => format!(", padded to {n}"),
            _ => String::new(),
        };
        format!(
            "tokenizer.json {model}, {} tokens, at most {}{padding}, {} ... {}",
            self.inner.get_vocab_size(true),
            self.max_tokens,
            token(self.start),
            token(self.end)
        )
    }

    pub fn encode(&self, text: &str) -> Result<Tokens, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_owned(),
                cause: e.to_string(),
            })?;
        let tokens = Tokens {
            ids: enc.get_ids().to_vec(),
            attention_mask: enc
                .get_attention_mask()
                .iter()
                .map(|m| (*m != 0) as u8)
                .collect(),
            dropped: 0,
        };
        let dropped = tokens.attended().saturating_sub(self.max_tokens);
        Ok(Tokens { dropped, ..tokens })
    }
}

/// The special tokens before and after the text in one encoding: the first of the
/// leading special tokens and the first of the trailing ones (padding ignored).
fn wrapping(ids: &[u32], special: &[u32], attended: &[u32]) -> (Option<u32>, Option<u32>) {
    let live: Vec<(u32, bool)> = ids
        .iter()
        .zip(special)
        .zip(attended)
        .filter(|(_, a)| **a != 0)
        .map(|((id, s), _)| (*id, *s != 0))
        .collect();
    let lead = live.iter().take_while(|(_, s)| *s).count();
    if lead == live.len() {
        // Only special tokens (the probe tokenized to nothing): the first opens, the
        // last closes, when there are two.
        return match live.as_slice() {
            [] => (None, None),
            [only] => (None, Some(only.0)),
            [first, .., last] => (Some(first.0), Some(last.0)),
        };
    }
    let trail = live.iter().rev().take_while(|(_, s)| *s).count();
    let start = (lead > 0).then(|| live[0].0);
    let end = (trail > 0).then(|| live[live.len() - trail].0);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_finds_the_tokens_around_the_text() {
        // <s> a photo </s> <pad> <pad>
        assert_eq!(
            wrapping(
                &[9, 1, 2, 8, 8, 8],
                &[1, 0, 0, 1, 1, 1],
                &[1, 1, 1, 1, 0, 0]
            ),
            (Some(9), Some(8))
        );
        // T5: text </s>
        assert_eq!(
            wrapping(&[1, 2, 8], &[0, 0, 1], &[1, 1, 1]),
            (None, Some(8))
        );
        // no template at all
        assert_eq!(wrapping(&[1, 2], &[0, 0], &[1, 1]), (None, None));
        // left padding is skipped
        assert_eq!(
            wrapping(&[0, 9, 1, 8], &[1, 1, 0, 1], &[0, 1, 1, 1]),
            (Some(9), Some(8))
        );
        assert_eq!(wrapping(&[9, 8], &[1, 1], &[1, 1]), (Some(9), Some(8)));
    }
}
