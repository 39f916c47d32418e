//! `maskd sparsify --pattern N:M IN.onnx OUT.onnx`: one-shot magnitude N:M pruning of
//! every eligible weight of an ONNX model, written in the compressed form of
//! `docs/SPARSE.md` (`maskd.NmMatMul` nodes) or, with `--dense-out`, back as ordinary
//! dense weights.
//!
//! [`select`] decides which layers to prune, [`rewrite`] prunes them; this file holds
//! the command's arguments, the run and the per-layer report. The output is always
//! self-contained: external data is read and written inline.

mod rewrite;
mod select;

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use maskd_kernels::NmPattern;
use tract_onnx::pb;

pub use rewrite::{Pruned, DOMAIN};
pub use select::{Decision, SkipRules};

use crate::commands::onnx_io::{byte_len, read_model_inline, write_model};

#[derive(Debug, clap::Args)]
pub struct SparsifyArgs {
    /// N:M pattern: keep the N largest-magnitude weights in every group of M along
    /// the input dimension (1 <= N < M <= 16).
    #[arg(long, value_name = "N:M", default_value = "2:4", value_parser = parse_pattern)]
    pub pattern: NmPattern,
    /// Output columns that keep one pattern per group, chosen by their summed
    /// magnitudes: 2 lets the x86 token kernel feed both columns of a pair from one
    /// input load (faster, at some accuracy cost; docs/SPARSE.md).
    #[arg(long, value_name = "COLUMNS", default_value_t = 1, value_parser = parse_share)]
    pub share: usize,
    /// Write the pruned weights back as ordinary dense MatMul/Gemm weights instead of
    /// `maskd.NmMatMul` nodes (for toolchains without the custom op).
    #[arg(long)]
    pub dense_out: bool,
    /// Leave layers whose node or weight name contains this dense (repeatable).
    #[arg(long, value_name = "NAME_SUBSTRING")]
    pub skip: Vec<String>,
    /// Also prune the patch embedding (first layer on the image) and the last layer.
    #[arg(long)]
    pub no_default_skips: bool,
    /// The model to prune (external data is read relative to its directory).
    pub input: PathBuf,
    /// Where to write the pruned, self-contained model.
    pub output: PathBuf,
}

/// `"2:4"` -> the pattern; the error says what was wrong.
pub fn parse_pattern(s: &str) -> Result<NmPattern, String> {
    let (n, m) = s
        .split_once(':')
        .and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)))
        .ok_or_else(|| format!("expected N:M such as 2:4, got `{s}`"))?;
    NmPattern::new(n, m).map_err(|e| e.to_string())
}

/// `--share`: 1..=64 output columns per pattern.
fn parse_share(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v @ 1..=64) => Ok(v),
        _ => Err(format!("expected a column count from 1 to 64, got `{s}`")),
    }
}

/// What to do, independent of the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub pattern: NmPattern,
    /// Output columns per shared pattern (1: each column its own).
    pub share: usize,
    pub dense_out: bool,
    pub skips: SkipRules,
    /// Print `[i/n] layer` to stderr while pruning.
    pub progress: bool,
}

/// One weight-carrying layer in the report.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub label: String,
    pub op: String,
    pub weight: String,
    /// The stored dims of the weight, and `K x N` when it reads as `W[K, N]`.
    pub dims: Vec<i64>,
    pub kn: Option<(usize, usize)>,
    pub decision: Decision,
    pub pruned: Option<Pruned>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub pattern: NmPattern,
    pub share: usize,
    pub dense_out: bool,
    pub layers: Vec<LayerReport>,
    /// Bytes of all initialisers, before and after.
    pub weight_bytes_before: usize,
    pub weight_bytes_after: usize,
}

pub fn run(args: &SparsifyArgs) -> anyhow::Result<()> {
    let opts = Options {
        pattern: args.pattern,
        share: args.share,
        dense_out: args.dense_out,
        skips: SkipRules {
            default_skips: !args.no_default_skips,
            substrings: args.skip.clone(),
        },
        progress: true,
    };
    let report = sparsify(&args.input, &args.output, &opts)?;
    print!("{}", render(&report, &args.input, &args.output));
    Ok(())
}

