//! Publish: the Unix socket server, subscribers and the wire format.
//!
//! Owns the SOCK_SEQPACKET listener ([`Publisher`]), per-client state and
//! bounded send queues, the wire format ([`wire`], `docs/PROTOCOL.md`) and the
//! client library ([`Client`]) used by `maskd subscribe` and the tests.
//! Leaves out inference and prompt bookkeeping: prompts are interned through
//! [`crate::contracts::PromptDirectory`], which the engine implements.

mod access;
pub mod activation;
mod client;
mod listener;
mod lock;
mod refusals;
mod server;
mod sndbuf;
mod sock;
mod subscriber;
#[cfg(test)]
pub(crate) mod test_util;
#[cfg(test)]
mod tests;
pub mod wire;

pub use client::{Client, ClientError, FrameMessage, ReceivedMask, DEFAULT_REPLY_TIMEOUT};
pub use server::{PublishStats, Publisher};
