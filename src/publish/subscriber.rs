//! One connected client: its subscription, its pending control reply, its
//! drop counter, and the non-blocking send that never waits for it.
//!
//! Leaves out parsing (wire) and deciding what to send (server).

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use super::sndbuf::QueueSizer;
use super::sock;
use crate::config::MaskEncoding;
use crate::contracts::PromptId;

/// What became of one frame for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Sent,
    /// Its queue was full (or a control reply was still waiting): frame dropped.
    Dropped,
    /// Gone (EPIPE, ECONNRESET, ...): to be reaped by the next `service`.
    Dead,
}

pub(crate) struct Subscriber {
    pub fd: OwnedFd,
    /// Connection number, for logs.
    pub id: u64,
    /// `Some` once it subscribed; frames go only to subscribed clients.
    pub encoding: Option<MaskEncoding>,
    /// One entry per reference taken with `PromptDirectory::intern`, duplicates
    /// included, so that each is released exactly once.
    pub prompts: Vec<PromptId>,
    /// Frames dropped since the last delivered FRAME (goes into its header).
    pub dropped_since: u32,
    pub sent: u64,
    pub dropped: u64,
    /// A control reply the socket had no room for. Sent before anything else;
    /// while it waits, no further control message is read from this client.
    pub reply: Vec<u8>,
    pub dead: bool,
    /// Message length its send buffer was sized for (0 = not yet).
    pub sized_for: usize,
    /// Warned once that its queue is capped below `queue_depth` / a message can't fit.
    pub warned: bool,
}

impl Subscriber {
    pub fn new(fd: OwnedFd, id: u64) -> Subscriber {
        Subscriber {
            fd,
            id,
            encoding: None,
            prompts: Vec::new(),
            dropped_since: 0,
            sent: 0,
            dropped: 0,
            reply: Vec::new(),
            dead: false,
            sized_for: 0,
            warned: false,
        }
    }

    /// Live and subscribed: it gets frames.
    pub fn wants_frames(&self) -> bool {
        !self.dead && self.encoding.is_some()
    }

    /// Subscribed to `id` (in any encoding).
    pub fn wants(&self, id: PromptId) -> bool {
        self.prompts.contains(&id)
    }

    /// Tries to send the pending control reply; `true` when none is left.
    pub fn flush_reply(&mut self) -> bool {
        if self.reply.is_empty() {
            return true;
        }
        match sock::send_nonblocking(self.fd.as_fd(), &self.reply) {
            Ok(_) => {
                self.reply.clear();
                true
            }
            Err(Errno::EAGAIN) => false,
            Err(e) => {
                self.die(e);
                false
            }
        }
    }

    /// Sends `msg` (already in `self.reply`'s place) as a control reply,
    /// keeping it pending if the socket is full.
    pub fn queue_reply(&mut self, msg: &[u8]) {
        self.reply.clear();
        self.reply.extend_from_slice(msg);
        self.flush_reply();
    }

    /// Sends one FRAME without waiting; resizes the send buffer first when the
    /// message size moved out of the range it was sized for.
    pub fn send_frame(&mut self, msg: &[u8], sizer: &mut QueueSizer) -> Delivery {
        if !self.flush_reply() {
            return self.count_drop();
        }
        if msg.len() > self.sized_for || msg.len() < self.sized_for / 2 {
            let sizing = sizer.size(self.fd.as_fd(), msg.len());
            self.sized_for = sizing.sized_for;
            if sizing.clamped() && !self.warned {
                self.warned = true;
                log::warn!(
                    "client {}: a queue of {}-byte frames needs SO_SNDBUF {} but net.core.wmem_max allows {}; \
                     fewer frames are queued (raise net.core.wmem_max, grant CAP_NET_ADMIN, or use the rle encoding)",
                    self.id,
                    msg.len(),
                    sizing.wanted,
                    sizing.effective
                );
            }
        }
        match sock::send_nonblocking(self.fd.as_fd(), msg) {
            Ok(_) => {
                self.sent += 1;
                self.dropped_since = 0;
                Delivery::Sent
            }
            Err(Errno::EAGAIN) => self.count_drop(),
            Err(Errno::EMSGSIZE) => {
                if !self.warned {
                    self.warned = true;
                    log::warn!(
                        "client {}: a {}-byte frame exceeds its socket buffer (capped by net.core.wmem_max); \
                         such frames are dropped",
                        self.id,
                        msg.len()
                    );
                }
                self.count_drop()
            }
            Err(e) => {
                self.die(e);
                Delivery::Dead
            }
        }
    }

    pub fn count_drop(&mut self) -> Delivery {
        if self.dead {
            return Delivery::Dead;
        }
        self.dropped += 1;
        self.dropped_since = self.dropped_since.saturating_add(1);
        Delivery::Dropped
    }

    pub fn die(&mut self, why: Errno) {
        if !self.dead {
            log::info!("client {}: gone ({why})", self.id);
            self.dead = true;
        }
    }
}
