//! The commands: one binary, one subcommand per job.
//!
//! `maskd run` is the daemon (`crate::daemon`); every other subcommand is a tool beside
//! it and lives here, one module each, with its arguments beside its implementation.
//! This file only assembles them so `--help` shows one tree. Tools may import any
//! stage; no stage imports a tool.

pub mod bench;
pub mod eval;
pub mod inspect;
pub mod onnx_io;
pub mod pruning;
pub mod sparsify;
pub mod subscribe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Text-prompted segmentation for robots: camera frames in, masks out on a local socket.
#[derive(Debug, Parser)]
#[command(name = "maskd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: source -> model -> masks -> socket, until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Connect to a running daemon, subscribe to prompts and print (or save) the masks.
    Subscribe(subscribe::SubscribeArgs),
    /// Print a model's (or manifest's) inputs, outputs, ops and parameters.
    Inspect(inspect::InspectArgs),
    /// Measure end-to-end frames/s, model bytes, RSS and allocations per frame, side by side.
    Bench(bench::BenchArgs),
    /// Evaluate a model on a labelled set with the Rust pipeline (IoU, absent-prompt rate).
    Eval(eval::EvalArgs),
    /// Prune a model's MatMul/Gemm weights to N:M sparsity (maskd.NmMatMul or dense).
    Sparsify(sparsify::SparsifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(short, long, default_value = "configs/default.toml")]
    pub config: PathBuf,
}
