//! `[text] vocab`: the BERT uncased WordPiece tokenizer, reproducing the reference tokenizer
//! (`tokenizer.json` of all-MiniLM-L6-v2 run by the `tokenizers` library) token for token.
//!
//! Steps, in the reference's order:
//! 1. special tokens (`[CLS]`, `[SEP]`, `[MASK]`, ...) written literally in the text are
//!    taken as they are (they are "added tokens" with `normalized: false`);
//! 2. normalisation: drop NUL, U+FFFD and control characters, map whitespace to a space,
//!    put spaces around CJK ideographs, then (when lowercasing) NFD + drop non-spacing
//!    marks (accents), then lowercase;
//! 3. split on whitespace, then isolate every punctuation character;
//! 4. WordPiece: greedy longest match first, continuations prefixed `##`; a word longer
//!    than 100 characters or with an unmatched piece becomes `[UNK]` as a whole;
//! 5. truncate to `max_tokens - 2` pieces and wrap in `[CLS] ... [SEP]`.
//!
//! The Unicode category tests come from the crates.io package `unicode_categories`, the
//! one the reference tokenizer uses, so both agree on what is punctuation or a control
//! character; NFD comes from `unicode-normalization`.
//!
//! Kept beside `tokenizers` (`json.rs`) because a bare `vocab.txt` has no tokenizer.json
//! to describe these rules, and this code has matched the bundled MiniLM's reference
//! token for token since before maskd read tokenizer.json files.
//!
//! Leaves out: padding (prompts are encoded one at a time) and pairs of sequences.

use std::collections::HashMap;
use std::path::Path;

use super::tokenizer::{TokenizerError, Tokens};

use unicode_categories::UnicodeCategories;
use unicode_normalization::char::decompose_canonical;

/// Words longer than this many characters become `[UNK]` (the reference's `max_input_chars_per_word`).
const MAX_CHARS_PER_WORD: usize = 100;
/// The reference's added tokens: matched literally in the raw text, before normalisation.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    lowercase: bool,
    max_tokens: usize,
    cls: u32,
    sep: u32,
    unk: u32,
    /// Special tokens present in the vocabulary, longest first (leftmost-longest matching).
    specials: Vec<(&'static str, u32)>,
}

