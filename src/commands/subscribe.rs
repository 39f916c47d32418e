//! `maskd subscribe`: a terminal client for a running daemon.
//!
//! Connects to the socket, subscribes to prompts (from `--prompt`, or the
//! `[prompts]` of a config file), prints one line per frame and optionally
//! writes every mask as a PNG. Owns the command's arguments and output; the
//! protocol work is `publish::Client`'s.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::config::{self, MaskEncoding};
use crate::contracts::PromptId;
use crate::publish::{Client, FrameMessage};

/// Mask encoding asked of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EncodingArg {
    /// Row-major varint run lengths (compact for blobs).
    Rle,
    /// COCO compressed RLE string (pycocotools).
    Coco,
    /// 1 bit per pixel, rows padded to bytes.
    Bitmask,
}

impl From<EncodingArg> for MaskEncoding {
    fn from(e: EncodingArg) -> MaskEncoding {
        match e {
            EncodingArg::Rle => MaskEncoding::Rle,
            EncodingArg::Coco => MaskEncoding::CocoRle,
            EncodingArg::Bitmask => MaskEncoding::Bitmask,
        }
    }
}

/// Arguments of `maskd subscribe`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
    /// The daemon's socket [default: publish.socket of --config, else /run/maskd/maskd.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Prompt to subscribe to; repeat for several [default: the [prompts] of --config].
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// Take the socket and prompts from this maskd config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mask encoding on the wire [default: the daemon's masks.encoding].
    #[arg(long, value_enum)]
    pub encoding: Option<EncodingArg>,
    /// Stop after N frames [default: until interrupted].
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Write each mask as a PNG into DIR, named <seq>_<prompt>.png.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Fail if no frame arrives for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
}

/// Runs `maskd subscribe`, printing to stdout.
pub fn run(args: &SubscribeArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    run_to(args, &mut stdout.lock())
}

/// Runs `maskd subscribe`, printing one line per frame to `out`.
pub fn run_to(args: &SubscribeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (socket, prompts) = target(args)?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .with_context(|| {
            format!(
                "--timeout {}: expected a positive number of seconds",
                args.timeout
            )
        })?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out: creating {}", dir.display()))?;
    }
    let mut client = Client::connect(&socket)?;
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ids = client
        .subscribe(&texts, args.encoding.map(MaskEncoding::from))
        .with_context(|| format!("subscribing to {texts:?} on {}", socket.display()))?;
    let names = Names::new(&ids, &texts);

    let mut received = 0u64;
    while args.count.is_none_or(|n| received < n) {
        let Some(frame) = client
            .recv(timeout)
            .with_context(|| format!("reading from {}", socket.display()))?
        else {
            bail!(
                "no frame from {} within {:?} (is the camera delivering frames?)",
                socket.display(),
                timeout
            );
        };
        received += 1;
        writeln!(out, "{}", line(&frame, &ids, &names, realtime_ns()))?;
        if let Some(dir) = &args.out {
            write_pngs(dir, &frame, &names)?;
        }
    }
    Ok(())
}

/// Socket and prompts from the arguments, falling back to `--config`.
fn target(args: &SubscribeArgs) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let cfg = match &args.config {
        Some(path) => Some(config::load(path)?),
        None => None,
    };
    let socket = args
        .socket
        .clone()
        .or_else(|| cfg.as_ref().map(|c| c.publish.socket.clone()))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_SOCKET));
    let prompts = if !args.prompts.is_empty() {
        args.prompts.clone()
    } else if let Some(c) = &cfg {
        c.prompts.text.clone()
    } else {
        Vec::new()
    };
    if prompts.is_empty() {
        bail!("nothing to subscribe to: give --prompt TEXT (repeatable) or --config FILE with [prompts] text");
    }
    Ok((socket, prompts))
}

/// Display text and file-name slug of each subscribed id.
struct Names {
    text: HashMap<PromptId, String>,
    file: HashMap<PromptId, String>,
}

impl Names {
    fn new(ids: &[PromptId], texts: &[&str]) -> Names {
        let mut text = HashMap::new();
        let mut file = HashMap::new();
        let mut used: HashMap<String, PromptId> = HashMap::new();
        for (&id, &t) in ids.iter().zip(texts) {
            let shown = if t.chars().any(|c| c.is_whitespace() || c == '=' || c == '"') {
                format!("{t:?}")
            } else {
                t.to_owned()
            };
            text.insert(id, shown);
            // Different texts can share a slug ("Red" / "red"); the id tells them apart.
            let mut name = slug(t);
            if used.get(&name).is_some_and(|&other| other != id) {
                name = format!("{name}-{id}");
            }
            used.insert(name.clone(), id);
            file.insert(id, name);
        }
        Names { text, file }
    }
}

/// `red circle!` -> `red-circle`: lowercase ASCII letters and digits, dashes between.
fn slug(text: &str) -> String {
    let mut s = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() {
        s.push_str("prompt");
    }
    s
}

