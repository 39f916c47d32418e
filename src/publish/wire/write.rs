//! Writing: every function clears (or appends to) a caller's reused buffer and
//! allocates only if that buffer must grow.

use super::*;
use crate::config::MaskEncoding;
use crate::contracts::PromptId;

/// Clears `out` and writes the 8-byte prefix.
pub fn write_prefix(out: &mut Vec<u8>, ty: MessageType) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(ty as u16).to_le_bytes());
}

impl FrameHeader {
    /// Clears `out` and writes the prefix and this header (56 bytes).
    pub fn write(&self, out: &mut Vec<u8>) {
        write_prefix(out, MessageType::Frame);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.capture_ns.to_le_bytes());
        out.extend_from_slice(&self.publish_ns.to_le_bytes());
        for v in [
            self.frame_width,
            self.frame_height,
            self.mask_width,
            self.mask_height,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.mask_count.to_le_bytes());
        out.push(encoding_code(self.encoding));
        out.push(0);
        out.extend_from_slice(&self.dropped.to_le_bytes());
    }
}

/// Byte offset of `mask_count` in a FRAME, for patching it after the masks are chosen.
pub const MASK_COUNT_OFFSET: usize = 48;

/// Appends one mask (16-byte header + payload) to a FRAME being built.
pub fn write_mask(
    out: &mut Vec<u8>,
    prompt_id: PromptId,
    score: f32,
    coverage: f32,
    payload: &[u8],
) {
    out.extend_from_slice(&prompt_id.to_le_bytes());
    out.extend_from_slice(&score.to_le_bytes());
    out.extend_from_slice(&coverage.to_le_bytes());
    // Payloads are bounded by MAX_MESSAGE_LEN long before u32.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Clears `out` and writes a SUBSCRIBED reply; `ids` in the order of the request.
pub fn write_subscribed(out: &mut Vec<u8>, encoding: MaskEncoding, ids: &[PromptId]) {
    write_prefix(out, MessageType::Subscribed);
    out.push(encoding_code(encoding));
    out.push(0);
    // Bounded by MAX_PROMPTS when it comes from a parsed SUBSCRIBE.
    out.extend_from_slice(&(ids.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    for id in ids.iter().take(usize::from(u16::MAX)) {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

pub fn write_unsubscribed(out: &mut Vec<u8>) {
    write_prefix(out, MessageType::Unsubscribed);
}

pub fn write_pong(out: &mut Vec<u8>, token: u64) {
    write_prefix(out, MessageType::Pong);
    out.extend_from_slice(&token.to_le_bytes());
}

/// Clears `out` and writes an ERROR; `text` is cut to [`MAX_ERROR_TEXT`] bytes
/// at a character boundary. `closing`: the server closes the connection next.
pub fn write_error(out: &mut Vec<u8>, code: ErrorCode, closing: bool, text: &str) {
    let mut end = text.len().min(MAX_ERROR_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    write_prefix(out, MessageType::Error);
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.push(u8::from(closing));
    out.push(0);
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// Clears `out` and writes a SUBSCRIBE, checking the limits the server enforces.
pub fn write_subscribe(
    out: &mut Vec<u8>,
    encoding: Option<MaskEncoding>,
    prompts: &[&str],
) -> Result<(), WireError> {
    if prompts.len() > MAX_PROMPTS {
        return Err(WireError::TooManyPrompts {
            count: prompts.len(),
        });
    }
    write_prefix(out, MessageType::Subscribe);
    out.push(encoding.map_or(0, encoding_code));
    out.push(0);
    out.extend_from_slice(&(prompts.len() as u16).to_le_bytes());
    for (index, text) in prompts.iter().enumerate() {
        if text.is_empty() {
            return Err(WireError::EmptyPrompt { index });
        }
        if text.len() > MAX_PROMPT_BYTES {
            return Err(WireError::PromptTooLong {
                index,
                len: text.len(),
            });
        }
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Ok(())
}

pub fn write_unsubscribe(out: &mut Vec<u8>) {
    write_prefix(out, MessageType::Unsubscribe);
}

pub fn write_ping(out: &mut Vec<u8>, token: u64) {
    write_prefix(out, MessageType::Ping);
    out.extend_from_slice(&token.to_le_bytes());
}
