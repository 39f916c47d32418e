//! The model manifest: which ONNX graphs make up a model and what their interface is.
//!
//! A manifest (`models/default.toml`, format in `docs/MANIFEST.md`) is read into
//! `RawManifest` (serde, unknown keys rejected) and validated into [`Manifest`], with
//! every path resolved relative to the manifest's directory and checked to exist, so a
//! model directory can be moved as a whole. Whether the graphs really have the declared
//! interface is checked when they are loaded (`plan.rs`), not here.

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a manifest was rejected. Every variant names the manifest file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The io errors are part of these messages, so they are not also the errors'
    /// `source` (a field named `source` would be, and `{:#}` would print it twice).
    #[error("{}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    /// TOML syntax, a wrong type or an unknown key; `line:col` locate it.
    #[error("{}:{line}:{col}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A file the manifest names is missing or unreadable.
    #[error("{}: {key}: {}: {cause}", path.display(), file.display())]
    File {
        path: PathBuf,
        key: String,
        file: PathBuf,
        cause: io::Error,
    },
}

/// A validated manifest; paths are absolute or relative to the working directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest file itself (for messages).
    pub path: PathBuf,
    pub name: String,
    pub text: TextSpec,
    pub image: ImageSpec,
    pub segmenter: SegmenterSpec,
    /// The segmenter split into stages (for token pruning); optional.
    pub stages: Option<StagesSpec>,
}

/// `[text]`: the prompt encoder (a tokenizer, a transformer graph, pooling).
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    pub model: PathBuf,
    pub tokenizer: TokenizerFile,
    /// Only for [`TokenizerFile::Vocab`]: a tokenizer.json's normaliser decides itself.
    pub lowercase: bool,
    /// Longest token sequence, special tokens included; `None`: the tokenizer file's
    /// truncation length, else [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: Option<usize>,
    pub input_ids: String,
    pub attention_mask: String,
    /// Absent when the graph has no such input.
    pub token_type_ids: Option<String>,
    pub output: String,
    pub pooling: Pooling,
    /// L2-normalise the pooled embedding.
    pub normalize: bool,
    /// Embedding width (the last dim of `output`, the last dim of the segmenter's text input).
    pub dim: usize,
}

/// Where the tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerFile {
    /// `vocab`: a BERT WordPiece `vocab.txt`, run by maskd's own WordPiece.
    Vocab(PathBuf),
    /// `tokenizer`: a `tokenizer.json` (WordPiece, BPE, Unigram), run by `tokenizers`.
    Json(PathBuf),
}

impl TokenizerFile {
    pub fn path(&self) -> &Path {
        match self {
            TokenizerFile::Vocab(p) | TokenizerFile::Json(p) => p,
        }
    }

    /// The manifest key naming the file.
    pub fn key(&self) -> &'static str {
        match self {
            TokenizerFile::Vocab(_) => "text.vocab",
            TokenizerFile::Json(_) => "text.tokenizer",
        }
    }
}

/// `text.pooling`: how the graph's output becomes one embedding per prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the attended tokens (sentence-transformers).
    Mean,
    /// The first attended token (BERT's `[CLS]`).
    Cls,
    /// The first end-of-text token (CLIP's pooled output).
    Eos,
    /// The output is already one embedding, `[1, dim]` (e.g. CLIP's `text_embeds`).
    None,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Eos => "eos",
            Pooling::None => "none",
        }
    }
}

/// `[image]`: what the segmenter's image input expects.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    pub width: u32,
    pub height: u32,
    /// Per RGB channel, applied to `x / 255`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// `[segmenter]`: the full segmentation graph.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterSpec {
    pub model: PathBuf,
    pub image_input: String,
    pub text_input: String,
    pub mask_output: String,
    pub score_output: String,
    /// `[height, width]` of the mask logits (the last two dims of `mask_output`).
    pub mask_size: [usize; 2],
    /// On sigmoid(mask logit).
    pub mask_threshold: f32,
    /// On sigmoid(presence logit); below it a prompt's mask is empty.
    pub score_threshold: f32,
}

