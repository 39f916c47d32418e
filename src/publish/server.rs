//! The publisher: accepts clients on the listening socket, answers their
//! control messages, and fans each frame's masks out to them.
//!
//! Runs on the frame loop's thread and never blocks it: every socket is
//! non-blocking, a client whose queue is full loses that frame (counted, and
//! reported in its next FRAME header), and a misbehaving client is answered
//! with an ERROR and dropped while the others carry on. In steady state
//! `publish` allocates nothing: encode buffers, span tables and the message
//! buffer are reused, and queue re-sizing runs only when message sizes move.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, SockFlag};

use super::access::{Access, Peer};
use super::listener::Listener;
use super::refusals::{Refusals, REFUSED_CAPACITY, REFUSED_HOLD};
use super::sndbuf::QueueSizer;
use super::sock;
use super::subscriber::{Delivery, Subscriber};
use super::wire::{self, Control, ErrorCode, FrameHeader, WireError};
use crate::config::{MaskEncoding, PublishConfig};
use crate::contracts::PromptDirectory;
use crate::contracts::{MaskSet, PromptId};
use crate::masks;

/// New connections accepted per `service` call, so a connection storm cannot stall a frame.
const MAX_ACCEPTS_PER_SERVICE: usize = 16;
/// Control messages read from one client per `service` call.
const MAX_CONTROLS_PER_SERVICE: usize = 8;

const ENCODINGS: [MaskEncoding; 3] = [
    MaskEncoding::Rle,
    MaskEncoding::CocoRle,
    MaskEncoding::Bitmask,
];

fn encoding_index(e: MaskEncoding) -> usize {
    match e {
        MaskEncoding::Rle => 0,
        MaskEncoding::CocoRle => 1,
        MaskEncoding::Bitmask => 2,
    }
}

/// Counters since the publisher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Connected clients now.
    pub clients: usize,
    /// Of those, subscribed (receiving frames) now.
    pub subscribers: usize,
    /// FRAME messages delivered, all clients.
    pub sent: u64,
    /// FRAME messages dropped because a client's queue was full, all clients.
    pub dropped: u64,
    /// Clients turned away because `max_clients` were connected.
    pub rejected: u64,
    /// Clients turned away by `publish.allow_uids`/`allow_gids`.
    pub denied: u64,
    /// Turned-away connections still held so that they can read their ERROR.
    pub refusing: usize,
}

/// One encoding's payloads for the current frame.
#[derive(Default)]
struct Encoded {
    /// Payloads back to back.
    data: Vec<u8>,
    /// Per mask of the frame (same index), its payload's range in `data`,
    /// or `None` when no client of this encoding wants it (or encoding failed).
    spans: Vec<Option<(usize, usize)>>,
}

/// The socket server. See the module docs.
pub struct Publisher {
    listener: Listener,
    access: Access,
    refusals: Refusals,
    max_clients: usize,
    default_encoding: MaskEncoding,
    clients: Vec<Subscriber>,
    next_client_id: u64,
    sizer: QueueSizer,
    /// Receive buffer for control messages, `MAX_CONTROL_LEN + 1` bytes.
    rx: Vec<u8>,
    /// Ids interned for a SUBSCRIBE in progress (swapped into the client on success).
    new_ids: Vec<PromptId>,
    /// Replies are built here before being sent or parked in the client.
    reply: Vec<u8>,
    encoded: [Encoded; 3],
    /// The FRAME being built for one client.
    msg: Vec<u8>,
    sent: u64,
    dropped: u64,
    rejected: u64,
    denied: u64,
    warned_encode: bool,
}

impl Publisher {
    /// Binds `cfg.socket`: creates the parent directory if missing, takes the
    /// lock `<socket>.lock` for the publisher's life (a second daemon on the
    /// same path fails here, naming the holder's pid), refuses to
    /// replace a live socket (someone accepts connections on it) or a
    /// non-socket, removes a stale one, applies `cfg.mode` and `cfg.group`
    /// (before listening, so no one connects under looser permissions), and
    /// listens non-blocking. The path is unlinked on `close`/drop.
    pub fn bind(cfg: &PublishConfig, default_encoding: MaskEncoding) -> anyhow::Result<Publisher> {
        let listener = Listener::bind(cfg)?;
        log::info!("listening on {}", cfg.socket.display());
        Ok(Publisher::new(listener, cfg, default_encoding))
    }

