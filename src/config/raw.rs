//! The TOML file as serde sees it (`RawConfig`, unknown keys rejected per
//! table) and its validation into the typed [`Config`](super::Config): ranges,
//! consistency between keys, path resolution and `${config_dir}` expansion.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Ranges accepted by validation (inclusive). Frame timeout below 10 ms would
/// restart any real camera between two frames; an hour is already "never".
const FRAME_TIMEOUT_MS_RANGE: (u64, u64) = (10, 3_600_000);
const BACKOFF_MS_RANGE: (u64, u64) = (1, 3_600_000);
const THREADS_RANGE: (usize, usize) = (1, 256);
const MAX_PROMPTS_RANGE: (usize, usize) = (1, 1024);
/// Longer prompts would be truncated by the text encoder's token limit anyway.
pub(super) const MAX_PROMPT_BYTES: usize = 256;
const MASK_SIDE_RANGE: (u32, u32) = (1, 4096);
const MAX_CLIENTS_RANGE: (usize, usize) = (1, 1024);
const QUEUE_DEPTH_RANGE: (usize, usize) = (1, 1024);
/// `sun_path` holds 108 bytes including the terminating NUL (unix(7)).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Mirrors the TOML file; every table rejects unknown keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    source: RawSource,
    engine: RawEngine,
    prompts: RawPrompts,
    #[serde(default)]
    masks: RawMasks,
    #[serde(default)]
    publish: RawPublish,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    pruning: RawPruning,
}

/// `[pruning]`; absent: no schedule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPruning {
    #[serde(default)]
    schedule: Vec<RawPruneStep>,
    #[serde(default)]
    scorer: TokenScorer,
    #[serde(default)]
    merge: bool,
}

/// Signed and wide so that validation, not serde, names a negative block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPruneStep {
    after_block: i64,
    keep: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    pipeline: String,
    #[serde(rename = "loop", default = "default_looping")]
    looping: bool,
    #[serde(default)]
    resize: RawResize,
    #[serde(default = "default_frame_timeout_ms")]
    frame_timeout_ms: u64,
    #[serde(default = "default_backoff_initial_ms")]
    backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    backoff_max_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawResize {
    #[default]
    Letterbox,
    Stretch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    manifest: PathBuf,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_sparse_kernel")]
    sparse_kernel: SparseKernel,
    #[serde(default = "default_fused_ops")]
    fused_ops: bool,
    #[serde(default = "default_device")]
    device: Device,
}

fn default_fused_ops() -> bool {
    DEFAULT_FUSED_OPS
}

fn default_device() -> Device {
    DEFAULT_DEVICE
}

