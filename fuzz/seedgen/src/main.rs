//! Writes `fuzz/seeds/<target>/` from maskd's own code: control and server messages
//! built with `publish::wire`, masks encoded with `masks::encode` (a real evaluation
//! mask from `models/eval/masks/` among them), the shipped configs and manifests.
//! Deterministic: running it again rewrites the same files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use maskd::config::MaskEncoding;
use maskd::masks;
use maskd::publish::wire::{self, ErrorCode, FrameHeader};

const ENCODINGS: [MaskEncoding; 3] = [
    MaskEncoding::Rle,
    MaskEncoding::CocoRle,
    MaskEncoding::Bitmask,
];

struct Seeds {
    dir: PathBuf,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> anyhow::Result<Seeds> {
        let dir = root.join("fuzz/seeds").join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Seeds { dir })
    }
    fn write(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// A `w` x `h` mask with a filled ellipse and a rectangle, row-major 0/1.
fn shapes(w: u32, h: u32) -> Vec<u8> {
    let (wf, hf) = (w as f32, h as f32);
    let mut bits = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (
                (x as f32 - wf * 0.3) / (wf * 0.2),
                (y as f32 - hf * 0.5) / (hf * 0.3),
            );
            let ellipse = dx * dx + dy * dy <= 1.0;
            let rect = x > w * 6 / 10 && x < w * 9 / 10 && y > h / 5 && y < h * 3 / 5;
            bits.push(u8::from(ellipse || rect));
        }
    }
    bits
}

/// The first mask of the evaluation set: a real object outline, 224 x 224.
fn eval_mask(root: &Path) -> anyhow::Result<(u32, u32, Vec<u8>)> {
    let path = root.join("models/eval/masks/0000_00.png");
    let img = image::open(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_luma8();
    let (w, h) = img.dimensions();
    Ok((w, h, img.pixels().map(|p| u8::from(p.0[0] > 127)).collect()))
}

fn encode(encoding: MaskEncoding, bits: &[u8], w: u32, h: u32) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    masks::encode(encoding, bits, w, h, &mut out)?;
    Ok(out)
}

fn name(encoding: MaskEncoding) -> &'static str {
    match encoding {
        MaskEncoding::Rle => "rle",
        MaskEncoding::CocoRle => "coco",
        MaskEncoding::Bitmask => "bitmask",
    }
}

fn control(root: &Path) -> anyhow::Result<()> {
    let seeds = Seeds::new(root, "control")?;
    let mut out = Vec::new();
    wire::write_subscribe(
        &mut out,
        None,
        &["red circle", "blue square", "yellow star"],
    )?;
    seeds.write("subscribe_default", &out)?;
    wire::write_subscribe(
        &mut out,
        Some(MaskEncoding::CocoRle),
        &["crème brûlée", "東京タワー"],
    )?;
    seeds.write("subscribe_coco_utf8", &out)?;
    wire::write_subscribe(&mut out, Some(MaskEncoding::Bitmask), &[])?;
    seeds.write("subscribe_empty", &out)?;
    let long = "x".repeat(wire::MAX_PROMPT_BYTES);
    let many: Vec<&str> = vec![long.as_str(); wire::MAX_PROMPTS];
    wire::write_subscribe(&mut out, Some(MaskEncoding::Rle), &many)?;
    seeds.write("subscribe_largest", &out)?;
    wire::write_unsubscribe(&mut out);
    seeds.write("unsubscribe", &out)?;
    wire::write_ping(&mut out, 0x0123_4567_89ab_cdef);
    seeds.write("ping", &out)?;
    Ok(())
}

fn frame(encoding: MaskEncoding, w: u32, h: u32, masks: &[Vec<u8>]) -> anyhow::Result<Vec<u8>> {
    let header = FrameHeader {
        seq: 42,
        capture_ns: 1_764_000_000_000_000_000,
        publish_ns: 1_764_000_000_020_000_000,
        frame_width: 640,
        frame_height: 480,
        mask_width: w,
        mask_height: h,
        mask_count: masks.len() as u16,
        encoding,
        dropped: 1,
    };
    let mut out = Vec::new();
    header.write(&mut out);
    for (i, bits) in masks.iter().enumerate() {
        let payload = encode(encoding, bits, w, h)?;
        let coverage = bits.iter().filter(|&&b| b != 0).count() as f32 / bits.len() as f32;
        wire::write_mask(&mut out, i as u32 + 1, 0.9, coverage, &payload);
    }
    Ok(out)
}

