//! Daemon configuration: the typed, validated form every stage receives.
//!
//! The TOML file is read into `RawConfig` (serde, unknown keys rejected) and
//! validated into [`Config`]. Each stage gets only its own section. Paths in the
//! file are resolved relative to the file's directory, so a config can be moved
//! together with its model.
//!
//! CONTRACT (shared by all stages; change only with the lead): the section types
//! below and their field names.

use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// File the configuration was read from (for error messages and reload).
    pub path: PathBuf,
    pub source: SourceConfig,
    pub engine: EngineConfig,
    pub prompts: PromptsConfig,
    pub masks: MaskConfig,
    pub publish: PublishConfig,
    pub log: LogConfig,
}

/// `[source]`: where frames come from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// gst-launch fragment producing raw or decodable video, e.g.
    /// `"v4l2src device=/dev/video0"`; maskd appends conversion, scaling and the appsink.
    pub pipeline: String,
    /// On EOS, seek back to the start instead of rebuilding (files, demo clips).
    pub looping: bool,
    /// How frames are fitted to the model's input size.
    pub resize: ResizeMode,
    /// No frame for this long => the pipeline is considered dead and rebuilt.
    pub frame_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Keep aspect ratio, pad with black; masks are cropped back to the picture.
    Letterbox,
    /// Scale each axis independently (distorts shapes when aspect ratios differ).
    Stretch,
}

/// `[engine]`: the model and how it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Model manifest (TOML) naming the ONNX graphs and their interface.
    pub manifest: PathBuf,
    /// Worker threads for tract's matmuls (1 = single-threaded).
    pub threads: usize,
    /// How N:M-sparse layers run.
    pub sparse_kernel: SparseKernel,
    /// Run maskd's fused attention, GELU, LayerNorm and product-sum ops where they
    /// apply (false: tract's own nodes, the fallback if a model misbehaves with them).
    pub fused_ops: bool,
    /// Where the segmenter's graphs run.
    pub device: Device,
}

impl EngineConfig {
    /// `manifest` with every other key at its default (what the tools use without a
    /// config file).
    pub fn with_defaults(manifest: PathBuf) -> EngineConfig {
        EngineConfig {
            manifest,
            threads: DEFAULT_THREADS,
            sparse_kernel: DEFAULT_SPARSE_KERNEL,
            fused_ops: DEFAULT_FUSED_OPS,
            device: DEFAULT_DEVICE,
        }
    }
}

/// `engine.device`, also `--device` of `maskd bench` and `maskd eval`: where the
/// segmenter's graphs run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU when this build has CUDA and the machine a usable GPU, else the CPU
    /// (logged once, with the reason).
    Auto,
    /// The CPU, always.
    Cpu,
    /// The GPU through tract-cuda; start-up fails when there is none.
    Cuda,
}

impl Device {
    /// The config spelling, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// `engine.sparse_kernel`, also `maskd bench --sparse-kernel`: one spelling for the
/// config, the command line, JSON and messages.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SparseKernel {
    /// Sparse kernel where the CPU has one, dense otherwise.
    Auto,
    /// The sparse kernel for every N:M layer, even where only the scalar one fits.
    Sparse,
    /// Decompress sparse layers to dense constants.
    Dense,
}

impl SparseKernel {
    /// The config spelling, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SparseKernel::Auto => "auto",
            SparseKernel::Sparse => "sparse",
            SparseKernel::Dense => "dense",
        }
    }
}

/// `[prompts]`: what to segment, and the decision thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptsConfig {
    /// Prompts always run, ids 0..n in this order, even with no subscriber.
    pub text: Vec<String>,
    /// Override of the manifest's pixel threshold (on sigmoid probability).
    pub mask_threshold: Option<f32>,
    /// Override of the manifest's presence threshold (on sigmoid probability).
    pub score_threshold: Option<f32>,
    /// Upper bound on distinct prompts alive at once (config + clients).
    pub max_prompts: usize,
}

/// `[masks]`: the masks as published.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskConfig {
    pub width: u32,
    pub height: u32,
    /// Encoding for subscribers that do not ask for one.
    pub encoding: MaskEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskEncoding {
    /// Row-major run lengths as LEB128 varints, first run is background.
    Rle,
    /// COCO compressed RLE string (column-major, as pycocotools).
    CocoRle,
    /// One bit per pixel, row-major, MSB first, rows padded to bytes.
    Bitmask,
}

