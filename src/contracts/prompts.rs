//! How the publisher reaches whoever owns prompts (the engine's registry).

use super::PromptId;

/// What the publisher needs from whoever owns prompts (the engine's registry):
/// clients name prompts by text, the wire carries ids.
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
