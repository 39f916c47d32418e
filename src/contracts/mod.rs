//! Contracts between the stages: the plain types one stage hands the next.
//!
//! Every stage may import this module and nothing here imports a stage, so the data
//! flow stays one way in the imports too: `source` makes [`FrameView`]s, `engine` reads
//! them and fills a [`MaskSet`], `masks` encodes it and `publish` sends it; clients name
//! prompts by text through [`PromptDirectory`], which the engine's registry implements.
//! Change these only together with every stage that reads them.

mod frame;
mod masks;
mod prompts;

pub use frame::{FrameView, Rect};
pub use masks::{Mask, MaskSet, PromptId};
pub use prompts::PromptDirectory;