/// `[stages]`: the same segmenter as separate graphs, so tokens can be dropped between blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct StagesSpec {
    pub embed: PathBuf,
    pub blocks: Vec<PathBuf>,
    pub decoder: PathBuf,
    /// Tokens out of `embed` (and into `decoder`).
    pub tokens: usize,
    /// Token width.
    pub width: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    text: RawText,
    image: RawImage,
    segmenter: RawSegmenter,
    stages: Option<RawStages>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    model: PathBuf,
    vocab: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    lowercase: Option<bool>,
    max_tokens: Option<usize>,
    #[serde(default = "default_input_ids")]
    input_ids: String,
    #[serde(default = "default_attention_mask")]
    attention_mask: String,
    token_type_ids: Option<String>,
    #[serde(default = "default_text_output")]
    output: String,
    #[serde(default = "default_pooling")]
    pooling: Pooling,
    #[serde(default = "default_true")]
    normalize: bool,
    dim: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    width: u32,
    height: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegmenter {
    model: PathBuf,
    #[serde(default = "default_image_input")]
    image_input: String,
    #[serde(default = "default_text_input")]
    text_input: String,
    #[serde(default = "default_mask_output")]
    mask_output: String,
    #[serde(default = "default_score_output")]
    score_output: String,
    mask_size: [usize; 2],
    #[serde(default = "default_threshold")]
    mask_threshold: f32,
    #[serde(default = "default_threshold")]
    score_threshold: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStages {
    embed: PathBuf,
    blocks: Vec<PathBuf>,
    decoder: PathBuf,
    tokens: usize,
    width: usize,
}

/// BERT's own limit; also bounds the encoder's work per prompt.
pub const DEFAULT_MAX_TOKENS: usize = 128;
/// Above this the manifest is surely wrong (BERT-family position tables stop at 512).
const MAX_MAX_TOKENS: usize = 4096;
pub const DEFAULT_THRESHOLD: f32 = 0.5;

fn default_true() -> bool {
    true
}
fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> String {
    "attention_mask".into()
}
fn default_text_output() -> String {
    "last_hidden_state".into()
}
fn default_image_input() -> String {
    "image".into()
}
fn default_text_input() -> String {
    "text".into()
}
fn default_mask_output() -> String {
    "mask_logits".into()
}
fn default_score_output() -> String {
    "presence_logits".into()
}
fn default_threshold() -> f32 {
    DEFAULT_THRESHOLD
}

impl Manifest {
    /// Reads, validates and resolves the manifest at `path`; every file it names must exist.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ManifestError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let manifest = Manifest::parse(&text, path)?;
        manifest.check_files()?;
        Ok(manifest)
    }

    /// Parses and validates manifest text as if read from `path` (paths resolve against
    /// its directory); does not touch the file system.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ManifestError::Parse {
                path: path.to_owned(),
                line,
                col,
                message: e.message().to_owned(),
            }
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let invalid = |key: &str, reason: String| ManifestError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };

        let t = raw.text;
        if t.dim == 0 {
            return Err(invalid("text.dim", "must be > 0".into()));
        }
        if let Some(n) = t.max_tokens.filter(|n| !(3..=MAX_MAX_TOKENS).contains(n)) {
            return Err(invalid(
                "text.max_tokens",
                format!("{n} is outside 3..={MAX_MAX_TOKENS} ([CLS], one token, [SEP])"),
            ));
        }
        let tokenizer =
            match (t.vocab, t.tokenizer) {
                (Some(_), Some(_)) => return Err(invalid(
                    "text.tokenizer",
                    "give either `vocab` (a vocab.txt) or `tokenizer` (a tokenizer.json), not both"
                        .into(),
                )),
                (None, None) => {
                    return Err(invalid(
                        "text",
                        "no tokenizer: give `vocab = \"vocab.txt\"` (BERT WordPiece) or \
                     `tokenizer = \"tokenizer.json\"`"
                            .into(),
                    ))
                }
                (Some(v), None) if v.extension().is_some_and(|e| e == "json") => {
                    return Err(invalid(
                        "text.vocab",
                        format!(
                            "{} looks like a tokenizer.json; `vocab` takes a WordPiece vocab.txt, \
                         name it with `tokenizer = ...` instead",
                            v.display()
                        ),
                    ))
                }
                (Some(v), None) => TokenizerFile::Vocab(dir.join(v)),
                (None, Some(j)) => {
                    if t.lowercase.is_some() {
                        return Err(invalid(
                            "text.lowercase",
                            "applies to `vocab` only; a tokenizer.json's normalizer decides casing"
                                .into(),
                        ));
                    }
                    TokenizerFile::Json(dir.join(j))
                }
            };
        for (key, v) in [
            ("text.input_ids", &t.input_ids),
            ("text.attention_mask", &t.attention_mask),
            ("text.output", &t.output),
        ] {
            if v.is_empty() {
                return Err(invalid(key, "is empty".into()));
            }
        }
        if t.token_type_ids.as_deref() == Some("") {
            return Err(invalid(
                "text.token_type_ids",
                "is empty (omit the key instead)".into(),
            ));
        }
        let text = TextSpec {
            model: dir.join(&t.model),
            tokenizer,
            lowercase: t.lowercase.unwrap_or(true),
            max_tokens: t.max_tokens,
            input_ids: t.input_ids,
            attention_mask: t.attention_mask,
            token_type_ids: t.token_type_ids,
            output: t.output,
            pooling: t.pooling,
            normalize: t.normalize,
            dim: t.dim,
        };

        let i = raw.image;
        if i.width == 0 || i.height == 0 {
            return Err(invalid(
                "image",
                format!("size {}x{} is empty", i.width, i.height),
            ));
        }
        if i.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || i.mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid(
                "image.std",
                format!(
                    "mean {:?} / std {:?}: std must be finite and non-zero",
                    i.mean, i.std
                ),
            ));
        }
        let image = ImageSpec {
            width: i.width,
            height: i.height,
            mean: i.mean,
            std: i.std,
        };

        let s = raw.segmenter;
        if s.mask_size.contains(&0) {
            return Err(invalid(
                "segmenter.mask_size",
                format!("{:?} is empty", s.mask_size),
            ));
        }
        for (key, v) in [
            ("segmenter.mask_threshold", s.mask_threshold),
            ("segmenter.score_threshold", s.score_threshold),
        ] {
            check_threshold(v).map_err(|reason| invalid(key, reason))?;
        }
        let names = [
            &s.image_input,
            &s.text_input,
            &s.mask_output,
            &s.score_output,
        ];
        if names.iter().any(|n| n.is_empty()) {
            return Err(invalid(
                "segmenter",
                "an input or output name is empty".into(),
            ));
        }
        let segmenter = SegmenterSpec {
            model: dir.join(&s.model),
            image_input: s.image_input,
            text_input: s.text_input,
            mask_output: s.mask_output,
            score_output: s.score_output,
            mask_size: s.mask_size,
            mask_threshold: s.mask_threshold,
            score_threshold: s.score_threshold,
        };

        let stages = match raw.stages {
            None => None,
            Some(st) => {
                if st.blocks.is_empty() {
                    return Err(invalid("stages.blocks", "is empty".into()));
                }
                if st.tokens == 0 || st.width == 0 {
                    return Err(invalid(
                        "stages",
                        format!("tokens {} / width {} must be > 0", st.tokens, st.width),
                    ));
                }
                Some(StagesSpec {
                    embed: dir.join(&st.embed),
                    blocks: st.blocks.iter().map(|b| dir.join(b)).collect(),
                    decoder: dir.join(&st.decoder),
                    tokens: st.tokens,
                    width: st.width,
                })
            }
        };
        if raw.name.trim().is_empty() {
            return Err(invalid("name", "is empty".into()));
        }
        Ok(Manifest {
            path: path.to_owned(),
            name: raw.name,
            text,
            image,
            segmenter,
            stages,
        })
    }

    /// Every file the manifest names, with the key naming it.
    pub fn files(&self) -> Vec<(String, &Path)> {
        let mut files = vec![
            ("text.model".to_owned(), self.text.model.as_path()),
            (
                self.text.tokenizer.key().to_owned(),
                self.text.tokenizer.path(),
            ),
            ("segmenter.model".to_owned(), self.segmenter.model.as_path()),
        ];
        if let Some(st) = &self.stages {
            files.push(("stages.embed".to_owned(), st.embed.as_path()));
            for (i, b) in st.blocks.iter().enumerate() {
                files.push((format!("stages.blocks[{i}]"), b.as_path()));
            }
            files.push(("stages.decoder".to_owned(), st.decoder.as_path()));
        }
        files
    }

    fn check_files(&self) -> Result<(), ManifestError> {
        for (key, file) in self.files() {
            let meta = std::fs::metadata(file).and_then(|m| {
                if m.is_file() {
                    Ok(m)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ))
                }
            });
            if let Err(cause) = meta {
                return Err(ManifestError::File {
                    path: self.path.clone(),
                    key,
                    file: self.relative(file).to_owned(),
                    cause,
                });
            }
        }
        Ok(())
    }

    /// `file` as written in the manifest (relative to its directory) for messages.
    pub fn relative<'a>(&self, file: &'a Path) -> &'a Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => file.strip_prefix(dir).unwrap_or(file),
            _ => file,
        }
    }
}

