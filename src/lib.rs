//! maskd: camera frames -> text-prompted segmentation -> masks on a local socket.
//!
//! Data flows one way through the stage modules:
//! [`source`] (GStreamer appsink) -> [`engine`] (tract) -> [`masks`] (encode) -> [`publish`] (socket).
//! The stages hand each other the plain types of [`contracts`]; [`config`] and
//! [`lifecycle`] sit beside the flow; only [`daemon`] sees every stage. The subcommands
//! other than `run` live in [`commands`]. `docs/ARCHITECTURE.md` has the map and the
//! import rule of each room.

pub mod alloc;
pub mod commands;
pub mod config;
pub mod contracts;
pub mod daemon;
pub mod engine;
pub mod lifecycle;
pub mod masks;
pub mod publish;
pub mod source;
