//! The CLIP text fixture (`tests/data/clip_text`, written by `export/clip_text.py`)
//! against PyTorch's own token ids and embeddings, and a text graph that fails at run
//! time reported with its node.

use std::path::{Path, PathBuf};

use super::{TextEncoder, Tokenizer};
use crate::engine::manifest::{Manifest, Pooling};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip_text")
}

fn manifest() -> Manifest {
    Manifest::load(&dir().join("clip_text.toml")).unwrap()
}

/// The fixture's manifest with `[text]` keys replaced (parsed, not loaded: the graph and
/// tokenizer are those of the fixture).
fn variant(edits: &[(&str, &str)]) -> Manifest {
    let path = dir().join("clip_text.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    Manifest::parse(&text, &path).unwrap()
}

struct Row {
    text: String,
    ids: Vec<u32>,
    mask: Vec<u8>,
    truncated: bool,
    pooled: Vec<f64>,
    text_embeds: Vec<f64>,
}

fn reference() -> Vec<Row> {
    let text = std::fs::read_to_string(dir().join("reference.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Row {
            text: p["text"].as_str().unwrap().to_owned(),
            ids: floats(&p["ids"]).iter().map(|x| *x as u32).collect(),
            mask: floats(&p["attention_mask"])
                .iter()
                .map(|x| *x as u8)
                .collect(),
            truncated: p["truncated"].as_bool().unwrap(),
            pooled: floats(&p["pooled"]),
            text_embeds: floats(&p["text_embeds"]),
        })
        .collect()
}

/// Cosine and relative L2 error of `got` against `want`.
fn compare(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let dot: f64 = got.iter().zip(want).map(|(a, b)| *a as f64 * b).sum();
    let ng = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    let nw = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - b).powi(2))
        .sum::<f64>()
        .sqrt();
    (dot / (ng * nw), diff / nw)
}

#[test]
fn clip_tokenizer_json_matches_pytorch_ids_padding_and_limit() {
    let m = manifest();
    let tok = Tokenizer::load(&m.text).unwrap();
    assert_eq!(tok.max_tokens(), 77, "the file's truncation length");
    let rows = reference();
    assert!(rows.len() >= 10);
    for r in &rows {
        let t = tok.encode(&r.text).unwrap();
        if r.truncated {
            // PyTorch cut it to 77; maskd refuses it, counting what is over.
            assert!(t.dropped > 0, "{:?} must be over the limit", r.text);
            assert_eq!(t.attended(), 77 + t.dropped);
            assert_eq!(&t.ids[..76], &r.ids[..76], "{:?}", r.text);
        } else {
            assert_eq!(t.ids, r.ids, "ids of {:?}", r.text);
            assert_eq!(t.attention_mask, r.mask, "attention mask of {:?}", r.text);
            assert_eq!(t.dropped, 0);
        }
    }
    // <|startoftext|> red circle <|endoftext|>: the first and last attended ids.
    let r = &rows[0];
    let last = r.mask.iter().rposition(|m| *m != 0).unwrap();
    assert_eq!(tok.start_end(), (Some(r.ids[0]), Some(r.ids[last])));
    assert!(tok.describe().contains("BPE"), "{}", tok.describe());
}

/// `pooling = "none"` on `text_embeds`, unnormalised: what CLIPSeg's FiLM takes.
#[test]
#[ignore = "tract 0.23.9 fails this export at run time: `/encoder/layers.0/self_attn/Add: Can not broadcast 77 against 2` (the causal-mask construction); the rewrite is not done yet (issue 17)"]
fn clip_text_embeds_match_pytorch() {
    let m = manifest();
    let tok = Tokenizer::load(&m.text).unwrap();
    let mut enc = TextEncoder::load(&m, &tok).unwrap();
    let mut worst = (1.0f64, 0.0f64, String::new());
    for r in reference().iter().filter(|r| !r.truncated) {
        let got = enc.encode(&tok.encode(&r.text).unwrap()).unwrap();
        let (cos, rel) = compare(&got, &r.text_embeds);
        if cos < worst.0 {
            worst = (cos, rel, r.text.clone());
        }
        assert!(rel < 1e-3, "{:?}: relative error {rel}", r.text);
    }
    eprintln!(
        "CLIP text_embeds vs PyTorch: worst cosine {:.7} (relative error {:.2e}, {:?})",
        worst.0, worst.1, worst.2
    );
    assert!(worst.0 >= 0.9999, "cosine {} for {:?}", worst.0, worst.2);
}

/// `pooling = "eos"` on `last_hidden_state`: the first end-of-text token, as
/// transformers' CLIP pools (the prompt with a literal `<|endoftext|>` pools there).
#[test]
#[ignore = "tract 0.23.9 fails this export at run time: `/encoder/layers.0/self_attn/Add: Can not broadcast 77 against 2` (the causal-mask construction); the rewrite is not done yet (issue 17)"]
fn clip_eos_pooling_matches_pytorch() {
    let m = variant(&[
        ("output = \"text_embeds\"", "output = \"last_hidden_state\""),
        ("pooling = \"none\"", "pooling = \"eos\""),
        ("dim = 16", "dim = 32"),
    ]);
    assert_eq!(m.text.pooling, Pooling::Eos);
    let tok = Tokenizer::load(&m.text).unwrap();
    let mut enc = TextEncoder::load(&m, &tok).unwrap();
    let mut worst = 1.0f64;
    for r in reference().iter().filter(|r| !r.truncated) {
        let got = enc.encode(&tok.encode(&r.text).unwrap()).unwrap();
        let (cos, rel) = compare(&got, &r.pooled);
        assert!(rel < 1e-3, "{:?}: relative error {rel}", r.text);
        worst = worst.min(cos);
    }
    assert!(worst >= 0.9999, "{worst}");
}

