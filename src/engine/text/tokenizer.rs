//! The prompt tokenizer `[text]` names: a `vocab.txt` run by maskd's WordPiece
//! (`wordpiece.rs`) or a `tokenizer.json` run by `tokenizers` (`json.rs`), behind one type.
//!
//! Both give [`Tokens`]: the ids with the special tokens the file wraps around a text,
//! padded as the file says, and how many tokens did not fit. A text longer than the
//! limit is never cut: the registry refuses it, saying how long it is, so the embedding
//! a client gets is always that of the text it sent.
//!
//! Leaves out: running the encoder graph (`encoder.rs`).

use std::path::PathBuf;

use crate::engine::manifest::{TextSpec, TokenizerFile, DEFAULT_MAX_TOKENS};

use super::json::JsonTokenizer;
use super::wordpiece::WordPiece;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: the vocabulary has no {token} token", path.display())]
    MissingToken { path: PathBuf, token: &'static str },
    /// The `tokenizers` crate could not read the file.
    #[error("{}: not a tokenizer.json `tokenizers` can read: {cause}", path.display())]
    Json { path: PathBuf, cause: String },
    /// The file reads, but cannot serve as the manifest asks.
    #[error("{}: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("tokenizing {text:?}: {cause}")]
    Encode { text: String, cause: String },
}

/// Token ids of one text, special tokens and padding included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// 1 for a token of the text (or a special token), 0 for padding; as long as `ids`.
    pub attention_mask: Vec<u8>,
    /// Tokens past the limit (0 when the text fits).
    pub dropped: usize,
}

impl Tokens {
    /// Every token attended (no padding).
    pub fn unpadded(ids: Vec<u32>, dropped: usize) -> Tokens {
        Tokens {
            attention_mask: vec![1; ids.len()],
            ids,
            dropped,
        }
    }

    /// Tokens the model attends to (the text and its special tokens, not the padding).
    pub fn attended(&self) -> usize {
        self.attention_mask.iter().filter(|m| **m != 0).count()
    }
}

#[derive(Debug, Clone)]
pub enum Tokenizer {
    WordPiece(WordPiece),
    Json(Box<JsonTokenizer>),
}

impl Tokenizer {
    /// The tokenizer `[text]` names, with its limit: `text.max_tokens`, else a
    /// tokenizer.json's truncation length, else [`DEFAULT_MAX_TOKENS`].
    pub fn load(text: &TextSpec) -> Result<Tokenizer, TokenizerError> {
        match &text.tokenizer {
            TokenizerFile::Vocab(path) => WordPiece::from_vocab_file(
                path,
                text.lowercase,
                text.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            )
            .map(Tokenizer::WordPiece),
            TokenizerFile::Json(path) => {
                JsonTokenizer::from_file(path, text.max_tokens).map(|t| Tokenizer::Json(t.into()))
            }
        }
    }

    /// Longest token sequence accepted, special tokens included.
    pub fn max_tokens(&self) -> usize {
        match self {
            Tokenizer::WordPiece(t) => t.max_tokens(),
            Tokenizer::Json(t) => t.max_tokens(),
        }
    }

    /// The special tokens put before and after every text (`[CLS]`/`[SEP]`,
    /// `<|startoftext|>`/`<|endoftext|>`), where the file has them.
    pub fn start_end(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Tokenizer::WordPiece(t) => {
                let (s, e) = t.start_end();
                (Some(s), Some(e))
            }
            Tokenizer::Json(t) => t.start_end(),
        }
    }

    /// One line for `maskd inspect` and the logs.
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::WordPiece(t) => format!(
                "WordPiece vocab.txt, {} tokens, at most {}",
                t.vocab_size(),
                t.max_tokens()
            ),
            Tokenizer::Json(t) => t.describe(),
        }
    }

    /// Tokenizes `text`; `dropped > 0` when it is longer than [`Tokenizer::max_tokens`].
    pub fn encode(&self, text: &str) -> Result<Tokens, TokenizerError> {
        match self {
            Tokenizer::WordPiece(t) => Ok(t.encode(text)),
            Tokenizer::Json(t) => t.encode(text),
        }
    }
}
