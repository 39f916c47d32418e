//! maskd: camera frames -> text-prompted segmentation -> masks on a local socket.
//!
//! Data flows one way through the stage modules:
//! [`source`] (GStreamer appsink) -> [`engine`] (tract) -> [`masks`] (encode) -> [`publish`] (socket).
//! [`config`] and [`lifecycle`] sit beside the flow; only `daemon` sees all stages.

pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod eval;
pub mod inspect;
pub mod lifecycle;
pub mod masks;
pub mod onnx_io;
pub mod publish;
pub mod source;
pub mod sparsify;
pub mod subscribe;