/// `000042 red=12.3% (0.91) blue=- latency=14.2ms dropped=0`; `-` = no mask this frame.
fn line(frame: &FrameMessage, ids: &[PromptId], names: &Names, now_ns: u64) -> String {
    let mut s = format!("{:06}", frame.header.seq);
    let mut seen = Vec::with_capacity(ids.len());
    for &id in ids {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let text = names.text.get(&id).map_or("?", String::as_str);
        match frame.masks.iter().find(|m| m.prompt_id == id) {
            Some(m) => s += &format!(" {text}={:.1}% ({:.2})", m.coverage * 100.0, m.score),
            None => s += &format!(" {text}=-"),
        }
    }
    let latency_ms = now_ns.saturating_sub(frame.header.capture_ns) as f64 / 1e6;
    s += &format!(
        " latency={latency_ms:.1}ms dropped={}",
        frame.header.dropped
    );
    s
}

fn write_pngs(dir: &Path, frame: &FrameMessage, names: &Names) -> anyhow::Result<()> {
    let (w, h) = (frame.header.mask_width, frame.header.mask_height);
    let mut gray = Vec::new();
    for m in &frame.masks {
        let name = names
            .file
            .get(&m.prompt_id)
            .cloned()
            .unwrap_or_else(|| format!("id{}", m.prompt_id));
        let path = dir.join(format!("{:06}_{name}.png", frame.header.seq));
        gray.clear();
        gray.extend(m.bits.iter().map(|&b| if b != 0 { 255u8 } else { 0 }));
        image::save_buffer(&path, &gray, w, h, image::ColorType::L8)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::wire::FrameHeader;
    use crate::publish::ReceivedMask;

    fn args() -> SubscribeArgs {
        SubscribeArgs {
            socket: None,
            prompts: vec![],
            config: None,
            encoding: None,
            count: None,
            out: None,
            timeout: 10.0,
        }
    }

    #[test]
    fn prints_frames_and_writes_pngs_from_a_live_daemon() {
        use crate::publish::test_util::{config, frame, pattern, FakeDirectory, TempDir};
        use crate::publish::Publisher;

        let dir = TempDir::new("subscribe");
        let socket = dir.join("maskd.sock");
        let mut p = Publisher::bind(&config(&socket), MaskEncoding::Rle).unwrap();
        let mut d = FakeDirectory::default();
        let mut a = args();
        a.socket = Some(socket);
        a.prompts = vec!["Red circle".into(), "blue".into()];
        a.encoding = Some(EncodingArg::Bitmask);
        a.count = Some(2);
        a.out = Some(dir.join("png"));
        let thread_args = a.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            run_to(&thread_args, &mut out).map(|()| String::from_utf8_lossy(&out).into_owned())
        });
        let mut seq = 0;
        while !handle.is_finished() {
            assert!(seq < 5_000, "maskd subscribe did not finish");
            p.service(&mut d);
            // Only "Red circle" (id 100) has a mask; "blue" (101) is absent.
            p.publish(&frame(seq, 12, 8, &[100, 9]));
            seq += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        let text = handle.join().unwrap().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for l in &lines {
            assert!(
                l.contains(" \"Red circle\"=25.0% (0.60) blue=- latency="),
                "{l}"
            );
            assert!(l.ends_with("dropped=0"), "{l}");
        }
        let first_seq: u64 = lines[0][..6].parse().unwrap();
        let png = dir
            .join("png")
            .join(format!("{first_seq:06}_red-circle.png"));
        let img = image::open(&png).unwrap().into_luma8();
        let expected: Vec<u8> = pattern(100, 12, 8).iter().map(|&b| b * 255).collect();
        assert_eq!((img.width(), img.height()), (12, 8));
        assert_eq!(img.into_raw(), expected);
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Red circle!"), "red-circle");
        assert_eq!(slug("  a--b  "), "a-b");
        assert_eq!(slug("日本"), "prompt");
    }

    #[test]
    fn clashing_slugs_get_the_id() {
        let n = Names::new(&[1, 2], &["Red", "red"]);
        assert_eq!((n.file[&1].as_str(), n.file[&2].as_str()), ("red", "red-2"));
    }

    #[test]
    fn the_line_shows_coverage_score_latency_and_drops() {
        let frame = FrameMessage {
            header: FrameHeader {
                seq: 42,
                capture_ns: 1_000_000_000,
                publish_ns: 1_005_000_000,
                frame_width: 640,
                frame_height: 480,
                mask_width: 2,
                mask_height: 1,
                mask_count: 1,
                encoding: MaskEncoding::Rle,
                dropped: 3,
            },
            masks: vec![ReceivedMask {
                prompt_id: 7,
                score: 0.912,
                coverage: 0.123,
                bits: vec![0, 1],
            }],
        };
        let names = Names::new(&[7, 8], &["red circle", "blue"]);
        assert_eq!(
            line(&frame, &[7, 8], &names, 1_014_200_000),
            "000042 \"red circle\"=12.3% (0.91) blue=- latency=14.2ms dropped=3"
        );
    }

    #[test]
    fn no_prompts_is_an_error_that_says_what_to_do() {
        let err = target(&args()).unwrap_err().to_string();
        assert!(err.contains("--prompt"), "{err}");
    }

    #[test]
    fn a_missing_daemon_is_a_clear_error() {
        let mut a = args();
        a.socket = Some(PathBuf::from("/nonexistent/maskd-test.sock"));
        a.prompts = vec!["x".into()];
        let err = format!("{:#}", run_to(&a, &mut Vec::new()).unwrap_err());
        assert!(
            err.contains("/nonexistent/maskd-test.sock") && err.contains("is maskd running"),
            "{err}"
        );
    }
}