fn server_message(root: &Path) -> anyhow::Result<()> {
    let seeds = Seeds::new(root, "server_message")?;
    let (ew, eh, eval) = eval_mask(root)?;
    for encoding in ENCODINGS {
        let (w, h) = (16, 12);
        let empty = vec![0; (w * h) as usize];
        seeds.write(
            &format!("frame_{}_16x12", name(encoding)),
            &frame(encoding, w, h, &[shapes(w, h), empty])?,
        )?;
        seeds.write(
            &format!("frame_{}_eval", name(encoding)),
            &frame(encoding, ew, eh, std::slice::from_ref(&eval))?,
        )?;
    }
    seeds.write("frame_no_masks", &frame(MaskEncoding::Rle, 160, 120, &[])?)?;
    let mut out = Vec::new();
    wire::write_subscribed(&mut out, MaskEncoding::Rle, &[1, 2, 3]);
    seeds.write("subscribed", &out)?;
    wire::write_unsubscribed(&mut out);
    seeds.write("unsubscribed", &out)?;
    wire::write_pong(&mut out, 7);
    seeds.write("pong", &out)?;
    wire::write_error(
        &mut out,
        ErrorCode::TooManyPrompts,
        true,
        "too many prompts: 32 are live (prompts.max_prompts)",
    );
    seeds.write("error", &out)?;
    Ok(())
}

/// The `mask_decode` input: encoding selector, width, height (u16 LE), payload.
fn mask_input(encoding: MaskEncoding, w: u32, h: u32, payload: &[u8]) -> Vec<u8> {
    let selector = match encoding {
        MaskEncoding::Rle => 0,
        MaskEncoding::CocoRle => 1,
        MaskEncoding::Bitmask => 2,
    };
    let mut out = vec![selector];
    out.extend_from_slice(&(w as u16).to_le_bytes());
    out.extend_from_slice(&(h as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn mask_decode(root: &Path) -> anyhow::Result<()> {
    let seeds = Seeds::new(root, "mask_decode")?;
    let (ew, eh, eval) = eval_mask(root)?;
    for encoding in ENCODINGS {
        let n = name(encoding);
        let (w, h) = (16, 12);
        let shaped = encode(encoding, &shapes(w, h), w, h)?;
        seeds.write(
            &format!("{n}_shapes_16x12"),
            &mask_input(encoding, w, h, &shaped),
        )?;
        let (w, h) = (13, 5);
        let full = encode(encoding, &vec![1; (w * h) as usize], w, h)?;
        seeds.write(
            &format!("{n}_full_13x5"),
            &mask_input(encoding, w, h, &full),
        )?;
        let real = encode(encoding, &eval, ew, eh)?;
        seeds.write(
            &format!("{n}_eval_224"),
            &mask_input(encoding, ew, eh, &real),
        )?;
        let none = encode(encoding, &[], 0, 7)?;
        seeds.write(
            &format!("{n}_zero_width"),
            &mask_input(encoding, 0, 7, &none),
        )?;
    }
    Ok(())
}

/// Copies every `*.toml` of `from` (sorted, so reruns write the same set).
fn copy_tomls(root: &Path, from: &str, target: &str) -> anyhow::Result<()> {
    let seeds = Seeds::new(root, target)?;
    let dir = root.join(from);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for path in files {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
            seeds.write(file, &bytes)?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    control(&root)?;
    server_message(&root)?;
    mask_decode(&root)?;
    copy_tomls(&root, "configs", "config")?;
    copy_tomls(&root, "models", "manifest")?;
    println!("seeds written under {}", root.join("fuzz/seeds").display());
    Ok(())
}
