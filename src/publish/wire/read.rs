//! Parsing: validates a whole message before handing out borrowed views, so
//! the views' iterators cannot fail.

use super::*;
use crate::config::MaskEncoding;
use crate::contracts::PromptId;

/// Bounds-checked little-endian reads over one message.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(msg: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader {
            msg,
            pos: PREFIX_LEN,
            what,
        }
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.saturating_add(n);
        let out = self.msg.get(self.pos..end).ok_or(WireError::Truncated {
            what: self.what,
            offset: self.pos,
            end,
            len: self.msg.len(),
        })?;
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }
    fn f32(&mut self) -> Result<f32, WireError> {
        self.array().map(f32::from_le_bytes)
    }
    fn rest(&mut self) -> &'a [u8] {
        let r = &self.msg[self.pos.min(self.msg.len())..];
        self.pos = self.msg.len();
        r
    }
    fn finish(&self) -> Result<(), WireError> {
        match self.msg.len().saturating_sub(self.pos) {
            0 => Ok(()),
            extra => Err(WireError::TrailingBytes {
                what: self.what,
                extra,
            }),
        }
    }
}

/// Checks the 8-byte prefix and returns the message type. Does not check
/// that the type belongs to the caller's direction.
pub fn parse_prefix(msg: &[u8]) -> Result<MessageType, WireError> {
    let Some(prefix) = msg.get(..PREFIX_LEN) else {
        return Err(WireError::TooShort { len: msg.len() });
    };
    let magic = [prefix[0], prefix[1], prefix[2], prefix[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([prefix[4], prefix[5]]);
    let ty = u16::from_le_bytes([prefix[6], prefix[7]]);
    // An ERROR is readable in any version (its layout is frozen), so that a
    // client can show why a newer or older server turned it away.
    if version != VERSION && ty != MessageType::Error as u16 {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    MessageType::from_u16(ty).ok_or(WireError::UnknownType { found: ty })
}

/// A parsed client->server message, borrowing from the received bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Control<'a> {
    /// Replace the subscription. `encoding: None` = the server's default.
    Subscribe {
        encoding: Option<MaskEncoding>,
        prompts: Prompts<'a>,
    },
    Unsubscribe,
    Ping {
        token: u64,
    },
}

/// The validated prompt texts of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts<'a> {
    data: &'a [u8],
    count: usize,
}

impl<'a> Prompts<'a> {
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut data = self.data;
        (0..self.count).map(move |_| {
            let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
            let (text, rest) = data[2..].split_at(len);
            data = rest;
            // Validated in `parse_control`.
            std::str::from_utf8(text).unwrap_or_default()
        })
    }
}

/// Parses and fully validates a client->server message.
pub fn parse_control(msg: &[u8]) -> Result<Control<'_>, WireError> {
    if msg.len() > MAX_CONTROL_LEN {
        return Err(WireError::MessageTooLarge {
            len: msg.len(),
            max: MAX_CONTROL_LEN,
        });
    }
    let ty = parse_prefix(msg)?;
    match ty {
        MessageType::Subscribe => {
            let mut r = Reader::new(msg, "SUBSCRIBE");
            let code = r.u8()?;
            let encoding = match code {
                0 => None,
                c => Some(encoding_from_code(c).ok_or(WireError::UnknownEncoding { found: c })?),
            };
            let _reserved = r.u8()?;
            let count = usize::from(r.u16()?);
            if count > MAX_PROMPTS {
                return Err(WireError::TooManyPrompts { count });
            }
            let start = r.pos;
            for index in 0..count {
                let len = usize::from(r.u16()?);
                if len == 0 {
                    return Err(WireError::EmptyPrompt { index });
                }
                if len > MAX_PROMPT_BYTES {
                    return Err(WireError::PromptTooLong { index, len });
                }
                let text = r.bytes(len)?;
                if let Err(e) = std::str::from_utf8(text) {
                    return Err(WireError::BadUtf8 {
                        index,
                        valid_up_to: e.valid_up_to(),
                    });
                }
            }
            r.finish()?;
            Ok(Control::Subscribe {
                encoding,
                prompts: Prompts {
                    data: &msg[start..],
                    count,
                },
            })
        }
        MessageType::Unsubscribe => {
            Reader::new(msg, "UNSUBSCRIBE").finish()?;
            Ok(Control::Unsubscribe)
        }
        MessageType::Ping => {
            let mut r = Reader::new(msg, "PING");
            let token = r.u64()?;
            r.finish()?;
            Ok(Control::Ping { token })
        }
        other => Err(WireError::UnknownType {
            found: other as u16,
        }),
    }
}

/// The fixed part of a FRAME message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameHeader {
    pub seq: u64,
    /// CLOCK_REALTIME ns when the camera frame was captured.
    pub capture_ns: u64,
    /// CLOCK_REALTIME ns when maskd published the frame.
    pub publish_ns: u64,
    pub frame_width: u32,
    pub frame_height: u32,
    pub mask_width: u32,
    pub mask_height: u32,
    pub mask_count: u16,
    pub encoding: MaskEncoding,
    /// Frames this client missed since its previous FRAME (its queue was full).
    pub dropped: u32,
}