/// A probability threshold must lie strictly inside (0, 1) so that its logit is finite.
pub fn check_threshold(v: f32) -> Result<(), String> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(format!("{v} is not strictly between 0 and 1"))
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
[text]
model = "text/t.onnx"
vocab = "text/vocab.txt"
dim = 384
[image]
width = 224
height = 200
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[segmenter]
model = "seg/seg.onnx"
mask_size = [56, 48]
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("models/default.toml"))
    }

    #[test]
    fn defaults_and_resolution() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.text.model, Path::new("models/text/t.onnx"));
        assert_eq!(m.text.max_tokens, None);
        assert_eq!(
            m.text.tokenizer,
            TokenizerFile::Vocab("models/text/vocab.txt".into())
        );
        assert_eq!(m.text.pooling, Pooling::Mean);
        assert!(m.text.normalize);
        assert_eq!(m.text.input_ids, "input_ids");
        assert_eq!(m.text.token_type_ids, None);
        assert!(m.text.lowercase);
        assert_eq!(m.segmenter.mask_size, [56, 48]);
        assert_eq!(m.segmenter.mask_threshold, 0.5);
        assert_eq!(m.segmenter.score_output, "presence_logits");
        assert_eq!(m.image.height, 200);
        assert!(m.stages.is_none());
        assert_eq!(m.relative(&m.segmenter.model), Path::new("seg/seg.onnx"));
    }

    #[test]
    fn unknown_key_is_located() {
        let err = parse(&GOOD.replace("dim = 384", "dim = 384\ndims = 3")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("models/default.toml:7:"), "{msg}");
        assert!(msg.contains("dims"), "{msg}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("dim = 384", "dim = 0", "text.dim"),
            (
                "mask_size = [56, 48]",
                "mask_size = [0, 48]",
                "segmenter.mask_size",
            ),
            (
                "mask_size = [56, 48]",
                "mask_size = [56, 48]\nscore_threshold = 1.0",
                "segmenter.score_threshold",
            ),
            (
                "std = [0.229, 0.224, 0.225]",
                "std = [0.229, 0.0, 0.225]",
                "image.std",
            ),
            ("dim = 384", "dim = 384\nmax_tokens = 2", "text.max_tokens"),
            (
                "dim = 384",
                "dim = 384\ntoken_type_ids = \"\"",
                "text.token_type_ids",
            ),
        ];
        for (from, to, key) in cases {
            let err = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(
                matches!(&err, ManifestError::Invalid { key: k, .. } if k == key),
                "{to}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("models/default.toml: {key}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn tokenizer_json_pooling_and_normalize() {
        let clip = GOOD.replace(
            "vocab = \"text/vocab.txt\"",
            "tokenizer = \"text/tokenizer.json\"\npooling = \"eos\"\nnormalize = false",
        );
        let m = parse(&clip).unwrap();
        assert_eq!(
            m.text.tokenizer,
            TokenizerFile::Json("models/text/tokenizer.json".into())
        );
        assert_eq!(m.text.pooling, Pooling::Eos);
        assert!(!m.text.normalize);
        assert_eq!(m.files()[1].0, "text.tokenizer");
        for p in ["mean", "cls", "none"] {
            let m = parse(&clip.replace("\"eos\"", &format!("\"{p}\""))).unwrap();
            assert_eq!(m.text.pooling.as_str(), p);
        }
        let err = parse(&clip.replace("\"eos\"", "\"max\"")).unwrap_err();
        assert!(
            matches!(err, ManifestError::Parse { .. }) && err.to_string().contains("max"),
            "{err}"
        );
    }

    #[test]
    fn tokenizer_keys_are_exclusive_and_checked() {
        let cases = [
            (
                "vocab = \"text/vocab.txt\"",
                "vocab = \"text/vocab.txt\"\ntokenizer = \"t.json\"",
                "text.tokenizer",
                "not both",
            ),
            ("vocab = \"text/vocab.txt\"", "", "text", "no tokenizer"),
            (
                "vocab = \"text/vocab.txt\"",
                "vocab = \"text/tokenizer.json\"",
                "text.vocab",
                "tokenizer = ",
            ),
            (
                "vocab = \"text/vocab.txt\"",
                "tokenizer = \"t.json\"\nlowercase = true",
                "text.lowercase",
                "normalizer",
            ),
        ];
        for (from, to, key, why) in cases {
            let err = parse(&GOOD.replace(from, to)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("models/default.toml: {key}: ")) && msg.contains(why),
                "{to}: {msg}"
            );
        }
    }

    #[test]
    fn stages_are_resolved_and_checked() {
        let with = format!(
            "{GOOD}[stages]\nembed = \"seg/e.onnx\"\nblocks = [\"seg/b0.onnx\", \"seg/b1.onnx\"]\ndecoder = \"seg/d.onnx\"\ntokens = 196\nwidth = 192\n"
        );
        let m = parse(&with).unwrap();
        let st = m.stages.as_ref().unwrap();
        assert_eq!(st.blocks[1], Path::new("models/seg/b1.onnx"));
        assert_eq!(m.files().len(), 3 + 4);
        let err = parse(&with.replace("[\"seg/b0.onnx\", \"seg/b1.onnx\"]", "[]")).unwrap_err();
        assert!(err.to_string().contains("stages.blocks: is empty"), "{err}");
    }

    #[test]
    fn missing_file_names_key_and_relative_path() {
        let dir = std::env::temp_dir().join(format!("maskd-manifest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("text")).unwrap();
        std::fs::write(dir.join("text/t.onnx"), b"x").unwrap();
        std::fs::write(dir.join("text/vocab.txt"), b"x").unwrap();
        let path = dir.join("default.toml");
        std::fs::write(&path, GOOD).unwrap();
        let err = Manifest::load(&path).unwrap_err();
        let msg = err.to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            msg.starts_with(&format!(
                "{}: segmenter.model: seg/seg.onnx: ",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }
}