/// `[publish]`: the local socket.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishConfig {
    pub socket: PathBuf,
    /// File mode of the socket node, e.g. 0o660.
    pub mode: u32,
    /// Group owning the socket node (None = the daemon's group).
    pub group: Option<String>,
    pub max_clients: usize,
    /// Messages buffered per subscriber before its own frames are dropped.
    pub queue_depth: usize,
    /// Client uids allowed to connect (SO_PEERCRED); with `allow_gids`,
    /// a client passes if either list has it. Both `None`: everyone who can
    /// open the socket file. Never `Some` of an empty list.
    pub allow_uids: Option<Vec<u32>>,
    /// Client primary gids allowed to connect (SO_PEERCRED has no
    /// supplementary groups).
    pub allow_gids: Option<Vec<u32>>,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub level: log::LevelFilter,
}

// ---------------------------------------------------------------------------
// Loading: TOML text -> RawConfig (serde) -> validated Config.
// ---------------------------------------------------------------------------

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;

mod diff;
mod raw;
#[cfg(test)]
mod tests;

pub use diff::changed_keys;

pub const DEFAULT_LOOPING: bool = false;
pub const DEFAULT_RESIZE: ResizeMode = ResizeMode::Letterbox;
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 250;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 10_000;
pub const DEFAULT_THREADS: usize = 1;
pub const DEFAULT_SPARSE_KERNEL: SparseKernel = SparseKernel::Auto;
pub const DEFAULT_FUSED_OPS: bool = true;
pub const DEFAULT_DEVICE: Device = Device::Auto;
pub const DEFAULT_MAX_PROMPTS: usize = 32;
pub const DEFAULT_MASK_WIDTH: u32 = 160;
pub const DEFAULT_MASK_HEIGHT: u32 = 120;
pub const DEFAULT_MASK_ENCODING: MaskEncoding = MaskEncoding::Rle;
pub const DEFAULT_SOCKET: &str = "/run/maskd/maskd.sock";
pub const DEFAULT_SOCKET_MODE: &str = "0660";
pub const DEFAULT_MAX_CLIENTS: usize = 16;
pub const DEFAULT_QUEUE_DEPTH: usize = 4;
pub const DEFAULT_LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// The only variable `source.pipeline` may use: the config file's directory, so a
/// config can name a clip next to it (`filesrc location=${config_dir}/clip.webm`).
pub const CONFIG_DIR_VAR: &str = "config_dir";

/// Why a configuration was rejected. Every variant names the file; `Syntax`
/// and `Invalid` also name the dotted key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The io error is part of this message, so it is
    /// not also the error's `source` (that would print it twice under `{:#}`).
    Read { path: PathBuf, cause: io::Error },
    /// TOML syntax, unknown key, wrong type or missing key (serde's message).
    Syntax {
        path: PathBuf,
        /// 1-based line and column of the offending text, when toml knows it.
        position: Option<(usize, usize)>,
        /// Dotted key (`engine.modle`), when it could be found from the span.
        key: Option<String>,
        message: String,
    },
    /// Well-formed but out of range or inconsistent.
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, cause } => write!(f, "{}: {cause}", path.display()),
            ConfigError::Syntax {
                path,
                position,
                key,
                message,
            } => {
                write!(f, "{}", path.display())?;
                if let Some((line, column)) = position {
                    write!(f, ":{line}:{column}")?;
                }
                if let Some(key) = key {
                    write!(f, ": {key}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Invalid { path, key, reason } => {
                write!(f, "{}: {key}: {reason}", path.display())
            }
        }
    }
}

/// Reads and validates the configuration at `path`.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    parse(&text, path).with_context(|| format!("loading configuration {}", path.display()))
}

/// Parses and validates `text` as if read from `path`; relative paths in it
/// resolve against `path`'s directory (made absolute with the current directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
    raw.validate(path)
}

fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    ConfigError::Syntax {
        path: path.to_path_buf(),
        position: span.as_ref().map(|s| line_column(text, s.start)),
        key: span.and_then(|s| key_at(text, &s)),
        message: e.message().trim_end().to_string(),
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key whose key or value text covers `span`, found by re-parsing
/// with spans (toml's error keeps its key path private).
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    find_key(doc.get_ref(), span).map(|path| path.join("."))
}

/// A `[table]`'s value span covers only its header, so every table is
/// searched; the header itself names the table (a missing key points there).
fn find_key(table: &toml::de::DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    let covers = |s: Range<usize>| s.start <= span.start && span.end <= s.end;
    for (key, value) in table {
        let name = || key.get_ref().to_string();
        if covers(key.span()) {
            return Some(vec![name()]);
        }
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            if let Some(mut path) = find_key(inner, span) {
                path.insert(0, name());
                return Some(path);
            }
        }
        if covers(value.span()) {
            return Some(vec![name()]);
        }
    }
    None
}
