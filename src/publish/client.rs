//! The client library: connect to maskd's socket, subscribe, receive decoded frames.
//!
//! Blocking with timeouts; used by `maskd subscribe` and the integration tests,
//! and a reference for clients in other languages. Allocates per frame (it
//! decodes into fresh `Vec`s); a robot that cares can use [`Client::recv_raw`]
//! and [`wire::parse_server`](super::wire::parse_server) on its own buffers.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::sock;
use super::wire::{self, ErrorCode, FrameHeader, FrameMasks, ServerMessage, WireError};
use crate::config::MaskEncoding;
use crate::contracts::PromptId;
use crate::masks::{self, DecodeError};

/// How long `subscribe`, `unsubscribe` and `ping` wait for their reply by default.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames that arrive while waiting for a PONG are kept for `recv`, up to this many.
const MAX_STASHED: usize = 8;
/// Largest mask side a server sends (`[masks] width`/`height` are 1..=4096, PROTOCOL.md).
/// With at most `MAX_PROMPTS` masks a frame decodes to 512 MiB at the very most; the
/// per-mask limit alone (`masks::MAX_PIXELS`) let a 1.3 KB FRAME claiming 64 masks of
/// 8192 x 8192 ask for 4 GiB, and 65,535 of them for 4 TiB.
const MAX_MASK_SIDE: u32 = 4096;

/// One received frame, masks decoded to 0/1 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameMessage {
    pub header: FrameHeader,
    /// In the server's order; only prompts this client subscribed to whose mask
    /// existed for this frame.
    pub masks: Vec<ReceivedMask>,
}

impl FrameMessage {
    /// Decodes every mask of a parsed FRAME; what [`Client::recv`] returns. Public so
    /// that a client reading its own buffers, and the fuzz targets, decode the same way.
    pub fn decode(
        header: FrameHeader,
        masks: &FrameMasks<'_>,
    ) -> Result<FrameMessage, ClientError> {
        let (count, width, height) = (header.mask_count, header.mask_width, header.mask_height);
        if count > 0
            && (usize::from(count) > wire::MAX_PROMPTS
                || width > MAX_MASK_SIDE
                || height > MAX_MASK_SIDE)
        {
            return Err(ClientError::FrameTooLarge {
                count,
                width,
                height,
            });
        }
        let mut out = Vec::with_capacity(usize::from(header.mask_count));
        for m in masks.iter() {
            let mut bits = Vec::new();
            masks::decode(
                header.encoding,
                m.payload,
                header.mask_width,
                header.mask_height,
                &mut bits,
            )
            .map_err(|source| ClientError::Mask {
                prompt_id: m.prompt_id,
                source,
            })?;
            out.push(ReceivedMask {
                prompt_id: m.prompt_id,
                score: m.score,
                coverage: m.coverage,
                bits,
            });
        }
        Ok(FrameMessage { header, masks: out })
    }
}

/// One prompt's mask in a received frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMask {
    pub prompt_id: PromptId,
    pub score: f32,
    pub coverage: f32,
    /// `mask_width * mask_height` bytes, row-major, each 0 or 1.
    pub bits: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source} (is maskd running, and may this user open the socket?)"
    )]
    Connect { path: PathBuf, source: Errno },
    #[error("socket: {0}")]
    Io(#[from] Errno),
    #[error("bad message from maskd: {0}")]
    Wire(#[from] WireError),
    #[error(
        "frame of {count} masks of {width}x{height}: maskd sends at most {} masks of at most {MAX_MASK_SIDE}x{MAX_MASK_SIDE}",
        wire::MAX_PROMPTS
    )]
    FrameTooLarge { count: u16, width: u32, height: u32 },
    #[error("mask of prompt {prompt_id}: {source}")]
    Mask {
        prompt_id: PromptId,
        source: DecodeError,
    },
    #[error("maskd refused ({}): {message}", code_name(*code))]
    Server {
        code: u16,
        closing: bool,
        message: String,
    },
    #[error("maskd closed the connection")]
    Closed,
    #[error("no reply from maskd within {0:?}")]
    Timeout(Duration),
}

fn code_name(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(c) => format!("{c:?}"),
        None => format!("code {code}"),
    }
}

/// A connection to maskd.
pub struct Client {
    fd: OwnedFd,
    /// Receive buffer, grown to the largest message seen.
    buf: Vec<u8>,
    /// Send buffer for control messages.
    out: Vec<u8>,
    /// Raw FRAME messages that arrived while waiting for a PONG.
    stash: VecDeque<Vec<u8>>,
    reply_timeout: Duration,
}