    /// Adopts a systemd-activated listening socket (`ListenSequentialPacket=`);
    /// `cfg.socket`, `mode` and `group` are then the unit's, not applied here.
    pub fn from_fd(
        fd: OwnedFd,
        cfg: &PublishConfig,
        default_encoding: MaskEncoding,
    ) -> anyhow::Result<Publisher> {
        let listener = Listener::from_fd(fd)?;
        log::info!("listening on a socket passed by the service manager");
        Ok(Publisher::new(listener, cfg, default_encoding))
    }

    fn new(listener: Listener, cfg: &PublishConfig, default_encoding: MaskEncoding) -> Publisher {
        Publisher {
            listener,
            access: Access::new(cfg),
            refusals: Refusals::new(REFUSED_CAPACITY, REFUSED_HOLD),
            max_clients: cfg.max_clients,
            default_encoding,
            clients: Vec::with_capacity(cfg.max_clients),
            next_client_id: 1,
            sizer: QueueSizer::new(cfg.queue_depth),
            rx: Vec::with_capacity(wire::MAX_CONTROL_LEN + 1),
            new_ids: Vec::with_capacity(wire::MAX_PROMPTS),
            reply: Vec::new(),
            encoded: Default::default(),
            msg: Vec::new(),
            sent: 0,
            dropped: 0,
            rejected: 0,
            denied: 0,
            warned_encode: false,
        }
    }

    /// Reload of `masks.encoding`: applies to SUBSCRIBEs from now on; a client already
    /// subscribed keeps the encoding its SUBSCRIBE was answered with.
    pub fn set_default_encoding(&mut self, encoding: MaskEncoding) {
        self.default_encoding = encoding;
    }

    /// Tests on a loaded machine hold refusals longer, so that a deadline
    /// never passes between two steps of the test.
    #[cfg(test)]
    pub(crate) fn hold_refusals_for(&mut self, hold: std::time::Duration) {
        self.refusals = Refusals::new(REFUSED_CAPACITY, hold);
    }

    /// The path this publisher bound (None for a passed fd).
    pub fn socket_path(&self) -> Option<&Path> {
        self.listener.path()
    }

    /// Non-blocking: accepts new clients (beyond `max_clients`: an ERROR and
    /// close), reads and answers control messages, and drops dead clients,
    /// releasing their prompts. Call it every loop iteration.
    ///
    /// Also, at most once a second, checks that the socket file is still the
    /// one it bound, and binds the path again (logged at warn) if it vanished
    /// or was replaced by a dead socket; not for a systemd-passed socket.
    pub fn service(&mut self, prompts: &mut dyn PromptDirectory) {
        let now = Instant::now();
        self.reap(prompts);
        self.refusals.service(now);
        if let Some(retired) = self.listener.check(now) {
            // Connections that reached the old node before it went are in its
            // backlog; take them before closing it.
            self.accept_from(Some(&retired), now);
        }
        self.accept_from(None, now);
        for c in &mut self.clients {
            serve_client(
                c,
                &mut self.rx,
                &mut self.reply,
                &mut self.new_ids,
                self.default_encoding,
                prompts,
            );
        }
        self.reap(prompts);
    }

