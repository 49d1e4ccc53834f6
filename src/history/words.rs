//! Words for the blind index: how a text becomes normalized search terms, and how a found
//! message gets its highlighted snippet.
//!
//! Normalization: Unicode NFKD with combining marks dropped (diacritics folded: "Café" →
//! "cafe"), lower case, split at anything that is not a letter or digit, then the Snowball
//! English stemmer ("meetings" → "meet"). A query goes through the same steps, so it finds
//! every form of its words.

use std::collections::BTreeSet;

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// Words longer than this are not indexed (hashes, base64 blobs, URLs' long tails).
const MAX_WORD_CHARS: usize = 40;
/// At most this many distinct terms are indexed per message.
pub const MAX_TERMS_PER_MESSAGE: usize = 512;
/// Characters of context on each side of the first match in a snippet.
const SNIPPET_CONTEXT: usize = 60;

fn stemmer() -> rust_stemmers::Stemmer {
    rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English)
}

/// Folds one word: NFKD, no combining marks, lower case.
fn fold(word: &str) -> String {
    word.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The words of `text` with their byte ranges in `text`.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

fn term_of(stemmer: &rust_stemmers::Stemmer, word: &str) -> Option<String> {
    if word.chars().count() > MAX_WORD_CHARS {
        return None;
    }
    let folded = fold(word);
    // Folding may expose separators (e.g. a ligature); keep only letters and digits.
    let folded: String = folded.chars().filter(|c| c.is_alphanumeric()).collect();
    if folded.is_empty() {
        return None;
    }
    Some(stemmer.stem(&folded).into_owned())
}

/// The distinct normalized terms of a message body (at most `MAX_TERMS_PER_MESSAGE`).
pub fn terms(text: &str) -> BTreeSet<String> {
    let stemmer = stemmer();
    let mut out = BTreeSet::new();
    for (_, word) in words(text) {
        if let Some(term) = term_of(&stemmer, word) {
            out.insert(term);
            if out.len() >= MAX_TERMS_PER_MESSAGE {
                break;
            }
        }
    }
    out
}

/// The terms of a query, in the order typed, without repeats.
pub fn query_terms(query: &str) -> Vec<String> {
    let stemmer = stemmer();
    let mut out: Vec<String> = Vec::new();
    for (_, word) in words(query) {
        if let Some(term) = term_of(&stemmer, word)
            && !out.contains(&term)
        {
            out.push(term);
        }
    }
    out
}

/// Whether every query term is among the body's terms (drops the rare false hit of a
/// truncated hash, and hits on text that was edited since).
pub fn matches_all(body: &str, query: &[String]) -> bool {
    let found = terms(body);
    query.iter().all(|t| found.contains(t))
}

/// An HTML snippet of `body` around its first match, every matching word in `<mark>`, all
/// text escaped.
pub fn highlight(body: &str, query: &[String]) -> String {
    let stemmer = stemmer();
    let hits: Vec<(usize, usize)> = words(body)
        .filter(|(_, w)| term_of(&stemmer, w).is_some_and(|t| query.contains(&t)))
        .map(|(start, w)| (start, start + w.len()))
        .collect();
    let first = hits.first().map_or(0, |(start, _)| *start);
    let from = char_boundary_back(body, first, SNIPPET_CONTEXT);
    let last_end = hits
        .iter()
        .take_while(|(start, _)| *start < first + 2 * SNIPPET_CONTEXT)
        .last()
        .map_or(first, |(_, end)| *end);
    let to = char_boundary_forward(body, last_end, SNIPPET_CONTEXT);
    let mut html = String::new();
    if from > 0 {
        html.push('…');
    }
    let mut at = from;
    for (start, end) in hits
        .iter()
        .filter(|(start, end)| *start >= from && *end <= to)
    {
        html.push_str(&escape(&body[at..*start]));
        html.push_str("<mark>");
        html.push_str(&escape(&body[*start..*end]));
        html.push_str("</mark>");
        at = *end;
    }
    html.push_str(&escape(&body[at..to]));
    if to < body.len() {
        html.push('…');
    }
    html
}

/// The byte index `chars` characters before `at` (or 0), on a character boundary.
fn char_boundary_back(text: &str, at: usize, chars: usize) -> usize {
    text[..at]
        .char_indices()
        .rev()
        .nth(chars.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

/// The byte index `chars` characters after `at` (or the end), on a character boundary.
fn char_boundary_forward(text: &str, at: usize, chars: usize) -> usize {
    text[at..]
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| at + i)
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_lowered_and_stemmed() {
        let found = terms("Café MEETINGS, naïve résumé! meeting");
        assert!(found.contains("cafe"));
        assert!(found.contains("meet"));
        assert!(found.contains("naiv"));
        assert!(found.contains("resum"));
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(query_terms("meeting Meetings cafe"), vec!["meet", "cafe"]);
        assert!(matches_all(
            "The meetings at the café",
            &query_terms("cafe meeting")
        ));
        assert!(!matches_all("The meetings", &query_terms("cafe meeting")));
    }

    #[test]
    fn snippets_escape_and_mark_matches() {
        let html = highlight(
            "<b>Lunch</b> at the café & then meetings",
            &query_terms("cafe"),
        );
        assert_eq!(
            html,
            "&lt;b&gt;Lunch&lt;/b&gt; at the <mark>café</mark> &amp; then meetings"
        );
        let long = format!("{} needle {}", "word ".repeat(50), "tail ".repeat(50));
        let html = highlight(&long, &query_terms("needles"));
        assert!(html.starts_with('…') && html.ends_with('…'), "{html}");
        assert!(html.contains("<mark>needle</mark>"));
    }
}
