//! The mask types the engine produces and the publisher encodes.

/// Identifies a prompt for as long as it lives in the daemon; carried on the wire.
pub type PromptId = u32;

/// One prompt's mask for one frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mask {
    pub prompt_id: PromptId,
    /// Presence probability in [0, 1] (the model's confidence the concept is in view).
    pub score: f32,
    /// Fraction of mask pixels set, in [0, 1].
    pub coverage: f32,
    /// `width * height` bytes, row-major, each 0 or 1. Reused across frames.
    pub bits: Vec<u8>,
}

/// All masks for one frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskSet {
    pub seq: u64,
    /// CLOCK_REALTIME ns, copied from the frame.
    pub capture_ns: u64,
    /// Source frame size (before scaling).
    pub frame_width: u32,
    pub frame_height: u32,
    /// Size of every mask in `masks`.
    pub width: u32,
    pub height: u32,
    /// Only the first `len` entries are valid; the rest are kept to reuse their buffers.
    pub masks: Vec<Mask>,
    pub len: usize,
}

impl MaskSet {
    /// The valid masks of this frame.
    pub fn masks(&self) -> &[Mask] {
        &self.masks[..self.len]
    }
}
