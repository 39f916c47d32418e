//! The prompt registry: which prompts are alive, their ids, and their embeddings.
//!
//! Prompts are interned by their text after trimming, so two clients asking for
//! "red circle" share one id and one inference. Each `intern` takes a reference and each
//! `release` drops one; a client prompt no one references is forgotten, while the
//! config's prompts are pinned with ids `0..n` and live forever. Ids are never reused
//! within a run, so a subscriber can not mistake a new prompt's masks for an old one's.
//!
//! Tokenizing happens in `intern` (microseconds, and it lets an over-long prompt be
//! refused with a message); embedding happens on the encoder worker. A prompt is run by
//! the engine from the first frame after its embedding arrives ([`PromptRegistry::poll`]).
//! Requests the worker's queue cannot take yet wait in a backlog bounded by `max_prompts`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::contracts::PromptDirectory;
use crate::contracts::PromptId;
use crate::engine::text::{EncoderWorker, Request, Response, Tokenizer};

/// Longer prompt texts are refused before tokenizing (bounds the work a client can ask for).
pub const MAX_PROMPT_BYTES: usize = 1024;

/// Where a prompt's embedding stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Embedding {
    /// Waiting for (or in) the encoder.
    Pending,
    Ready(Vec<f32>),
    /// The encoder failed; the prompt is never run.
    Failed(String),
}

#[derive(Debug)]
struct Entry {
    text: String,
    tokens: Vec<u32>,
    /// References taken by `intern` and not yet released.
    refs: u32,
    /// From the config: never forgotten.
    pinned: bool,
    embedding: Embedding,
}

#[derive(Debug)]
pub struct PromptRegistry {
    tokenizer: Tokenizer,
    worker: EncoderWorker,
    /// By id, so masks come out in id order (config prompts first).
    entries: BTreeMap<PromptId, Entry>,
    by_text: HashMap<String, PromptId>,
    next_id: PromptId,
    max_prompts: usize,
    /// Prompts not yet handed to the worker (its queue was full).
    backlog: VecDeque<PromptId>,
    /// Bumped whenever the set of runnable prompts (those with an embedding) changes.
    generation: u64,
}

impl PromptRegistry {
    /// A registry with `pinned` texts (the config's prompts) registered as ids `0..n` and
    /// queued for encoding. Fails on an empty, over-long or repeated pinned prompt.
    pub fn new(
        tokenizer: Tokenizer,
        worker: EncoderWorker,
        pinned: &[String],
        max_prompts: usize,
    ) -> Result<PromptRegistry, String> {
        let mut reg = PromptRegistry {
            tokenizer,
            worker,
            entries: BTreeMap::new(),
            by_text: HashMap::new(),
            next_id: 0,
            max_prompts: max_prompts.max(pinned.len()),
            backlog: VecDeque::new(),
            generation: 0,
        };
        for (i, text) in pinned.iter().enumerate() {
            let trimmed = text.trim();
            if let Some(&first) = reg.by_text.get(trimmed) {
                return Err(format!("prompt {i} {text:?} repeats prompt {first}"));
            }
            let id = reg
                .add(trimmed, true)
                .map_err(|e| format!("prompt {i} {text:?}: {e}"))?;
            debug_assert_eq!(id as usize, i);
        }
        Ok(reg)
    }

    /// Collects finished embeddings and feeds the worker; call once per frame (cheap when
    /// nothing happened). Returns true if the set of runnable prompts changed.
    pub fn poll(&mut self) -> bool {
        let before = self.generation;
        while let Some(resp) = self.worker.try_recv() {
            self.accept(resp);
        }
        self.feed();
        self.generation != before
    }

    /// Blocks until every pinned prompt has its embedding (or failed), at most `timeout`.
    /// Returns true if all pinned prompts are ready.
    pub fn wait_for_pinned(&mut self, timeout: Duration) -> bool {
        self.wait_until_encoded(timeout, |_, e| e.pinned)
    }

    /// Blocks until each of `ids` has its embedding (or failed), at most `timeout`.
    /// Returns true if all of them are ready; an id that is not live is not ready.
    pub fn wait_for(&mut self, ids: &[PromptId], timeout: Duration) -> bool {
        self.wait_until_encoded(timeout, |id, _| ids.contains(&id))
            && ids.iter().all(|id| self.entries.contains_key(id))
    }

