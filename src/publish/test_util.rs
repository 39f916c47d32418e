//! Test fixtures for the publisher: a prompt directory that counts
//! references, temp dirs, configs, mask sets and a raw non-blocking client.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;

use super::sock;
use super::wire::{self, ServerMessage};
use crate::config::PublishConfig;
use crate::contracts::PromptDirectory;
use crate::contracts::{Mask, MaskSet, PromptId};

/// Interns texts to ids 100, 101, ... and counts references; texts starting
/// with "reject" are refused.
#[derive(Default)]
pub(crate) struct FakeDirectory {
    pub ids: HashMap<String, PromptId>,
    pub refs: HashMap<PromptId, i64>,
}

impl FakeDirectory {
    pub fn refs(&self, text: &str) -> i64 {
        self.ids
            .get(text)
            .and_then(|id| self.refs.get(id))
            .copied()
            .unwrap_or(0)
    }
    pub fn total_refs(&self) -> i64 {
        self.refs.values().sum()
    }
}

impl PromptDirectory for FakeDirectory {
    fn intern(&mut self, text: &str) -> Result<PromptId, String> {
        if text.starts_with("reject") {
            return Err("the directory is full".into());
        }
        let next = 100 + self.ids.len() as PromptId;
        let id = *self.ids.entry(text.to_owned()).or_insert(next);
        *self.refs.entry(id).or_default() += 1;
        Ok(id)
    }
    fn release(&mut self, id: PromptId) {
        let r = self.refs.entry(id).or_default();
        *r -= 1;
        assert!(*r >= 0, "prompt {id} released more often than interned");
    }
    fn text(&self, id: PromptId) -> Option<&str> {
        self.ids
            .iter()
            .find(|(_, &i)| i == id)
            .map(|(t, _)| t.as_str())
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "maskd-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn config(socket: &Path) -> PublishConfig {
    PublishConfig {
        socket: socket.to_owned(),
        mode: 0o660,
        group: None,
        max_clients: 8,
        queue_depth: 2,
        allow_uids: None,
        allow_gids: None,
    }
}

/// A frame of `w`×`h` masks: prompt `id` gets a filled rectangle whose size depends on `id`.
pub(crate) fn frame(seq: u64, w: u32, h: u32, ids: &[PromptId]) -> MaskSet {
    let masks: Vec<Mask> = ids
        .iter()
        .map(|&id| Mask {
            prompt_id: id,
            score: 0.5 + id as f32 / 1000.0,
            coverage: 0.25,
            bits: pattern(id, w, h),
        })
        .collect();
    MaskSet {
        seq,
        capture_ns: 1_000_000_000 * seq,
        frame_width: 640,
        frame_height: 480,
        width: w,
        height: h,
        len: masks.len(),
        masks,
    }
}

/// The bits `frame` gives prompt `id`.
pub(crate) fn pattern(id: PromptId, w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let k = id as usize % 7 + 1;
    (0..w * h)
        .map(|i| u8::from((i % w) % (k + 1) == 0 || (i / w) < h / k))
        .collect()
}

/// A raw client for single-threaded tests: the publisher's replies are
/// already queued when `service` returns, so reads never wait.
pub(crate) struct RawClient {
    pub fd: OwnedFd,
    pub buf: Vec<u8>,
}

pub(crate) enum Got<'a> {
    Msg(ServerMessage<'a>),
    Nothing,
    Closed,
}

impl RawClient {
    pub fn connect(path: &Path) -> RawClient {
        RawClient {
            fd: sock::connect(path, false).unwrap(),
            buf: Vec::new(),
        }
    }
    pub fn send(&self, msg: &[u8]) {
        sock::send_blocking(self.fd.as_fd(), msg).unwrap();
    }
    pub fn subscribe(&self, encoding: Option<crate::config::MaskEncoding>, prompts: &[&str]) {
        let mut out = Vec::new();
        wire::write_subscribe(&mut out, encoding, prompts).unwrap();
        self.send(&out);
    }
    /// The next queued message without waiting.
    pub fn try_recv(&mut self) -> Got<'_> {
        match sock::recv_message(self.fd.as_fd(), &mut self.buf, true) {
            Ok(Some(_)) => Got::Msg(wire::parse_server(&self.buf).unwrap()),
            Ok(None) | Err(Errno::ECONNRESET) => Got::Closed,
            Err(Errno::EAGAIN) => Got::Nothing,
            Err(e) => panic!("recv: {e}"),
        }
    }
}
