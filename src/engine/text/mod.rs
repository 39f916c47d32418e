//! Prompt text -> embedding: the WordPiece tokenizer, the encoder graph and the worker
//! thread that runs it off the frame loop.

pub mod encoder;
pub mod tokenizer;
pub mod worker;

pub use encoder::TextEncoder;
pub use tokenizer::{Tokenizer, TokenizerError, Tokens};
pub use worker::{EncoderWorker, Request, Response, WorkerGone};