impl WordPiece {
    /// Reads a `vocab.txt` (one token per line, id = line index).
    pub fn from_vocab_file(
        path: &Path,
        lowercase: bool,
        max_tokens: usize,
    ) -> Result<WordPiece, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TokenizerError::Read {
            path: path.to_owned(),
            cause,
        })?;
        WordPiece::from_tokens(text.lines(), lowercase, max_tokens).map_err(|token| {
            TokenizerError::MissingToken {
                path: path.to_owned(),
                token,
            }
        })
    }

    /// Builds from the vocabulary in id order; fails with the name of a missing required token.
    /// `max_tokens` counts `[CLS]` and `[SEP]` and must be at least 2.
    pub fn from_tokens<'a>(
        tokens: impl IntoIterator<Item = &'a str>,
        lowercase: bool,
        max_tokens: usize,
    ) -> Result<WordPiece, &'static str> {
        let mut vocab = HashMap::new();
        for (id, token) in tokens.into_iter().enumerate() {
            // Like the reference, trailing whitespace (a CR) is not part of the token and a
            // repeated token keeps its last id.
            vocab.insert(token.trim_end().to_owned(), id as u32);
        }
        let get = |t: &'static str| vocab.get(t).copied().ok_or(t);
        let (cls, sep, unk) = (get("[CLS]")?, get("[SEP]")?, get("[UNK]")?);
        let mut specials: Vec<(&'static str, u32)> = SPECIAL_TOKENS
            .iter()
            .filter_map(|t| vocab.get(*t).map(|id| (*t, *id)))
            .collect();
        specials.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Ok(WordPiece {
            vocab,
            lowercase,
            max_tokens: max_tokens.max(2),
            cls,
            sep,
            unk,
            specials,
        })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `[CLS]`, `[SEP]`: the tokens wrapped around every text.
    pub fn start_end(&self) -> (u32, u32) {
        (self.cls, self.sep)
    }

    /// Tokenizes `text` as the reference does, truncating to `max_tokens`.
    pub fn encode(&self, text: &str) -> Tokens {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (before, special, after) = self.next_special(rest);
            self.encode_plain(before, &mut pieces);
            match special {
                Some(id) => pieces.push(id),
                None => break,
            }
            rest = after;
        }
        let keep = self.max_tokens - 2;
        let dropped = pieces.len().saturating_sub(keep);
        pieces.truncate(keep);
        let mut ids = Vec::with_capacity(pieces.len() + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&pieces);
        ids.push(self.sep);
        Tokens::unpadded(ids, dropped)
    }

    /// Splits at the first special token: (text before, its id, text after).
    fn next_special<'t>(&self, text: &'t str) -> (&'t str, Option<u32>, &'t str) {
        for (at, _) in text.match_indices('[') {
            for (tok, id) in &self.specials {
                if text[at..].starts_with(tok) {
                    return (&text[..at], Some(*id), &text[at + tok.len()..]);
                }
            }
        }
        (text, None, "")
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.normalize(text);
        let mut candidate = String::new();
        for word in normalized.split(char::is_whitespace) {
            let mut start = 0;
            for (i, c) in word.char_indices() {
                if is_punctuation(c) {
                    self.wordpiece(&word[start..i], &mut candidate, out);
                    self.wordpiece(&word[i..i + c.len_utf8()], &mut candidate, out);
                    start = i + c.len_utf8();
                }
            }
            self.wordpiece(&word[start..], &mut candidate, out);
        }
    }

    fn normalize(&self, text: &str) -> String {
        let mut cleaned = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if is_chinese_char(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else if is_whitespace(c) {
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        if !self.lowercase {
            return cleaned;
        }
        // Accents are stripped before lowercasing, as in the reference (so "İ" -> "i").
        let mut stripped = String::with_capacity(cleaned.len());
        for c in cleaned.chars() {
            decompose_canonical(c, |d| {
                if !d.is_mark_nonspacing() {
                    stripped.push(d);
                }
            });
        }
        stripped.chars().flat_map(char::to_lowercase).collect()
    }

    /// Greedy longest-match-first WordPiece of one word (no whitespace, no punctuation inside).
    fn wordpiece(&self, word: &str, candidate: &mut String, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > MAX_CHARS_PER_WORD {
            out.push(self.unk);
            return;
        }
        let mark = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while end > start {
                candidate.clear();
                if start > 0 {
                    candidate.push_str("##");
                }
                candidate.push_str(&word[start..end]);
                if let Some(id) = self.vocab.get(candidate.as_str()) {
                    found = Some(*id);
                    break;
                }
                end = prev_boundary(word, end, start);
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }
}

/// The char boundary before `end` (never below `floor`).
fn prev_boundary(s: &str, end: usize, floor: usize) -> usize {
    let mut i = end - 1;
    while i > floor && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control characters (Unicode categories C*), except the whitespace ones.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK Unified Ideograph blocks (not all of CJK: kana and hangul are written with spaces).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(max_tokens: usize) -> WordPiece {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle", "circ", "##le", "##s",
            "un", "##aff", "##able", "!", ",", "cafe", "東", "京", "a",
        ];
        WordPiece::from_tokens(vocab, true, max_tokens).unwrap()
    }

    fn ids(t: &WordPiece, s: &str) -> Vec<u32> {
        t.encode(s).ids
    }

    #[test]
    fn wordpiece_longest_match_first() {
        let t = tiny(16);
        assert_eq!(ids(&t, "red circle"), [2, 5, 6, 3]);
        assert_eq!(ids(&t, "circles"), [2, 6, 9, 3]);
        assert_eq!(ids(&t, "unaffable"), [2, 10, 11, 12, 3]);
        // an unmatched remainder makes the whole word [UNK], not just the tail
        assert_eq!(ids(&t, "circlex red"), [2, 1, 5, 3]);
    }

    #[test]
    fn normalisation_and_punctuation() {
        let t = tiny(16);
        assert_eq!(ids(&t, "  RED,circle!  "), [2, 5, 14, 6, 13, 3]);
        assert_eq!(ids(&t, "Café"), [2, 15, 3]);
        assert_eq!(ids(&t, "東京"), [2, 16, 17, 3]);
        assert_eq!(ids(&t, "re\u{0}d\u{ad}"), [2, 5, 3]);
        assert_eq!(ids(&t, ""), [2, 3]);
        assert_eq!(ids(&t, &"a".repeat(101)), [2, 1, 3]);
    }

    #[test]
    fn special_tokens_are_literal() {
        let t = tiny(16);
        assert_eq!(ids(&t, "red [MASK]circle"), [2, 5, 4, 6, 3]);
        assert_eq!(ids(&t, "[mask]"), [2, 1, 1, 1, 3]);
    }

    #[test]
    fn truncation_keeps_cls_and_sep() {
        let t = tiny(4);
        let tok = t.encode("red red red");
        assert_eq!(tok.ids, [2, 5, 5, 3]);
        assert_eq!(tok.attention_mask, [1, 1, 1, 1]);
        assert_eq!(tok.dropped, 1);
    }

    #[test]
    fn missing_required_token() {
        assert_eq!(
            WordPiece::from_tokens(["[CLS]", "[SEP]"], true, 8).unwrap_err(),
            "[UNK]"
        );
    }

    #[test]
    fn cased_keeps_case_and_accents() {
        let t =
            WordPiece::from_tokens(["[UNK]", "[CLS]", "[SEP]", "Café", "red"], false, 8).unwrap();
        assert_eq!(ids(&t, "Café RED"), [1, 3, 0, 2]);
    }
}