    /// Blocks until no entry that `wanted` selects is pending, at most `timeout`; true if
    /// every selected entry is ready.
    fn wait_until_encoded(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(PromptId, &Entry) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            let pending = self
                .entries
                .iter()
                .any(|(&id, e)| wanted(id, e) && e.embedding == Embedding::Pending);
            if !pending {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.worker.recv_timeout(left) {
                Ok(Some(resp)) => self.accept(resp),
                Ok(None) => {}
                Err(e) => {
                    log::error!("{e}");
                    break;
                }
            }
        }
        self.entries
            .iter()
            .filter(|(&id, e)| wanted(id, e))
            .all(|(_, e)| matches!(e.embedding, Embedding::Ready(_)))
    }

    /// Changes whenever the runnable set changes (compare to know when to rebuild inputs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Prompts with an embedding, in id order.
    pub fn runnable(&self) -> impl Iterator<Item = (PromptId, &[f32])> {
        self.entries
            .iter()
            .filter_map(|(id, e)| match &e.embedding {
                Embedding::Ready(v) => Some((*id, v.as_slice())),
                _ => None,
            })
    }

    /// A live prompt's embedding state.
    pub fn embedding(&self, id: PromptId) -> Option<&Embedding> {
        self.entries.get(&id).map(|e| &e.embedding)
    }

    /// Live prompts (pinned + referenced).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn add(&mut self, text: &str, pinned: bool) -> Result<PromptId, String> {
        if text.is_empty() {
            return Err("prompt is empty".into());
        }
        if text.len() > MAX_PROMPT_BYTES {
            return Err(format!(
                "prompt is {} bytes long, at most {MAX_PROMPT_BYTES} are accepted",
                text.len()
            ));
        }
        if self.entries.len() >= self.max_prompts {
            return Err(format!(
                "too many prompts: {} are live (prompts.max_prompts)",
                self.entries.len()
            ));
        }
        let tokens = self.tokenizer.encode(text);
        if tokens.dropped > 0 {
            return Err(format!(
                "prompt is {} tokens long, the model takes at most {}",
                tokens.ids.len() + tokens.dropped,
                self.tokenizer.max_tokens()
            ));
        }
        let id = self.next_id;
        self.next_id = id
            .checked_add(1)
            .ok_or("prompt ids exhausted; restart the daemon")?;
        let entry = Entry {
            text: text.to_owned(),
            tokens: tokens.ids,
            refs: 0,
            pinned,
            embedding: Embedding::Pending,
        };
        self.entries.insert(id, entry);
        self.by_text.insert(text.to_owned(), id);
        self.backlog.push_back(id);
        self.feed();
        Ok(id)
    }

    fn accept(&mut self, resp: Response) {
        // A prompt released while it was being encoded is simply gone.
        let Some(entry) = self.entries.get_mut(&resp.id) else {
            return;
        };
        match resp.result {
            Ok(v) => {
                log::debug!("prompt {} {:?} is ready", resp.id, entry.text);
                entry.embedding = Embedding::Ready(v);
                self.generation += 1;
            }
            Err(e) => {
                log::error!(
                    "prompt {} {:?}: text encoder failed: {e}",
                    resp.id,
                    entry.text
                );
                entry.embedding = Embedding::Failed(e);
            }
        }
    }

    /// Hands backlog prompts to the worker until its queue is full.
    fn feed(&mut self) {
        while let Some(&id) = self.backlog.front() {
            let Some(entry) = self.entries.get(&id) else {
                self.backlog.pop_front();
                continue;
            };
            match self.worker.try_submit(Request {
                id,
                tokens: entry.tokens.clone(),
            }) {
                Ok(None) => {
                    self.backlog.pop_front();
                }
                Ok(Some(_)) => break,
                Err(e) => {
                    log::error!("prompt {id}: {e}");
                    if let Some(entry) = self.entries.get_mut(&id) {
                        entry.embedding = Embedding::Failed(e.to_string());
                    }
                    self.backlog.pop_front();
                }
            }
        }
    }
}

impl PromptDirectory for PromptRegistry {
    fn intern(&mut self, text: &str) -> Result<PromptId, String> {
        let text = text.trim();
        let id = match self.by_text.get(text) {
            Some(&id) => id,
            None => self.add(text, false)?,
        };
        if let Some(e) = self.entries.get_mut(&id) {
            e.refs = e.refs.saturating_add(1);
        }
        Ok(id)
    }