    /// Sends this frame to every subscriber: each subscribed prompt's mask is
    /// encoded once per encoding in use, and each client gets only its own
    /// prompts' masks (those in `set`; others are simply absent). Never waits:
    /// a client whose queue is full loses this frame.
    pub fn publish(&mut self, set: &MaskSet) {
        let publish_ns = realtime_ns();
        // `MaskSet::masks` would panic on a `len` past the buffer; trust neither.
        let frame_masks = &set.masks[..set.len.min(set.masks.len())];
        let Publisher {
            clients,
            encoded,
            msg,
            sizer,
            ..
        } = self;

        for (ei, enc) in encoded.iter_mut().enumerate() {
            enc.data.clear();
            enc.spans.clear();
            let encoding = ENCODINGS[ei];
            let users = || {
                clients
                    .iter()
                    .filter(|c| c.wants_frames() && c.encoding == Some(encoding))
            };
            if users().next().is_none() {
                continue;
            }
            for m in frame_masks {
                if !users().any(|c| c.wants(m.prompt_id)) {
                    enc.spans.push(None);
                    continue;
                }
                let start = enc.data.len();
                match masks::encode(encoding, &m.bits, set.width, set.height, &mut enc.data) {
                    Ok(()) => enc.spans.push(Some((start, enc.data.len()))),
                    Err(e) => {
                        enc.data.truncate(start);
                        enc.spans.push(None);
                        if !self.warned_encode {
                            self.warned_encode = true;
                            log::warn!(
                                "frame {}: prompt {}: {e}; mask not sent",
                                set.seq,
                                m.prompt_id
                            );
                        }
                    }
                }
            }
        }

        for c in clients.iter_mut().filter(|c| c.wants_frames()) {
            let Some(encoding) = c.encoding else { continue };
            let enc = &encoded[encoding_index(encoding)];
            FrameHeader {
                seq: set.seq,
                capture_ns: set.capture_ns,
                publish_ns,
                frame_width: set.frame_width,
                frame_height: set.frame_height,
                mask_width: set.width,
                mask_height: set.height,
                mask_count: 0,
                encoding,
                dropped: c.dropped_since,
            }
            .write(msg);
            let mut count = 0u16;
            for (m, span) in frame_masks.iter().zip(&enc.spans) {
                if let Some((start, end)) = *span {
                    if c.wants(m.prompt_id) && count < u16::MAX {
                        wire::write_mask(
                            msg,
                            m.prompt_id,
                            m.score,
                            m.coverage,
                            &enc.data[start..end],
                        );
                        count += 1;
                    }
                }
            }
            msg[wire::MASK_COUNT_OFFSET..wire::MASK_COUNT_OFFSET + 2]
                .copy_from_slice(&count.to_le_bytes());
            let delivery = if msg.len() > wire::MAX_MESSAGE_LEN {
                if !c.warned {
                    c.warned = true;
                    log::warn!(
                        "client {}: {}-byte frame exceeds the protocol limit; dropped",
                        c.id,
                        msg.len()
                    );
                }
                c.count_drop()
            } else {
                c.send_frame(msg, sizer)
            };
            match delivery {
                Delivery::Sent => self.sent += 1,
                Delivery::Dropped => self.dropped += 1,
                Delivery::Dead => {}
            }
        }
    }

    pub fn stats(&self) -> PublishStats {
        PublishStats {
            clients: self.clients.len(),
            subscribers: self.clients.iter().filter(|c| c.wants_frames()).count(),
            sent: self.sent,
            dropped: self.dropped,
            rejected: self.rejected,
            denied: self.denied,
            refusing: self.refusals.len(),
        }
    }

    /// Tells every client the daemon is going away (ERROR `ShuttingDown`, if
    /// its queue has room), closes all sockets and unlinks the socket path if
    /// this publisher created it. Prompts are not released: the directory is
    /// going away too.
    pub fn close(self) {
        let mut bye = Vec::new();
        wire::write_error(
            &mut bye,
            ErrorCode::ShuttingDown,
            true,
            "maskd is shutting down",
        );
        for c in &self.clients {
            let _ = sock::send_nonblocking(c.fd.as_fd(), &bye);
        }
        log::info!("closed {} client(s)", self.clients.len());
        // Dropping closes the fds; Listener's drop unlinks the path.
    }

    /// Accepts up to `MAX_ACCEPTS_PER_SERVICE` connections from `retired` (a
    /// listening fd replaced by a rebind) or else the listener:
    /// refused ones (access, then the client limit) go to `refusals`. While the
    /// client limit is reached and `refusals` is full, connections are left in
    /// the backlog, so that each one turned away can still read why.
    fn accept_from(&mut self, retired: Option<&OwnedFd>, now: Instant) {
        let listener = match retired {
            Some(fd) => fd.as_fd(),
            None => self.listener.as_fd(),
        };
        for _ in 0..MAX_ACCEPTS_PER_SERVICE {
            if self.clients.len() >= self.max_clients && !self.refusals.has_room() {
                return;
            }
            let fd =
                match socket::accept4(listener, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => fd,
                    Err(Errno::EAGAIN) => return,
                    Err(Errno::ECONNABORTED | Errno::EINTR) => continue,
                    Err(e) => {
                        // EMFILE/ENFILE/ENOMEM: retry on the next service call.
                        log::warn!("accept: {e}");
                        return;
                    }
                };
            let id = self.next_client_id;
            self.next_client_id += 1;
            let peer = socket::getsockopt(&fd, sockopt::PeerCredentials).map(|c| Peer {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            });
            let who = match &peer {
                Ok(p) => format!("pid {} uid {} gid {}", p.pid, p.uid, p.gid),
                Err(e) => format!("unknown peer ({e})"),
            };
            if let Err(why) = self.access.check(peer.ok()) {
                self.denied += 1;
                log::warn!("client {id} ({who}) refused: {why}");
                wire::write_error(&mut self.reply, ErrorCode::AccessDenied, true, &why);
                self.refusals.refuse(fd, id, &self.reply, now);
                continue;
            }
            if self.clients.len() >= self.max_clients {
                self.rejected += 1;
                log::warn!(
                    "client {id} ({who}) refused: {} clients connected (publish.max_clients)",
                    self.clients.len()
                );
                wire::write_error(
                    &mut self.reply,
                    ErrorCode::TooManyClients,
                    true,
                    &format!("maskd serves at most {} clients", self.max_clients),
                );
                self.refusals.refuse(fd, id, &self.reply, now);
                continue;
            }
            log::info!("client {id} connected ({who})");
            self.clients.push(Subscriber::new(fd, id));
        }
    }

