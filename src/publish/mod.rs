//! Publish: the Unix socket server, subscribers and the wire format.
//!
//! Owns the SOCK_SEQPACKET listener ([`Publisher`]), per-client state and
//! bounded send queues, the wire format ([`wire`], `docs/PROTOCOL.md`) and the
//! client library ([`Client`]) used by `maskd subscribe` and the tests.
//! Leaves out inference and prompt bookkeeping: prompts are interned through
//! [`PromptDirectory`], which the engine implements.

#[cfg(test)]
mod alloc_tests;
mod client;
#[cfg(test)]
mod client_tests;
mod listener;
mod server;
#[cfg(test)]
mod server_tests;
mod sndbuf;
mod sock;
mod subscriber;
#[cfg(test)]
pub(crate) mod testutil;
pub mod wire;

pub use client::{Client, ClientError, FrameMessage, ReceivedMask, DEFAULT_REPLY_TIMEOUT};
pub use server::{PublishStats, Publisher};

use crate::masks::PromptId;

/// What the publisher needs from whoever owns prompts (the engine's registry):
/// clients name prompts by text, the wire carries ids.
///
/// CONTRACT between publish and engine; change only with the lead.
pub trait PromptDirectory {
    /// Returns the id of `text`, registering it (and queueing its text
    /// encoding) if new; each call takes one reference, released by `release`.
    /// Errors are shown to the client verbatim.
    fn intern(&mut self, text: &str) -> Result<PromptId, String>;
    /// Drops one reference taken by `intern`; a prompt no one references and
    /// that is not in the config stops being run.
    fn release(&mut self, id: PromptId);
    /// The text of a live prompt.
    fn text(&self, id: PromptId) -> Option<&str>;
}