    fn release(&mut self, id: PromptId) {
        let Some(e) = self.entries.get_mut(&id) else {
            log::debug!("release of unknown prompt {id}");
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 || e.pinned {
            return;
        }
        if let Some(e) = self.entries.remove(&id) {
            self.by_text.remove(&e.text);
            if matches!(e.embedding, Embedding::Ready(_)) {
                self.generation += 1;
            }
        }
    }

    fn text(&self, id: PromptId) -> Option<&str> {
        self.entries.get(&id).map(|e| e.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manifest::Manifest;
    use crate::engine::text::TextEncoder;
    use std::path::Path;

    fn registry(pinned: &[&str], max: usize) -> Result<PromptRegistry, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml");
        let m = Manifest::load(&path).unwrap();
        let tok = Tokenizer::from_vocab_file(&m.text.vocab, true, m.text.max_tokens).unwrap();
        let worker = EncoderWorker::spawn(TextEncoder::load(&m).unwrap()).unwrap();
        let pinned: Vec<String> = pinned.iter().map(|s| s.to_string()).collect();
        PromptRegistry::new(tok, worker, &pinned, max)
    }

    fn wait_ready(reg: &mut PromptRegistry, id: PromptId) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(reg.embedding(id), Some(Embedding::Ready(_))) {
            assert!(Instant::now() < deadline, "prompt {id} never became ready");
            reg.poll();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn pinned_prompts_get_ids_in_order_and_become_runnable() {
        let mut reg = registry(&["red circle", " blue square "], 8).unwrap();
        assert_eq!(reg.text(1), Some("blue square"));
        assert!(reg.wait_for_pinned(Duration::from_secs(30)));
        let ids: Vec<PromptId> = reg.runnable().map(|(id, _)| id).collect();
        assert_eq!(ids, [0, 1]);
        assert!(reg.runnable().all(|(_, v)| v.len() == 16));
        // releasing a pinned prompt never removes it
        assert_eq!(reg.intern("red circle"), Ok(0));
        reg.release(0);
        reg.release(0);
        assert_eq!(reg.text(0), Some("red circle"));
    }

    #[test]
    fn interning_shares_ids_and_refcounts() {
        let mut reg = registry(&[], 8).unwrap();
        let a = reg.intern("green star").unwrap();
        assert_eq!(reg.intern("  green star\n"), Ok(a));
        let b = reg.intern("a star").unwrap();
        assert_ne!(a, b);
        wait_ready(&mut reg, a);
        wait_ready(&mut reg, b);
        let g = reg.generation();
        reg.release(a);
        assert_eq!(reg.text(a), Some("green star"), "one reference is left");
        reg.release(a);
        assert_eq!(reg.text(a), None);
        assert_ne!(reg.generation(), g, "a runnable prompt went away");
        // a released text comes back with a fresh id
        let c = reg.intern("green star").unwrap();
        assert!(c > b);
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn refuses_bad_prompts_with_reasons() {
        let mut reg = registry(&["red"], 2).unwrap();
        assert_eq!(reg.intern("   "), Err("prompt is empty".to_owned()));
        let long = "red ".repeat(20);
        assert_eq!(
            reg.intern(&long),
            Err("prompt is 22 tokens long, the model takes at most 16".to_owned())
        );
        assert!(reg
            .intern(&"x".repeat(2000))
            .unwrap_err()
            .contains("bytes long"));
        reg.intern("blue").unwrap();
        assert_eq!(
            reg.intern("green"),
            Err("too many prompts: 2 are live (prompts.max_prompts)".to_owned())
        );
        // a known prompt is still fine at the limit
        assert_eq!(reg.intern("red"), Ok(0));
    }

    #[test]
    fn repeated_or_empty_pinned_prompts_are_config_errors() {
        assert_eq!(
            registry(&["red", " red"], 4).unwrap_err(),
            "prompt 1 \" red\" repeats prompt 0"
        );
        assert_eq!(
            registry(&[""], 4).unwrap_err(),
            "prompt 0 \"\": prompt is empty"
        );
    }

    #[test]
    fn a_burst_beyond_the_worker_queue_is_backlogged_not_lost() {
        let mut reg = registry(&[], 64).unwrap();
        let words = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
        ];
        let ids: Vec<PromptId> = words.iter().map(|w| reg.intern(w).unwrap()).collect();
        for id in &ids {
            wait_ready(&mut reg, *id);
        }
        assert_eq!(reg.runnable().count(), words.len());
    }
}