    /// Removes dead clients and releases every prompt reference they held.
    fn reap(&mut self, prompts: &mut dyn PromptDirectory) {
        self.clients.retain_mut(|c| {
            if c.dead {
                for id in c.prompts.drain(..) {
                    prompts.release(id);
                }
            }
            !c.dead
        });
    }
}

impl AsFd for Publisher {
    /// The listening socket: readable when a client is waiting to be accepted.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Reads and answers up to `MAX_CONTROLS_PER_SERVICE` control messages of one client.
fn serve_client(
    c: &mut Subscriber,
    rx: &mut Vec<u8>,
    reply: &mut Vec<u8>,
    new_ids: &mut Vec<PromptId>,
    default_encoding: MaskEncoding,
    prompts: &mut dyn PromptDirectory,
) {
    for _ in 0..MAX_CONTROLS_PER_SERVICE {
        // A reply still waiting: read nothing more until it is out (backpressure).
        if c.dead || !c.flush_reply() {
            return;
        }
        match sock::recv_bounded(c.fd.as_fd(), rx, wire::MAX_CONTROL_LEN) {
            Ok(Some(_)) => {}
            Ok(None) => {
                log::info!("client {}: disconnected", c.id);
                c.dead = true;
                return;
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                c.die(e);
                return;
            }
        }
        match wire::parse_control(rx) {
            Ok(control) => answer(c, control, reply, new_ids, default_encoding, prompts),
            Err(e) => refuse(c, &e, reply),
        }
    }
}

fn answer(
    c: &mut Subscriber,
    control: Control<'_>,
    reply: &mut Vec<u8>,
    new_ids: &mut Vec<PromptId>,
    default_encoding: MaskEncoding,
    prompts: &mut dyn PromptDirectory,
) {
    match control {
        Control::Subscribe {
            encoding,
            prompts: texts,
        } => {
            // Intern the new prompts before releasing the old ones, so a prompt
            // in both never drops to zero references (and loses its embedding).
            new_ids.clear();
            for (index, text) in texts.iter().enumerate() {
                match prompts.intern(text) {
                    Ok(id) => new_ids.push(id),
                    Err(why) => {
                        for id in new_ids.drain(..) {
                            prompts.release(id);
                        }
                        log::info!("client {}: prompt {text:?} rejected: {why}", c.id);
                        wire::write_error(
                            reply,
                            ErrorCode::PromptRejected,
                            false,
                            &format!("prompt {index} {text:?}: {why}"),
                        );
                        c.queue_reply(reply);
                        return;
                    }
                }
            }
            for id in c.prompts.drain(..) {
                prompts.release(id);
            }
            std::mem::swap(&mut c.prompts, new_ids);
            let encoding = encoding.unwrap_or(default_encoding);
            c.encoding = Some(encoding);
            log::info!(
                "client {}: subscribed to {} prompt(s), {encoding:?}",
                c.id,
                c.prompts.len()
            );
            wire::write_subscribed(reply, encoding, &c.prompts);
            c.queue_reply(reply);
        }
        Control::Unsubscribe => {
            for id in c.prompts.drain(..) {
                prompts.release(id);
            }
            c.encoding = None;
            wire::write_unsubscribed(reply);
            c.queue_reply(reply);
        }
        Control::Ping { token } => {
            wire::write_pong(reply, token);
            c.queue_reply(reply);
        }
    }
}

/// Answers a malformed message with an ERROR naming the problem and drops the client.
fn refuse(c: &mut Subscriber, e: &WireError, reply: &mut Vec<u8>) {
    log::warn!("client {}: {e}; disconnecting it", c.id);
    wire::write_error(reply, e.code(), true, &e.to_string());
    // Best effort: a client too slow to take the ERROR is dropped all the same.
    let _ = sock::send_nonblocking(c.fd.as_fd(), reply);
    c.dead = true;
}

/// CLOCK_REALTIME in ns (0 if the clock is before 1970).
fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
