//! Prompt text -> embedding: the tokenizer (maskd's WordPiece for a `vocab.txt`,
//! `tokenizers` for a `tokenizer.json`), the encoder graph with its pooling, and the
//! worker thread that runs it off the frame loop.

pub mod encoder;
pub mod json;
pub mod tokenizer;
pub mod wordpiece;
pub mod worker;

pub use encoder::TextEncoder;
pub use tokenizer::{Tokenizer, TokenizerError, Tokens};
pub use worker::{EncoderWorker, Request, Response, WorkerGone};

#[cfg(test)]
mod tests;