impl Client {
    /// Connects to maskd's socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        // Non-blocking connect: a daemon that stopped accepting gives EAGAIN
        // at once instead of hanging; the socket is made blocking afterwards.
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let fd = sock::connect(path, true).map_err(connect_err)?;
        sock::set_nonblocking(fd.as_fd(), false).map_err(connect_err)?;
        Ok(Client {
            fd,
            buf: Vec::new(),
            out: Vec::new(),
            stash: VecDeque::new(),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// How long control requests wait for their reply.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Replaces this connection's subscription; returns the prompt id of each
    /// text, in order. `encoding: None` takes the daemon's default. Frames of
    /// the previous subscription still in flight are discarded.
    pub fn subscribe(
        &mut self,
        prompts: &[&str],
        encoding: impl Into<Option<MaskEncoding>>,
    ) -> Result<Vec<PromptId>, ClientError> {
        wire::write_subscribe(&mut self.out, encoding.into(), prompts)?;
        self.send_out()?;
        self.stash.clear();
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let msg = self.next_reply(deadline)?;
            match wire::parse_server(msg)? {
                ServerMessage::Subscribed { ids, .. } => return Ok(ids.iter().collect()),
                ServerMessage::Error {
                    code,
                    closing,
                    message,
                } => return Err(server_error(code, closing, message)),
                _ => {} // frames of the old subscription, stale replies
            }
        }
    }

    /// Stops frames for this connection and releases its prompts.
    pub fn unsubscribe(&mut self) -> Result<(), ClientError> {
        wire::write_unsubscribe(&mut self.out);
        self.send_out()?;
        self.stash.clear();
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let msg = self.next_reply(deadline)?;
            match wire::parse_server(msg)? {
                ServerMessage::Unsubscribed => return Ok(()),
                ServerMessage::Error {
                    code,
                    closing,
                    message,
                } => return Err(server_error(code, closing, message)),
                _ => {}
            }
        }
    }

    /// Round trip of a PING with `token`. Frames arriving meanwhile are kept for `recv`.
    pub fn ping(&mut self, token: u64) -> Result<Duration, ClientError> {
        let start = Instant::now();
        wire::write_ping(&mut self.out, token);
        self.send_out()?;
        let deadline = start + self.reply_timeout;
        loop {
            let msg = self.next_reply(deadline)?;
            match wire::parse_server(msg)? {
                ServerMessage::Pong { token: t } if t == token => return Ok(start.elapsed()),
                ServerMessage::Error {
                    code,
                    closing,
                    message,
                } => return Err(server_error(code, closing, message)),
                ServerMessage::Frame(..) => {
                    if self.stash.len() == MAX_STASHED {
                        self.stash.pop_front();
                    }
                    self.stash.push_back(self.buf.clone());
                }
                _ => {}
            }
        }
    }

    /// The next frame, decoded; `Ok(None)` if none arrived within `timeout`.
    /// An ERROR from the daemon (e.g. it is shutting down) is returned as `Err`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<FrameMessage>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let raw = match self.stash.pop_front() {
                Some(raw) => {
                    self.buf = raw;
                    &self.buf[..]
                }
                None => match self.recv_until(deadline)? {
                    Some(()) => &self.buf[..],
                    None => return Ok(None),
                },
            };
            match wire::parse_server(raw)? {
                ServerMessage::Frame(header, masks) => {
                    return FrameMessage::decode(header, &masks).map(Some);
                }
                ServerMessage::Error {
                    code,
                    closing,
                    message,
                } => return Err(server_error(code, closing, message)),
                _ => {} // late replies
            }
        }
    }

    /// The next message of any type, undecoded; `Ok(None)` on timeout. For tests and tools.
    pub fn recv_raw(&mut self, timeout: Duration) -> Result<Option<&[u8]>, ClientError> {
        if let Some(raw) = self.stash.pop_front() {
            self.buf = raw;
            return Ok(Some(&self.buf));
        }
        let deadline = Instant::now() + timeout;
        Ok(self.recv_until(deadline)?.map(|()| &self.buf[..]))
    }

    /// Sends `msg` as one message, as is. For tests and tools.
    pub fn send_raw(&mut self, msg: &[u8]) -> Result<(), ClientError> {
        sock::send_blocking(self.fd.as_fd(), msg)?;
        Ok(())
    }

    fn send_out(&mut self) -> Result<(), ClientError> {
        match sock::send_blocking(self.fd.as_fd(), &self.out) {
            Ok(_) => Ok(()),
            Err(Errno::EPIPE | Errno::ECONNRESET) => Err(ClientError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// The next message into `self.buf`, or `Timeout` at `deadline`.
    fn next_reply(&mut self, deadline: Instant) -> Result<&[u8], ClientError> {
        match self.recv_until(deadline)? {
            Some(()) => Ok(&self.buf),
            None => Err(ClientError::Timeout(self.reply_timeout)),
        }
    }

    /// Receives one message into `self.buf`; `None` if `deadline` passed first.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<()>, ClientError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !sock::wait_readable(self.fd.as_fd(), left)? {
                if left.is_zero() {
                    return Ok(None);
                }
                continue;
            }
            match sock::recv_message(self.fd.as_fd(), &mut self.buf, true) {
                Ok(Some(_)) => return Ok(Some(())),
                Ok(None) | Err(Errno::ECONNRESET) => return Err(ClientError::Closed),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Client {
    /// For waiting on frames together with other fds (poll for readable).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn server_error(code: u16, closing: bool, message: &[u8]) -> ClientError {
    ClientError::Server {
        code,
        closing,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}