#[test]
#[ignore = "tract 0.23.9 fails this export at run time: `/encoder/layers.0/self_attn/Add: Can not broadcast 77 against 2` (the causal-mask construction); the rewrite is not done yet (issue 17)"]
fn normalize_true_gives_unit_vectors_in_the_same_direction() {
    let m = variant(&[("normalize = false", "normalize = true")]);
    let tok = Tokenizer::load(&m.text).unwrap();
    let mut enc = TextEncoder::load(&m, &tok).unwrap();
    let r = &reference()[0];
    let got = enc.encode(&tok.encode(&r.text).unwrap()).unwrap();
    let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    assert!(compare(&got, &r.text_embeds).0 >= 0.9999);
}

#[test]
#[ignore = "tract 0.23.9 fails this export at run time: `/encoder/layers.0/self_attn/Add: Can not broadcast 77 against 2` (the causal-mask construction); the rewrite is not done yet (issue 17)"]
fn mean_and_cls_pooling_read_attended_tokens_only() {
    let base = [
        ("output = \"text_embeds\"", "output = \"last_hidden_state\""),
        ("dim = 16", "dim = 32"),
    ];
    let r = &reference()[0];
    let mut out = vec![];
    for pooling in ["mean", "cls"] {
        let to = format!("pooling = \"{pooling}\"");
        let mut edits = base.to_vec();
        edits.push(("pooling = \"none\"", &to));
        let m = variant(&edits);
        let tok = Tokenizer::load(&m.text).unwrap();
        let mut enc = TextEncoder::load(&m, &tok).unwrap();
        let tokens = tok.encode(&r.text).unwrap();
        assert!(tokens.attended() < tokens.ids.len(), "the fixture pads");
        let padded = enc.encode(&tokens).unwrap();
        // The same prompt without its padding: causal attention leaves the attended
        // rows as they were, so pooling over them must not change.
        let n = tokens.attended();
        let bare = super::Tokens::unpadded(tokens.ids[..n].to_vec(), 0);
        let unpadded = enc.encode(&bare).unwrap();
        let (cos, rel) = compare(
            &padded,
            &unpadded.iter().map(|x| *x as f64).collect::<Vec<_>>(),
        );
        assert!(cos > 0.99999 && rel < 1e-4, "{pooling}: {cos} {rel}");
        out.push(padded);
    }
    assert_ne!(out[0], out[1], "mean and cls differ");
}

#[test]
fn a_tokenizer_without_the_end_token_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tokenizer.json")).unwrap())
            .unwrap();
    json["post_processor"] = serde_json::Value::Null;
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let m = variant(&[
        (
            "tokenizer = \"tokenizer.json\"",
            &format!("tokenizer = {:?}", path.display().to_string()),
        ),
        ("output = \"text_embeds\"", "output = \"last_hidden_state\""),
        ("pooling = \"none\"", "pooling = \"eos\""),
        ("dim = 16", "dim = 32"),
    ]);
    let tok = Tokenizer::load(&m.text).unwrap();
    assert_eq!(tok.start_end(), (None, None));
    let err = TextEncoder::load(&m, &tok).unwrap_err().to_string();
    assert!(
        err.contains("clip_text.toml: text.pooling: \"eos\"") && err.contains("appends none"),
        "{err}"
    );
}

#[test]
fn a_max_tokens_past_the_files_truncation_is_refused() {
    let m = variant(&[("dim = 16", "dim = 16\nmax_tokens = 100")]);
    let err = Tokenizer::load(&m.text).unwrap_err().to_string();
    assert!(
        err.contains("truncates to 77 tokens") && err.contains("100"),
        "{err}"
    );
    let m = variant(&[("dim = 16", "dim = 16\nmax_tokens = 8")]);
    let tok = Tokenizer::load(&m.text).unwrap();
    let t = tok.encode("a photo of a cat").unwrap();
    assert_eq!((tok.max_tokens(), t.dropped), (8, 0));
    let long = tok.encode("a photo of a cat on a mat").unwrap();
    assert!(
        long.dropped > 0 && long.dropped == long.attended() - 8,
        "{long:?}"
    );
}

/// The broken graph passes the 4-token test prompt and fails on other lengths, at the
/// node tests/fixtures/make_broken_text.py names.
#[test]
fn a_run_time_failure_names_the_graph_and_the_node() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml");
    let text = std::fs::read_to_string(&fixture).unwrap().replace(
        "model = \"text.onnx\"",
        "model = \"../clip_text/broken_text.onnx\"",
    );
    let m = Manifest::parse(&text, &fixture).unwrap();
    let tok = Tokenizer::load(&m.text).unwrap();
    let mut enc = TextEncoder::load(&m, &tok).unwrap();
    enc.self_test(&tok).unwrap();
    let err = enc
        .encode(&tok.encode("red circle star").unwrap())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("broken_text.onnx: running") && msg.contains("/encoder/broken/Add"),
        "{msg}"
    );
}
