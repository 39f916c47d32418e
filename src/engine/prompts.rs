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
use crate::engine::text::{EncoderWorker, Request, Response, Tokenizer, Tokens};

/// Longer prompt texts are refused before tokenizing (bounds the work a client can ask for).
pub const MAX_PROMPT_BYTES: usize = 1024;

/// Why waiting for prompts' embeddings did not end with all of them ready.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WaitError {
    /// The encoder's own error: the graph, the node that failed and why.
    #[error("prompt {id} {text:?}: text encoder: {reason}")]
    Failed {
        id: PromptId,
        text: String,
        reason: String,
    },
    #[error("{pending} prompt(s) not encoded within {timeout:?}")]
    TimedOut { pending: usize, timeout: Duration },
    #[error("prompt {id} is not live")]
    NotLive { id: PromptId },
}

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
    tokens: Tokens,
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
    pub fn wait_for_pinned(&mut self, timeout: Duration) -> Result<(), WaitError> {
        self.wait_until_encoded(timeout, |_, e| e.pinned)
    }

    /// Blocks until each of `ids` has its embedding (or failed), at most `timeout`.
    pub fn wait_for(&mut self, ids: &[PromptId], timeout: Duration) -> Result<(), WaitError> {
        if let Some(&id) = ids.iter().find(|id| !self.entries.contains_key(id)) {
            return Err(WaitError::NotLive { id });
        }
        self.wait_until_encoded(timeout, |id, _| ids.contains(&id))
    }

    /// Blocks until no entry that `wanted` selects is pending, at most `timeout`; then
    /// the first selected failure (with the encoder's own error), or how many are still
    /// pending.
    fn wait_until_encoded(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(PromptId, &Entry) -> bool,
    ) -> Result<(), WaitError> {
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
        let selected = || self.entries.iter().filter(|(&id, e)| wanted(id, e));
        if let Some((&id, e)) =
            selected().find(|(_, e)| matches!(e.embedding, Embedding::Failed(_)))
        {
            let reason = match &e.embedding {
                Embedding::Failed(r) => r.clone(),
                _ => String::new(),
            };
            return Err(WaitError::Failed {
                id,
                text: e.text.clone(),
                reason,
            });
        }
        match selected()
            .filter(|(_, e)| e.embedding == Embedding::Pending)
            .count()
        {
            0 => Ok(()),
            pending => Err(WaitError::TimedOut { pending, timeout }),
        }
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

    /// Reload of `prompts.text`: `texts` become the pinned prompts. A text already live
    /// (pinned before, or asked for by a client) keeps its id, so no subscriber sees
    /// its masks change identity; a new one gets a fresh id; a formerly pinned prompt
    /// no client references is forgotten. Checked in full before anything changes:
    /// on an error the running set is untouched.
    pub fn set_pinned(&mut self, texts: &[String], max_prompts: usize) -> Result<(), String> {
        let mut wanted: Vec<&str> = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let trimmed = text.trim();
            if let Some(first) = wanted.iter().position(|w| *w == trimmed) {
                return Err(format!("prompt {i} {text:?} repeats prompt {first}"));
            }
            if !self.by_text.contains_key(trimmed) {
                self.check_new(trimmed)
                    .map_err(|e| format!("prompt {i} {text:?}: {e}"))?;
            }
            wanted.push(trimmed);
        }
        let max = max_prompts.max(texts.len());
        let kept = self
            .entries
            .values()
            .filter(|e| e.refs > 0 || wanted.contains(&e.text.as_str()))
            .count();
        let added = wanted
            .iter()
            .filter(|w| !self.by_text.contains_key(**w))
            .count();
        if kept + added > max {
            return Err(format!(
                "{} prompts would be live with the clients' own, prompts.max_prompts is {max_prompts}",
                kept + added
            ));
        }

        self.max_prompts = max;
        let unpinned: Vec<PromptId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.pinned && !wanted.contains(&e.text.as_str()))
            .map(|(id, _)| *id)
            .collect();
        for id in unpinned {
            if let Some(e) = self.entries.get_mut(&id) {
                e.pinned = false;
                if e.refs == 0 {
                    self.forget(id);
                }
            }
        }
        for text in wanted {
            match self.by_text.get(text) {
                Some(&id) => {
                    if let Some(e) = self.entries.get_mut(&id) {
                        e.pinned = true;
                    }
                }
                None => {
                    self.add(text, true)?;
                }
            }
        }
        Ok(())
    }

    /// Live prompts by id and text: what a new model must encode before it takes over.
    pub fn snapshot(&self) -> Vec<(PromptId, String)> {
        self.entries
            .iter()
            .map(|(id, e)| (*id, e.text.clone()))
            .collect()
    }

    /// A model swap: the new model's tokenizer and encoder take over every live prompt,
    /// ids, references and pins unchanged. `encoded` holds embeddings the new encoder
    /// already made for a [`PromptRegistry::snapshot`]; every other prompt is
    /// re-tokenized and queued. A prompt too long for the new tokenizer fails (logged)
    /// instead of running with the old model's embedding, which the new model cannot read.
    pub fn replace_encoder(
        &mut self,
        tokenizer: Tokenizer,
        worker: EncoderWorker,
        encoded: Vec<Response>,
    ) {
        self.tokenizer = tokenizer;
        self.worker = worker;
        self.backlog.clear();
        let mut encoded: HashMap<PromptId, Result<Vec<f32>, String>> =
            encoded.into_iter().map(|r| (r.id, r.result)).collect();
        for (&id, entry) in self.entries.iter_mut() {
            let tokens = match self.tokenizer.encode(&entry.text) {
                Ok(t) if t.dropped > 0 => Err(format!(
                    "prompt is {} tokens long, the new model takes at most {}",
                    self.tokenizer.max_tokens() + t.dropped,
                    self.tokenizer.max_tokens()
                )),
                Ok(t) => Ok(t),
                Err(e) => Err(e.to_string()),
            };
            let tokens = match tokens {
                Ok(t) => t,
                Err(reason) => {
                    log::error!("prompt {id} {:?}: {reason}", entry.text);
                    entry.embedding = Embedding::Failed(reason);
                    continue;
                }
            };
            entry.tokens = tokens;
            entry.embedding = match encoded.remove(&id) {
                Some(Ok(v)) => Embedding::Ready(v),
                Some(Err(e)) => Embedding::Failed(e),
                None => {
                    self.backlog.push_back(id);
                    Embedding::Pending
                }
            };
        }
        self.generation += 1;
        self.feed();
    }

    /// The checks `add` makes on a new text, without adding it; its tokens on success.
    fn check_new(&self, text: &str) -> Result<Tokens, String> {
        if text.is_empty() {
            return Err("prompt is empty".into());
        }
        if text.len() > MAX_PROMPT_BYTES {
            return Err(format!(
                "prompt is {} bytes long, at most {MAX_PROMPT_BYTES} are accepted",
                text.len()
            ));
        }
        let tokens = self.tokenizer.encode(text).map_err(|e| e.to_string())?;
        if tokens.dropped > 0 {
            // Both tokenizers stop at the limit, so the length is the limit plus the rest.
            return Err(format!(
                "prompt is {} tokens long, the model takes at most {}",
                self.tokenizer.max_tokens() + tokens.dropped,
                self.tokenizer.max_tokens()
            ));
        }
        Ok(tokens)
    }

    fn forget(&mut self, id: PromptId) {
        if let Some(e) = self.entries.remove(&id) {
            self.by_text.remove(&e.text);
            if matches!(e.embedding, Embedding::Ready(_)) {
                self.generation += 1;
            }
        }
    }

    fn add(&mut self, text: &str, pinned: bool) -> Result<PromptId, String> {
        let tokens = self.check_new(text)?;
        if self.entries.len() >= self.max_prompts {
            return Err(format!(
                "too many prompts: {} are live (prompts.max_prompts)",
                self.entries.len()
            ));
        }
        let id = self.next_id;
        self.next_id = id
            .checked_add(1)
            .ok_or("prompt ids exhausted; restart the daemon")?;
        let entry = Entry {
            text: text.to_owned(),
            tokens,
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
        self.forget(id);
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
        let tok = Tokenizer::load(&m.text).unwrap();
        let worker = EncoderWorker::spawn(TextEncoder::load(&m, &tok).unwrap()).unwrap();
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
        reg.wait_for_pinned(Duration::from_secs(30)).unwrap();
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

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reloaded_pinned_prompts_keep_live_ids_and_drop_unreferenced_ones() {
        let mut reg = registry(&["red", "blue"], 8).unwrap();
        let client = reg.intern("green").unwrap();
        reg.wait_for_pinned(Duration::from_secs(30)).unwrap();
        reg.set_pinned(&texts(&["blue", "green", "yellow"]), 8)
            .unwrap();
        // "red" was pinned only: gone. "blue" keeps id 1, the client's "green" keeps its
        // id and is now pinned, "yellow" is new with a fresh id.
        assert_eq!(reg.text(0), None);
        assert_eq!(reg.text(1), Some("blue"));
        assert_eq!(reg.text(client), Some("green"));
        let yellow = reg.intern("yellow").unwrap();
        assert!(yellow > client);
        reg.release(client);
        assert_eq!(reg.text(client), Some("green"), "pinned by the reload");
        reg.wait_for_pinned(Duration::from_secs(30)).unwrap();
        let ids: Vec<PromptId> = reg.runnable().map(|(id, _)| id).collect();
        assert_eq!(ids, [1, client, yellow]);
        // Unpinned while a client still holds it: stays until released.
        let held = reg.intern("blue").unwrap();
        reg.set_pinned(&texts(&["green"]), 8).unwrap();
        assert_eq!(reg.text(held), Some("blue"));
        reg.release(held);
        assert_eq!(reg.text(held), None);
    }

    #[test]
    fn a_rejected_pinned_reload_changes_nothing() {
        let mut reg = registry(&["red"], 3).unwrap();
        let _client = reg.intern("blue").unwrap();
        for (bad, why) in [
            (
                texts(&["red", " red"]),
                "prompt 1 \" red\" repeats prompt 0",
            ),
            (texts(&["red", ""]), "prompt 1 \"\": prompt is empty"),
            (
                texts(&["red", "a b c d e f g h i j k l m n o p q"]),
                "tokens long",
            ),
            (
                texts(&["x", "y", "z"]),
                "4 prompts would be live with the clients' own, prompts.max_prompts is 3",
            ),
        ] {
            let err = reg.set_pinned(&bad, 3).unwrap_err();
            assert!(err.contains(why), "{err}");
            assert_eq!(reg.snapshot(), [(0, "red".into()), (1, "blue".into())]);
        }
    }

    #[test]
    fn a_new_encoder_takes_over_every_prompt_with_its_id() {
        let mut reg = registry(&["red"], 8).unwrap();
        let client = reg.intern("blue").unwrap();
        reg.wait_for(&[0, client], Duration::from_secs(30)).unwrap();
        let before: Vec<(PromptId, Vec<f32>)> =
            reg.runnable().map(|(id, v)| (id, v.to_vec())).collect();

        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml");
        let m = Manifest::load(&path).unwrap();
        let tok = Tokenizer::load(&m.text).unwrap();
        let mut encoder = TextEncoder::load(&m, &tok).unwrap();
        // The new encoder made "red" ahead of the swap; "blue" it has to queue.
        let red = encoder.encode(&tok.encode("red").unwrap()).unwrap();
        let worker = EncoderWorker::spawn(encoder).unwrap();
        let g = reg.generation();
        reg.replace_encoder(
            tok,
            worker,
            vec![Response {
                id: 0,
                result: Ok(red.clone()),
            }],
        );
        assert_ne!(reg.generation(), g);
        assert_eq!(reg.embedding(0), Some(&Embedding::Ready(red)));
        assert_eq!(reg.embedding(client), Some(&Embedding::Pending));
        wait_ready(&mut reg, client);
        let after: Vec<(PromptId, Vec<f32>)> =
            reg.runnable().map(|(id, v)| (id, v.to_vec())).collect();
        assert_eq!(after, before, "same model, same ids, same embeddings");
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
