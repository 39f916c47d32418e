//! The wire format: byte layouts of every message between maskd and its clients.
//!
//! Owns encoding into reused buffers and validating parsing, both ways; knows
//! nothing of sockets or subscribers. `docs/PROTOCOL.md` is the normative
//! description; the constants here are the ones it names. All integers are
//! little-endian; every message starts with the 8-byte prefix
//! `b"MSKD"`, u16 version, u16 message type.

mod read;
#[cfg(test)]
mod tests;
mod write;

pub use read::*;
pub use write::*;

use crate::config::MaskEncoding;

pub const MAGIC: [u8; 4] = *b"MSKD";
/// The only version this server speaks and accepts.
pub const VERSION: u16 = 1;
/// Magic, version, type.
pub const PREFIX_LEN: usize = 8;
/// Prefix plus the fixed part of a FRAME message.
pub const FRAME_HEADER_LEN: usize = 56;
/// Prompt id, score, coverage, payload length.
pub const MASK_HEADER_LEN: usize = 16;
/// Prompts one client may subscribe to at once.
pub const MAX_PROMPTS: usize = 32;
/// Bytes of UTF-8 in one prompt text.
pub const MAX_PROMPT_BYTES: usize = 256;
/// Largest client->server message; anything longer is refused unread.
pub const MAX_CONTROL_LEN: usize = 16 * 1024;
/// Largest server->client message; a frame that would be longer is dropped.
/// A client receive buffer of this size never truncates a message.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// ERROR texts are cut (at a character boundary) to this many bytes.
pub const MAX_ERROR_TEXT: usize = 1024;

/// Every message type; server->client ones are 0x00xx, client->server 0x01xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageType {
    Frame = 0x0001,
    Subscribed = 0x0002,
    Unsubscribed = 0x0003,
    Pong = 0x0004,
    Error = 0x0005,
    Subscribe = 0x0101,
    Unsubscribe = 0x0102,
    Ping = 0x0103,
}

impl MessageType {
    pub fn from_u16(v: u16) -> Option<MessageType> {
        use MessageType::*;
        Some(match v {
            0x0001 => Frame,
            0x0002 => Subscribed,
            0x0003 => Unsubscribed,
            0x0004 => Pong,
            0x0005 => Error,
            0x0101 => Subscribe,
            0x0102 => Unsubscribe,
            0x0103 => Ping,
            _ => return None,
        })
    }
}

/// The u16 code of an ERROR message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    BadMagic = 1,
    UnsupportedVersion = 2,
    UnknownType = 3,
    Malformed = 4,
    BadUtf8 = 5,
    TooManyPrompts = 6,
    PromptTooLong = 7,
    EmptyPrompt = 8,
    UnknownEncoding = 9,
    MessageTooLarge = 10,
    TooManyClients = 11,
    PromptRejected = 12,
    ShuttingDown = 13,
    /// The peer's uid/gid is not in `publish.allow_uids`/`allow_gids`.
    AccessDenied = 14,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => BadMagic,
            2 => UnsupportedVersion,
            3 => UnknownType,
            4 => Malformed,
            5 => BadUtf8,
            6 => TooManyPrompts,
            7 => PromptTooLong,
            8 => EmptyPrompt,
            9 => UnknownEncoding,
            10 => MessageTooLarge,
            11 => TooManyClients,
            12 => PromptRejected,
            13 => ShuttingDown,
            14 => AccessDenied,
            _ => return None,
        })
    }
}

/// The wire byte of an encoding (0 is "server default", valid in SUBSCRIBE only).
pub fn encoding_code(e: MaskEncoding) -> u8 {
    match e {
        MaskEncoding::Rle => 1,
        MaskEncoding::CocoRle => 2,
        MaskEncoding::Bitmask => 3,
    }
}

pub fn encoding_from_code(code: u8) -> Option<MaskEncoding> {
    match code {
        1 => Some(MaskEncoding::Rle),
        2 => Some(MaskEncoding::CocoRle),
        3 => Some(MaskEncoding::Bitmask),
        _ => None,
    }
}

/// What was wrong with a message. Server side, each maps to the [`ErrorCode`]
/// sent back before the client is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes is shorter than the {PREFIX_LEN}-byte prefix")]
    TooShort { len: usize },
    #[error("bad magic {found:02x?}, expected \"MSKD\"")]
    BadMagic { found: [u8; 4] },
    #[error("protocol version {found} is not supported (this side speaks {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("message type {found:#06x} is unknown or not valid in this direction")]
    UnknownType { found: u16 },
    #[error("{what} needs bytes {offset}..{end}, the message has {len}")]
    Truncated {
        what: &'static str,
        offset: usize,
        end: usize,
        len: usize,
    },
    #[error("{extra} unexpected bytes after the end of the {what} message")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("encoding {found} is unknown (1 = rle, 2 = coco, 3 = bitmask)")]
    UnknownEncoding { found: u8 },
    #[error("{count} prompts, at most {MAX_PROMPTS} allowed")]
    TooManyPrompts { count: usize },
    #[error("prompt {index} is empty")]
    EmptyPrompt { index: usize },
    #[error("prompt {index} is {len} bytes, at most {MAX_PROMPT_BYTES} allowed")]
    PromptTooLong { index: usize, len: usize },
    #[error("prompt {index} is not valid UTF-8 (valid up to byte {valid_up_to})")]
    BadUtf8 { index: usize, valid_up_to: usize },
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("{count} ids for a message that allows {max}")]
    TooManyIds { count: usize, max: usize },
}

impl WireError {
    /// The ERROR code that reports this problem to a client.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::TooShort { .. }
            | WireError::Truncated { .. }
            | WireError::TrailingBytes { .. } => ErrorCode::Malformed,
            WireError::TooManyIds { .. } => ErrorCode::Malformed,
            WireError::BadMagic { .. } => ErrorCode::BadMagic,
            WireError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            WireError::UnknownType { .. } => ErrorCode::UnknownType,
            WireError::UnknownEncoding { .. } => ErrorCode::UnknownEncoding,
            WireError::TooManyPrompts { .. } => ErrorCode::TooManyPrompts,
            WireError::EmptyPrompt { .. } => ErrorCode::EmptyPrompt,
            WireError::PromptTooLong { .. } => ErrorCode::PromptTooLong,
            WireError::BadUtf8 { .. } => ErrorCode::BadUtf8,
            WireError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
        }
    }
}