/// Prunes `input` into `output` and says what it did per layer.
pub fn sparsify(input: &Path, output: &Path, opts: &Options) -> anyhow::Result<Report> {
    let mut model = read_model_inline(input)?;
    let graph = model
        .graph
        .as_mut()
        .with_context(|| format!("{}: has no graph", input.display()))?;
    let before = weight_bytes(graph);
    let compressed = !opts.dense_out;
    let layers = select::plan(graph, opts.pattern, compressed, &opts.skips);
    let todo = layers
        .iter()
        .filter(|l| l.decision == Decision::Prune)
        .count();
    let tty = std::io::stderr().is_terminal();
    let mut done = 0;
    let pruned = rewrite::apply(graph, &layers, opts.pattern, opts.share, compressed, |i| {
        done += 1;
        if opts.progress {
            if tty {
                eprint!("\r\x1b[K[{done}/{todo}] {}", layers[i].label);
            } else {
                eprintln!("[{done}/{todo}] {}", layers[i].label);
            }
        }
    })
    .with_context(|| format!("{}", input.display()))?;
    if opts.progress && tty && todo > 0 {
        eprintln!();
    }
    let after = weight_bytes(graph);
    let any_pruned = pruned.iter().any(Option::is_some);
    if compressed && any_pruned && !model.opset_import.iter().any(|o| o.domain == DOMAIN) {
        model.opset_import.push(pb::OperatorSetIdProto {
            domain: DOMAIN.into(),
            version: 1,
        });
    }
    write_model(output, &model)?;
    Ok(Report {
        pattern: opts.pattern,
        share: opts.share,
        dense_out: opts.dense_out,
        layers: layers
            .into_iter()
            .zip(pruned)
            .map(|(l, pruned)| LayerReport {
                label: l.label,
                op: l.op,
                weight: l.weight,
                dims: l.dims,
                kn: l.kn,
                decision: l.decision,
                pruned,
            })
            .collect(),
        weight_bytes_before: before,
        weight_bytes_after: after,
    })
}

fn weight_bytes(graph: &pb::GraphProto) -> usize {
    graph
        .initializer
        .iter()
        .map(|t| byte_len(t).unwrap_or(t.raw_data.len()))
        .sum()
}

/// The text `maskd sparsify` prints: one line per layer, then a summary.
pub fn render(r: &Report, input: &Path, output: &Path) -> String {
    let mut out = String::new();
    let form = if r.dense_out {
        "dense weights (--dense-out)"
    } else {
        "maskd.NmMatMul"
    };
    let _ = writeln!(
        out,
        "sparsify {} -> {}: pattern {}{}, {form}",
        input.display(),
        output.display(),
        r.pattern,
        if r.share > 1 {
            format!(" shared by every {} output columns", r.share)
        } else {
            String::new()
        }
    );
    let rows: Vec<[String; 5]> = r.layers.iter().map(row).collect();
    let head = ["layer", "op", "weight", "KxN", "kept/total"].map(String::from);
    let mut width = [0; 5];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for (row, layer) in
        std::iter::once((&head, None)).chain(rows.iter().zip(r.layers.iter().map(Some)))
    {
        let mut line = String::from(" ");
        for (cell, w) in row.iter().zip(width) {
            let _ = write!(line, " {cell:w$}");
        }
        let tail = match layer {
            None => "bytes".to_owned(),
            Some(l) => match (&l.decision, l.pruned) {
                (_, Some(p)) if r.dense_out => {
                    format!("{} (dense, pattern {})", p.dense_bytes, r.pattern)
                }
                (_, Some(p)) => format!("{} -> {}", p.dense_bytes, p.compressed_bytes),
                (Decision::Skip(why), _) => format!("skipped: {why}"),
                (Decision::NotEligible(why), _) => format!("not eligible: {why}"),
                (Decision::Prune, None) => "?".to_owned(),
            },
        };
        let _ = writeln!(out, "{line}  {tail}");
    }
    let done: Vec<Pruned> = r.layers.iter().filter_map(|l| l.pruned).collect();
    let skipped = r
        .layers
        .iter()
        .filter(|l| matches!(l.decision, Decision::Skip(_)))
        .count();
    let dense: usize = done.iter().map(|p| p.dense_bytes).sum();
    let comp: usize = done.iter().map(|p| p.compressed_bytes).sum();
    let kept: usize = done.iter().map(|p| p.kept).sum();
    let total: usize = done.iter().map(|p| p.total).sum();
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let _ = writeln!(
        out,
        "summary: pruned {} of {} layers ({skipped} skipped, {} not eligible); kept {kept} of {total} weights ({:.1} %); \
         pruned layers {dense} -> {comp} bytes as {}; all weights {} -> {} bytes ({:.1} %)",
        done.len(),
        r.layers.len(),
        r.layers.len() - done.len() - skipped,
        pct(kept, total),
        r.pattern,
        r.weight_bytes_before,
        r.weight_bytes_after,
        pct(r.weight_bytes_after, r.weight_bytes_before),
    );
    out
}

fn row(l: &LayerReport) -> [String; 5] {
    let kn = match l.kn {
        Some((k, n)) => format!("{k}x{n}"),
        None => l
            .dims
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join("x"),
    };
    let kept = l
        .pruned
        .map_or_else(|| "-".to_owned(), |p| format!("{}/{}", p.kept, p.total));
    [l.label.clone(), l.op.clone(), l.weight.clone(), kn, kept]
}

#[cfg(test)]
mod tests;
