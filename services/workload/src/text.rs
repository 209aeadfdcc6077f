//! Text generators: prose, titles and the literal encodings (JSON strings, PostgreSQL
//! array literals) the seed and the workload send as parameters.
//!
//! Guarantees: output is always valid UTF-8, deterministic for a given [`Rng`] state,
//! and prose is varied enough (pseudo-words drawn letter by letter, mixed with common
//! words) that pglz cannot squeeze a multi-kilobyte text under the 2 kB TOAST threshold:
//! a long template body really is stored out of line.

use crate::rng::Rng;

/// Phrases mixing accents, punctuation, CJK, RTL and astral-plane emoji, sprinkled
/// into names and prose so that every text path is exercised with multi-byte UTF-8.
pub const UNICODE_PHRASES: &[&str] = &[
    "naïve café — 日本語 🚀",
    "Ünïcödé façade déjà vu",
    "提示词工程",
    "русский текст",
    "Ελληνικά γράμματα",
    "שלום עולם",
    "emoji 🤖✨🧪",
    "Zürich → München “quoted”",
    "tab\there, back\\slash, 'single' and \"double\" quotes",
];

const COMMON_WORDS: &[&str] = &[
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "with",
    "as",
    "on",
    "be",
    "this",
    "are",
    "or",
    "by",
    "answer",
    "user",
    "assistant",
    "context",
    "question",
    "summary",
    "model",
    "output",
    "input",
    "format",
    "respond",
    "concise",
    "step",
    "reason",
    "example",
    "document",
    "customer",
    "policy",
    "list",
    "table",
    "return",
    "only",
    "json",
    "field",
    "value",
    "tone",
    "friendly",
    "formal",
    "bullet",
    "points",
    "translate",
    "classify",
    "extract",
    "entities",
    "sentiment",
    "score",
    "explain",
    "briefly",
    "never",
    "always",
    "must",
    "should",
    "avoid",
    "include",
];

const ALPHABET: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";

/// Appends one word: a common word, or a pseudo-word of random letters (skewed towards
/// frequent letters, sometimes capitalised or carrying digits).
pub fn push_word(rng: &mut Rng, out: &mut String) {
    if rng.chance(0.35) {
        out.push_str(rng.pick(COMMON_WORDS));
        return;
    }
    let len = rng.range_usize(2, 10);
    for i in 0..len {
        // Squaring the draw favours the front of ALPHABET (the frequent letters).
        let u = rng.unit();
        let c = ALPHABET[(u * u * ALPHABET.len() as f64) as usize] as char;
        if i == 0 && rng.chance(0.08) {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
    }
    if rng.chance(0.04) {
        out.push_str(&rng.range(0, 9999).to_string());
    }
}

/// `n` words separated by spaces.
pub fn words(rng: &mut Rng, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        push_word(rng, &mut out);
    }
    out
}

/// A title: 1–4 capitalised words, sometimes followed by a Unicode phrase.
pub fn title(rng: &mut Rng) -> String {
    let mut out = String::new();
    let n = rng.range_usize(1, 4);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        let start = out.len();
        push_word(rng, &mut out);
        if let Some(first) = out.get_mut(start..start + 1) {
            first.make_ascii_uppercase();
        }
    }
    if rng.chance(0.1) {
        out.push(' ');
        out.push_str(rng.pick(UNICODE_PHRASES));
    }
    out
}

/// Sentences of prose (at least one) until at least `min_len` bytes; the result is at most one
/// sentence (≈ 150 bytes) longer. `placeholders` are woven in as `{{name}}`.
pub fn prose(rng: &mut Rng, min_len: usize, placeholders: &[&str]) -> String {
    let mut out = String::with_capacity(min_len + 160);
    loop {
        if !out.is_empty() {
            out.push_str(if rng.chance(0.12) { "\n\n" } else { " " });
        }
        let n = rng.range_usize(4, 18);
        for i in 0..n {
            if i > 0 {
                out.push(if rng.chance(0.08) { ',' } else { ' ' });
                if out.ends_with(',') {
                    out.push(' ');
                }
            }
            if !placeholders.is_empty() && rng.chance(0.02) {
                out.push_str("{{");
                out.push_str(rng.pick(placeholders));
                out.push_str("}}");
            } else if rng.chance(0.004) {
                out.push_str(rng.pick(UNICODE_PHRASES));
            } else {
                push_word(rng, &mut out);
            }
        }
        out.push(rng.pick(&['.', '.', '.', '?', '!', ':']));
        if out.len() >= min_len {
            return out;
        }
    }
}

/// Prose of a length drawn uniformly from `lo..=hi` bytes (plus at most one sentence).
pub fn prose_between(rng: &mut Rng, lo: usize, hi: usize) -> String {
    let len = rng.range_usize(lo, hi);
    prose(rng, len, &[])
}

/// `s` as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A PostgreSQL array literal (`{"a","b",NULL}`) for a one-dimensional `text[]`;
/// every element is quoted, so any content round-trips.
pub fn pg_text_array<S: AsRef<str>>(items: &[Option<S>]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            None => out.push_str("NULL"),
            Some(s) => {
                out.push('"');
                for c in s.as_ref().chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_reaches_length_and_is_deterministic() {
        for len in [0, 1, 200, 2_000, 12_000] {
            let a = prose(&mut Rng::new(9), len, &["topic"]);
            let b = prose(&mut Rng::new(9), len, &["topic"]);
            assert_eq!(a, b);
            assert!(a.len() >= len.max(1));
            assert!(a.len() < len + 400, "{} for {len}", a.len());
        }
    }

    #[test]
    fn prose_is_not_repetitive() {
        // A stand-in for "pglz cannot compress it much": few repeated 8-byte windows.
        let text = prose(&mut Rng::new(4), 8_000, &[]);
        let bytes = text.as_bytes();
        let windows: std::collections::HashSet<&[u8]> = bytes.windows(8).collect();
        let distinct = windows.len() as f64 / (bytes.len() - 7) as f64;
        assert!(distinct > 0.8, "only {distinct:.2} distinct 8-byte windows");
    }

    #[test]
    fn title_and_words_are_non_empty() {
        let mut r = Rng::new(1);
        for _ in 0..500 {
            assert!(!title(&mut r).trim().is_empty());
            assert_eq!(words(&mut r, 3).split(' ').count(), 3);
        }
    }

    #[test]
    fn json_string_escapes() {
        assert_eq!(
            json_string("a\"b\\c\nd\u{1}é🚀"),
            r#""a\"b\\c\nd\u0001é🚀""#
        );
    }

    #[test]
    fn pg_array_quotes_and_nulls() {
        let items = [
            Some("plain"),
            None,
            Some("with \"quote\" and \\"),
            Some("日本語,{x}"),
        ];
        assert_eq!(
            pg_text_array(&items),
            r#"{"plain",NULL,"with \"quote\" and \\","日本語,{x}"}"#
        );
        assert_eq!(pg_text_array::<&str>(&[]), "{}");
    }
}
