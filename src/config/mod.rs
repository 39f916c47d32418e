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
    /// `[pruning]`: token pruning between the segmenter's blocks. It lives beside the
    /// engine's keys because a change reloads the engine (the stage plans are built with
    /// the schedule's token counts in mind and swapped in like a new model).
    pub pruning: PruningConfig,
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
            pruning: PruningConfig::default(),
        }
    }
}

/// `[pruning]`, also `--pruning`/`--scorer` of `maskd eval` and `maskd bench`: which
/// image tokens the segmenter's blocks keep. An empty schedule (the default) prunes
/// nothing and runs the fused full graph; otherwise the model's `[stages]` run, one
/// block at a time, with tokens dropped where the schedule says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PruningConfig {
    /// In block order, strictly increasing `after_block`; each `keep` applies to the
    /// tokens that entered that block, so keeps multiply.
    pub schedule: Vec<PruneStep>,
    /// How tokens are ranked for keeping.
    pub scorer: TokenScorer,
    /// Merge each step's dropped tokens into one context token (weighted by the
    /// attention they received) that runs on through the remaining blocks.
    pub merge: bool,
}

impl PruningConfig {
    /// No schedule: the fused full graph runs. (A schedule of `keep = 1` steps is on:
    /// the stages run and drop nothing, which is how the pruned path is tested.)
    pub fn is_off(&self) -> bool {
        self.schedule.is_empty()
    }
}

/// One step of `pruning.schedule`: after block `after_block`, keep the `keep` fraction
/// of the tokens (rounded to the nearest count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneStep {
    pub after_block: usize,
    pub keep: f32,
}

/// `pruning.scorer`, also `--scorer`: what ranks the tokens.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenScorer {
    /// The attention each token received in the block (VisionDrop's rule).
    Attention,
    /// The L2 norm of each token's features after the block.
    Norm,
    /// Pseudo-random scores, seeded by the block and the frame's tokens: the control
    /// any scorer has to beat, deterministic for a given frame.
    Random,
}

impl Default for TokenScorer {
    fn default() -> TokenScorer {
        DEFAULT_SCORER
    }
}

impl TokenScorer {
    /// The config spelling, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScorer::Attention => "attention",
            TokenScorer::Norm => "norm",
            TokenScorer::Random => "random",
        }
    }
}

/// Why a pruning schedule is malformed on its own (without looking at a model): step
/// `index`'s `field` and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("[{index}].{field}: {reason}")]
pub struct ScheduleError {
    pub index: usize,
    pub field: &'static str,
    pub reason: String,
}

/// Checks what a schedule must satisfy on any model: `0 < keep <= 1` and `after_block`
/// strictly increasing. The model-dependent rules (depth, at least one token left) are
/// the engine's, which knows the model.
pub fn check_schedule(steps: &[PruneStep]) -> Result<(), ScheduleError> {
    for (index, step) in steps.iter().enumerate() {
        if !(step.keep > 0.0 && step.keep <= 1.0) {
            return Err(ScheduleError {
                index,
                field: "keep",
                reason: format!(
                    "{} must be in (0, 1]: the fraction of the tokens to keep",
                    step.keep
                ),
            });
        }
        if let Some(prev) = index.checked_sub(1).map(|i| steps[i]) {
            if step.after_block <= prev.after_block {
                return Err(ScheduleError {
                    index,
                    field: "after_block",
                    reason: format!(
                        "{} does not follow the previous step's {}: steps must go in \
                         strictly increasing block order",
                        step.after_block, prev.after_block
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Parses the command-line spelling of a schedule, `"2:0.6,5:0.5"` (after block 2 keep
/// 0.6, after block 5 keep 0.5); `"none"` or `""` is the empty schedule. Checked as
/// [`check_schedule`] checks a config's.
pub fn parse_schedule(text: &str) -> Result<Vec<PruneStep>, String> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(Vec::new());
    }
    let steps = text
        .split([',', '+'])
        .map(|part| {
            let (block, keep) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not BLOCK:KEEP (e.g. 2:0.6)"))?;
            Ok(PruneStep {
                after_block: block
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: block {block:?} is not a block index"))?,
                keep: keep
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: keep {keep:?} is not a number"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    check_schedule(&steps).map_err(|e| format!("{text:?}: step {e}"))?;
    Ok(steps)
}

/// The command-line spelling of a schedule (what [`parse_schedule`] reads).
pub fn show_schedule(steps: &[PruneStep]) -> String {
    if steps.is_empty() {
        return "none".into();
    }
    steps
        .iter()
        .map(|s| format!("{}:{}", s.after_block, s.keep))
        .collect::<Vec<_>>()
        .join(",")
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
pub const DEFAULT_SCORER: TokenScorer = TokenScorer::Norm;
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