fn default_sparse_kernel() -> SparseKernel {
    DEFAULT_SPARSE_KERNEL
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompts {
    text: Vec<String>,
    mask_threshold: Option<f32>,
    score_threshold: Option<f32>,
    #[serde(default = "default_max_prompts")]
    max_prompts: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMasks {
    width: u32,
    height: u32,
    encoding: RawEncoding,
}

impl Default for RawMasks {
    fn default() -> Self {
        RawMasks {
            width: DEFAULT_MASK_WIDTH,
            height: DEFAULT_MASK_HEIGHT,
            encoding: RawEncoding::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawEncoding {
    #[default]
    Rle,
    CocoRle,
    Bitmask,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPublish {
    socket: PathBuf,
    /// An octal string: TOML integers would read `660` as decimal.
    mode: String,
    group: Option<String>,
    max_clients: usize,
    queue_depth: usize,
    allow_uids: Option<Vec<RawId>>,
    allow_gids: Option<Vec<RawId>>,
}

/// A uid or gid as written: anything but an integer is kept so that
/// validation can name it, rather than serde's "invalid type".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawId {
    Number(i64),
    Other(toml::Value),
}

impl Default for RawPublish {
    fn default() -> Self {
        RawPublish {
            socket: PathBuf::from(DEFAULT_SOCKET),
            mode: DEFAULT_SOCKET_MODE.to_string(),
            group: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            allow_uids: None,
            allow_gids: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: RawLevel,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

fn default_looping() -> bool {
    DEFAULT_LOOPING
}
fn default_frame_timeout_ms() -> u64 {
    DEFAULT_FRAME_TIMEOUT_MS
}
fn default_backoff_initial_ms() -> u64 {
    DEFAULT_BACKOFF_INITIAL_MS
}
fn default_backoff_max_ms() -> u64 {
    DEFAULT_BACKOFF_MAX_MS
}
fn default_threads() -> usize {
    DEFAULT_THREADS
}
fn default_max_prompts() -> usize {
    DEFAULT_MAX_PROMPTS
}

/// Builds `Invalid` errors for one file.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn invalid(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(
        &self,
        key: &str,
        value: T,
        (min, max): (T, T),
    ) -> Result<T, ConfigError> {
        if value < min || value > max {
            return Err(self.invalid(key, format!("{value} is out of range {min}..={max}")));
        }
        Ok(value)
    }

    fn threshold(&self, key: &str, value: Option<f32>) -> Result<Option<f32>, ConfigError> {
        match value {
            Some(v) if !(v > 0.0 && v < 1.0) => Err(self.invalid(
                key,
                format!("{v} must lie strictly between 0 and 1 (a probability)"),
            )),
            _ => Ok(value),
        }
    }
}

impl RawConfig {
    pub(super) fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let check = Check { path };
        let dir = config_dir(path);
        Ok(Config {
            path: path.to_path_buf(),
            source: self.source.validate(&check, &dir)?,
            engine: EngineConfig {
                pruning: self.pruning.validate(&check)?,
                ..self.engine.validate(&check, &dir)?
            },
            prompts: self.prompts.validate(&check)?,
            masks: self.masks.validate(&check)?,
            publish: self.publish.validate(&check, &dir)?,
            log: LogConfig {
                level: self.log.level.into(),
            },
        })
    }
}

impl RawSource {
    fn validate(self, check: &Check<'_>, dir: &Path) -> Result<SourceConfig, ConfigError> {
        let pipeline = expand_pipeline(&self.pipeline, dir)
            .map_err(|reason| check.invalid("source.pipeline", reason))?;
        if pipeline.trim().is_empty() {
            return Err(check.invalid("source.pipeline", "must not be empty"));
        }
        let trimmed = pipeline.trim();
        if trimmed.starts_with('!') || trimmed.ends_with('!') {
            return Err(check.invalid(
                "source.pipeline",
                "must not start or end with `!` (maskd links its own conversion and appsink)",
            ));
        }
        let frame_timeout_ms = check.range(
            "source.frame_timeout_ms",
            self.frame_timeout_ms,
            FRAME_TIMEOUT_MS_RANGE,
        )?;
        let backoff_initial_ms = check.range(
            "source.backoff_initial_ms",
            self.backoff_initial_ms,
            BACKOFF_MS_RANGE,
        )?;
        let backoff_max_ms = check.range(
            "source.backoff_max_ms",
            self.backoff_max_ms,
            BACKOFF_MS_RANGE,
        )?;
        if backoff_max_ms < backoff_initial_ms {
            return Err(check.invalid(
                "source.backoff_max_ms",
                format!(
                    "{backoff_max_ms} is below source.backoff_initial_ms ({backoff_initial_ms})"
                ),
            ));
        }
        Ok(SourceConfig {
            pipeline,
            looping: self.looping,
            resize: match self.resize {
                RawResize::Letterbox => ResizeMode::Letterbox,
                RawResize::Stretch => ResizeMode::Stretch,
            },
            frame_timeout: Duration::from_millis(frame_timeout_ms),
            backoff_initial: Duration::from_millis(backoff_initial_ms),
            backoff_max: Duration::from_millis(backoff_max_ms),
        })
    }
}

impl RawEngine {
    fn validate(self, check: &Check<'_>, dir: &Path) -> Result<EngineConfig, ConfigError> {
        if self.manifest.as_os_str().is_empty() {
            return Err(check.invalid("engine.manifest", "must not be empty"));
        }
        Ok(EngineConfig {
            manifest: resolve(dir, &self.manifest),
            threads: check.range("engine.threads", self.threads, THREADS_RANGE)?,
            sparse_kernel: self.sparse_kernel,
            fused_ops: self.fused_ops,
            device: self.device,
            pruning: PruningConfig::default(),
        })
    }
}

impl RawPruning {
    fn validate(self, check: &Check<'_>) -> Result<PruningConfig, ConfigError> {
        let mut schedule = Vec::with_capacity(self.schedule.len());
        for (i, step) in self.schedule.iter().enumerate() {
            let after_block = usize::try_from(step.after_block).map_err(|_| {
                check.invalid(
                    format!("pruning.schedule[{i}].after_block"),
                    format!("{} is not a block index (0 is the first)", step.after_block),
                )
            })?;
            schedule.push(PruneStep {
                after_block,
                keep: step.keep as f32,
            });
        }
        check_schedule(&schedule).map_err(|e| {
            check.invalid(
                format!("pruning.schedule[{}].{}", e.index, e.field),
                e.reason,
            )
        })?;
        Ok(PruningConfig {
            schedule,
            scorer: self.scorer,
            merge: self.merge,
        })
    }
}

impl RawPrompts {
    fn validate(self, check: &Check<'_>) -> Result<PromptsConfig, ConfigError> {
        if self.text.is_empty() {
            return Err(check.invalid("prompts.text", "must not be empty"));
        }
        for (i, text) in self.text.iter().enumerate() {
            let key = format!("prompts.text[{i}]");
            if text.trim().is_empty() {
                return Err(check.invalid(key, "must not be blank"));
            }
            if text.len() > MAX_PROMPT_BYTES {
                return Err(check.invalid(
                    key,
                    format!(
                        "is {} bytes long; the limit is {MAX_PROMPT_BYTES}",
                        text.len()
                    ),
                ));
            }
            if let Some(first) = self.text[..i].iter().position(|t| t == text) {
                return Err(check.invalid(key, format!("{text:?} repeats prompts.text[{first}]")));
            }
        }
        let max_prompts =
            check.range("prompts.max_prompts", self.max_prompts, MAX_PROMPTS_RANGE)?;
        if self.text.len() > max_prompts {
            return Err(check.invalid(
                "prompts.max_prompts",
                format!(
                    "{max_prompts} is fewer than the {} prompts in prompts.text",
                    self.text.len()
                ),
            ));
        }
        Ok(PromptsConfig {
            mask_threshold: check.threshold("prompts.mask_threshold", self.mask_threshold)?,
            score_threshold: check.threshold("prompts.score_threshold", self.score_threshold)?,
            text: self.text,
            max_prompts,
        })
    }
}

impl RawMasks {
    fn validate(self, check: &Check<'_>) -> Result<MaskConfig, ConfigError> {
        Ok(MaskConfig {
            width: check.range("masks.width", self.width, MASK_SIDE_RANGE)?,
            height: check.range("masks.height", self.height, MASK_SIDE_RANGE)?,
            encoding: match self.encoding {
                RawEncoding::Rle => MaskEncoding::Rle,
                RawEncoding::CocoRle => MaskEncoding::CocoRle,
                RawEncoding::Bitmask => MaskEncoding::Bitmask,
            },
        })
    }
}

impl RawPublish {
    fn validate(self, check: &Check<'_>, dir: &Path) -> Result<PublishConfig, ConfigError> {
        if self.socket.as_os_str().is_empty() {
            return Err(check.invalid("publish.socket", "must not be empty"));
        }
        let socket = resolve(dir, &self.socket);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            return Err(check.invalid(
                "publish.socket",
                format!(
                    "{} is {len} bytes; Unix socket paths are limited to {MAX_SOCKET_PATH_BYTES}",
                    socket.display()
                ),
            ));
        }
        let mode =
            parse_mode(&self.mode).map_err(|reason| check.invalid("publish.mode", reason))?;
        if let Some(group) = &self.group {
            if group.trim().is_empty() {
                return Err(check.invalid(
                    "publish.group",
                    "must not be empty (leave it out for the daemon's group)",
                ));
            }
        }
        Ok(PublishConfig {
            socket,
            mode,
            group: self.group,
            max_clients: check.range("publish.max_clients", self.max_clients, MAX_CLIENTS_RANGE)?,
            queue_depth: check.range("publish.queue_depth", self.queue_depth, QUEUE_DEPTH_RANGE)?,
            allow_uids: ids(check, "publish.allow_uids", "uid", self.allow_uids)?,
            allow_gids: ids(check, "publish.allow_gids", "gid", self.allow_gids)?,
        })
    }
}

/// Validates an allow list of numeric ids: each in 0..=u32::MAX - 1
/// (u32::MAX is the kernel's "no id"), and the list not empty, since an empty
/// list would read as "no one" when leaving the key out means "everyone".
fn ids(
    check: &Check<'_>,
    key: &str,
    what: &str,
    raw: Option<Vec<RawId>>,
) -> Result<Option<Vec<u32>>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.is_empty() {
        return Err(check.invalid(
            key,
            format!(
                "is empty; list at least one {what}, or leave the key out to allow every {what}"
            ),
        ));
    }
    raw.into_iter()
        .map(|id| match id {
            RawId::Number(n) => u32::try_from(n)
                .ok()
                .filter(|&n| n != u32::MAX)
                .ok_or_else(|| check.invalid(key, format!("{what} {n} is out of range 0..={}", u32::MAX - 1))),
            RawId::Other(v) => Err(check.invalid(
                key,
                format!("{v} is not a number ({what}s are numeric: `id -u NAME` / `getent group NAME` print them)"),
            )),
        })
        .collect::<Result<Vec<u32>, _>>()
        .map(Some)
}

impl From<RawLevel> for log::LevelFilter {
    fn from(level: RawLevel) -> Self {
        match level {
            RawLevel::Off => log::LevelFilter::Off,
            RawLevel::Error => log::LevelFilter::Error,
            RawLevel::Warn => log::LevelFilter::Warn,
            RawLevel::Info => log::LevelFilter::Info,
            RawLevel::Debug => log::LevelFilter::Debug,
            RawLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The directory relative paths resolve against: the config file's, made
/// absolute now so a later change of working directory cannot move it.
fn config_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match absolute.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Expands `${config_dir}`; any other `${...}` is an error so a typo cannot
/// silently reach GStreamer. The value is inserted verbatim: quote it in the
/// pipeline (`location="${config_dir}/clip.webm"`) if the path has spaces.
fn expand_pipeline(pipeline: &str, dir: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(pipeline.len());
    let mut rest = pipeline;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {pipeline:?}"))?;
        let name = &after[..end];
        if name != CONFIG_DIR_VAR {
            return Err(format!(
                "unknown variable `${{{name}}}` (only `${{{CONFIG_DIR_VAR}}}` is defined)"
            ));
        }
        let dir = dir
            .to_str()
            .ok_or_else(|| format!("`${{{CONFIG_DIR_VAR}}}` ({}) is not UTF-8", dir.display()))?;
        out.push_str(dir);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses an octal file mode such as `"0660"` or `"0o660"`.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("{text:?} is not an octal mode like \"0660\""))?;
    if mode > 0o777 {
        return Err(format!("{text:?} is out of range 0000..=0777"));
    }
    if mode & 0o222 == 0 {
        return Err(format!(
            "{text:?} lets no one connect (connecting to a socket needs write permission)"
        ));
    }
    Ok(mode)
}
