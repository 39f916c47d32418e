//! `maskd bench --dump-inputs DIR`: the bytes the segmenter graph received and returned
//! on one frame, so that another runtime (ONNX Runtime in `bench/peer/`) can be fed
//! exactly maskd's inputs and its outputs compared with maskd's.
//!
//! Each tensor is a `.npy` file (version 1.0, little-endian f32, C order: `numpy.load`
//! reads it as is) named after the graph's input or output; `inputs.json` says which
//! graph, which prompts, the preprocessing and the thresholds, and lists every file
//! with its shape.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::config::SparseKernel;

use super::frame::{Loaded, MASK_SIZE};
use super::{BenchArgs, Variant};

/// `inputs.json`.
#[derive(Debug, Serialize)]
pub struct DumpHeader {
    pub manifest: PathBuf,
    /// The segmenter graph the tensors belong to (absolute).
    pub graph: PathBuf,
    pub sparse_kernel: SparseKernel,
    pub prompts: Vec<String>,
    /// The source image, before it was resized to the model's input.
    pub image: PathBuf,
    pub input_width: u32,
    pub input_height: u32,
    /// The normalisation `(x / 255 - mean) / std` per RGB channel.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub mask_threshold: f32,
    pub score_threshold: f32,
    /// The `[masks]` size the bench thresholds into.
    pub mask_width: u32,
    pub mask_height: u32,
    pub inputs: Vec<TensorFile>,
    pub outputs: Vec<TensorFile>,
}

/// One tensor written beside `inputs.json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct TensorFile {
    /// The graph's name for it.
    pub name: String,
    /// File name inside the dump directory.
    pub file: String,
    pub shape: Vec<usize>,
    pub dtype: &'static str,
}

/// Loads the variant, runs its warm-up frames and one more, and writes that frame's
/// segmenter inputs and outputs into `dir`.
pub fn run(args: &BenchArgs, variant: &Variant, dir: &Path) -> anyhow::Result<DumpHeader> {
    let mut loaded = Loaded::new(args, variant)?;
    loaded.frame(3)?;
    std::fs::create_dir_all(dir).with_context(|| format!("--dump-inputs {}", dir.display()))?;
    let engine = &loaded.engine;
    let m = engine.manifest();
    let seg = engine.segmenter();
    let s = &m.segmenter;
    let mut inputs = Vec::new();
    for (name, tensor) in [(&s.image_input, seg.image()), (&s.text_input, seg.text())] {
        let data = tensor
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
            .with_context(|| format!("segmenter input {name}"))?;
        inputs.push(write_tensor(dir, name, tensor.shape(), &data)?);
    }
    let (mask_logits, presence) = seg.outputs()?;
    let p = seg.prompts();
    let outputs = vec![
        write_tensor(
            dir,
            &s.mask_output,
            &[p, s.mask_size[0], s.mask_size[1]],
            mask_logits,
        )?,
        write_tensor(dir, &s.score_output, &[p], presence)?,
    ];
    let header = DumpHeader {
        manifest: absolute(&variant.manifest),
        graph: absolute(&s.model),
        sparse_kernel: variant.kernel,
        prompts: args.prompts.clone(),
        image: absolute(&args.image),
        input_width: m.image.width,
        input_height: m.image.height,
        mean: m.image.mean,
        std: m.image.std,
        mask_threshold: s.mask_threshold,
        score_threshold: s.score_threshold,
        mask_width: MASK_SIZE.0,
        mask_height: MASK_SIZE.1,
        inputs,
        outputs,
    };
    let json = dir.join("inputs.json");
    std::fs::write(&json, serde_json::to_string_pretty(&header)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(header)
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes `data` as `<dir>/<name>.npy`; the name is the graph's, made file-safe.
fn write_tensor(
    dir: &Path,
    name: &str,
    shape: &[usize],
    data: &[f32],
) -> anyhow::Result<TensorFile> {
    anyhow::ensure!(
        shape.iter().product::<usize>() == data.len(),
        "{name}: {} values for shape {shape:?}",
        data.len()
    );
    let file = format!("{}.npy", file_safe(name));
    let path = dir.join(&file);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    out.write_all(&npy_header(shape))
        .and_then(|()| {
            data.iter()
                .try_for_each(|v| out.write_all(&v.to_le_bytes()))
        })
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(TensorFile {
        name: name.to_string(),
        file,
        shape: shape.to_vec(),
        dtype: "float32",
    })
}

/// Graph names may hold `/` or `:`; the file keeps letters, digits, `-`, `_` and `.`.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The magic, version 1.0 and the header dict of a little-endian f32 C-order array,
/// padded with spaces so that the data starts at a multiple of 64 bytes, as the format
/// asks.
fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    // A 1-d shape needs its trailing comma to be a Python tuple.
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // Bounded by the few dims a graph tensor has, far below u16::MAX.
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_names_the_shape() {
        for shape in [&[1usize, 3, 224, 224][..], &[3], &[3, 56, 56], &[]] {
            let h = npy_header(shape);
            assert_eq!(h.len() % 64, 0, "{shape:?}");
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            let len = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(len + 10, h.len());
            assert_eq!(h.last(), Some(&b'\n'));
            let text = String::from_utf8_lossy(&h[10..]);
            assert!(text.contains("'descr': '<f4'"), "{text}");
            assert!(text.contains("'fortran_order': False"), "{text}");
        }
        let text = |shape: &[usize]| String::from_utf8_lossy(&npy_header(shape)[10..]).into_owned();
        assert!(text(&[1, 3, 224, 224]).contains("'shape': (1, 3, 224, 224)"));
        assert!(text(&[3]).contains("'shape': (3,)"));
        assert!(text(&[]).contains("'shape': ()"));
    }

    #[test]
    fn tensors_are_written_little_endian_after_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let t = write_tensor(
            dir.path(),
            "mask/logits:0",
            &[2, 2],
            &[1.0, -2.5, 0.0, 3.25],
        )
        .unwrap();
        assert_eq!(t.file, "mask_logits_0.npy");
        assert_eq!(t.shape, vec![2, 2]);
        let bytes = std::fs::read(dir.path().join(&t.file)).unwrap();
        let header = npy_header(&[2, 2]).len();
        let values: Vec<f32> = bytes[header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(values, vec![1.0, -2.5, 0.0, 3.25]);
        assert!(write_tensor(dir.path(), "x", &[3], &[1.0]).is_err());
    }
}