/// One mask of a FRAME, its payload still encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WireMask<'a> {
    pub prompt_id: PromptId,
    pub score: f32,
    pub coverage: f32,
    pub payload: &'a [u8],
}

/// A parsed server->client message, borrowing from the received bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    Frame(FrameHeader, FrameMasks<'a>),
    /// The ids, in the order of the SUBSCRIBE's prompts.
    Subscribed {
        encoding: MaskEncoding,
        ids: Ids<'a>,
    },
    Unsubscribed,
    Pong {
        token: u64,
    },
    Error {
        code: u16,
        closing: bool,
        message: &'a [u8],
    },
}

/// The validated masks of a FRAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMasks<'a> {
    data: &'a [u8],
    count: usize,
}

impl<'a> FrameMasks<'a> {
    pub fn iter(&self) -> impl Iterator<Item = WireMask<'a>> + 'a {
        let mut r = Reader {
            msg: self.data,
            pos: 0,
            what: "mask",
        };
        // Every read was bounds-checked in `parse_server`; the fallbacks are unreachable.
        (0..self.count).map(move |_| WireMask {
            prompt_id: r.u32().unwrap_or_default(),
            score: r.f32().unwrap_or_default(),
            coverage: r.f32().unwrap_or_default(),
            payload: {
                let len = r.u32().unwrap_or_default() as usize;
                r.bytes(len).unwrap_or_default()
            },
        })
    }
}

/// Prompt ids of a SUBSCRIBED reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids<'a>(&'a [u8]);

impl<'a> Ids<'a> {
    pub fn iter(&self) -> impl Iterator<Item = PromptId> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Parses and validates a server->client message.
pub fn parse_server(msg: &[u8]) -> Result<ServerMessage<'_>, WireError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(WireError::MessageTooLarge {
            len: msg.len(),
            max: MAX_MESSAGE_LEN,
        });
    }
    match parse_prefix(msg)? {
        MessageType::Frame => {
            let mut r = Reader::new(msg, "FRAME");
            let seq = r.u64()?;
            let capture_ns = r.u64()?;
            let publish_ns = r.u64()?;
            let frame_width = r.u32()?;
            let frame_height = r.u32()?;
            let mask_width = r.u32()?;
            let mask_height = r.u32()?;
            let mask_count = r.u16()?;
            let code = r.u8()?;
            let encoding =
                encoding_from_code(code).ok_or(WireError::UnknownEncoding { found: code })?;
            let _reserved = r.u8()?;
            let dropped = r.u32()?;
            let start = r.pos;
            r.what = "mask";
            for _ in 0..mask_count {
                r.bytes(12)?;
                let len = r.u32()? as usize;
                r.bytes(len)?;
            }
            r.finish()?;
            let header = FrameHeader {
                seq,
                capture_ns,
                publish_ns,
                frame_width,
                frame_height,
                mask_width,
                mask_height,
                mask_count,
                encoding,
                dropped,
            };
            Ok(ServerMessage::Frame(
                header,
                FrameMasks {
                    data: &msg[start..],
                    count: usize::from(mask_count),
                },
            ))
        }
        MessageType::Subscribed => {
            let mut r = Reader::new(msg, "SUBSCRIBED");
            let code = r.u8()?;
            let encoding =
                encoding_from_code(code).ok_or(WireError::UnknownEncoding { found: code })?;
            let _reserved = r.u8()?;
            let count = usize::from(r.u16()?);
            if count > MAX_PROMPTS {
                return Err(WireError::TooManyIds {
                    count,
                    max: MAX_PROMPTS,
                });
            }
            let ids = r.bytes(4 * count)?;
            r.finish()?;
            Ok(ServerMessage::Subscribed {
                encoding,
                ids: Ids(ids),
            })
        }
        MessageType::Unsubscribed => {
            Reader::new(msg, "UNSUBSCRIBED").finish()?;
            Ok(ServerMessage::Unsubscribed)
        }
        MessageType::Pong => {
            let mut r = Reader::new(msg, "PONG");
            let token = r.u64()?;
            r.finish()?;
            Ok(ServerMessage::Pong { token })
        }
        MessageType::Error => {
            let mut r = Reader::new(msg, "ERROR");
            let code = r.u16()?;
            let closing = r.u8()? != 0;
            let _reserved = r.u8()?;
            let len = usize::from(r.u16()?);
            let message = r.bytes(len)?;
            // Later versions may append fields to ERROR; ignore them.
            let _ = r.rest();
            Ok(ServerMessage::Error {
                code,
                closing,
                message,
            })
        }
        other => Err(WireError::UnknownType {
            found: other as u16,
        }),
    }
}
