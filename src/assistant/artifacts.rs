//! Artifacts: the code blocks and documents inside the assistant's answers, listed per chat
//! with a type, title, content and version, to view, copy and download.
//!
//! They are read out of the stored answers each time instead of being kept in a table of
//! their own: the answers are encrypted at rest and follow retention and deletion, and a
//! second plaintext copy would escape both. A chat has at most a few hundred answers, and
//! parsing them is quick.
//!
//! - Every fenced code block is a `code` artifact; its info string gives the language and,
//!   optionally, a file name (```` ```rust src/main.rs ````), which is its title.
//! - An answer that is itself a document — it opens with a `# Heading` and is long — is a
//!   `document` artifact (Markdown) titled by that heading.
//! - Artifacts with the same title are versions of one another, numbered in order.

use std::collections::HashMap;

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};
use serde::Serialize;

/// Answers at least this long that start with a heading are documents.
const DOCUMENT_MIN_CHARS: usize = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Code,
    Document,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Artifact {
    /// The answer it is in, and its place there (0 for the first).
    pub message_id: i64,
    pub index: usize,
    pub kind: Kind,
    /// `markdown` for documents; the fence's language (possibly empty) for code.
    pub language: String,
    pub title: String,
    /// 1 for the first artifact of its title in the chat, then 2, 3, …
    pub version: u32,
    pub content: String,
}

impl Artifact {
    /// A file name to download it as.
    pub fn file_name(&self) -> String {
        let base: String = self
            .title
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let base = base.trim_matches('-');
        let base = if base.is_empty() { "artifact" } else { base };
        if base.contains('.') {
            return base.to_owned();
        }
        format!("{base}.{}", extension(&self.language, self.kind))
    }
}

fn extension(language: &str, kind: Kind) -> &'static str {
    if kind == Kind::Document {
        return "md";
    }
    match language.to_ascii_lowercase().as_str() {
        "rust" | "rs" => "rs",
        "python" | "py" => "py",
        "javascript" | "js" => "js",
        "typescript" | "ts" => "ts",
        "html" => "html",
        "css" => "css",
        "json" => "json",
        "toml" => "toml",
        "yaml" | "yml" => "yaml",
        "bash" | "sh" | "shell" | "zsh" => "sh",
        "sql" => "sql",
        "go" => "go",
        "java" => "java",
        "c" => "c",
        "cpp" | "c++" => "cpp",
        "markdown" | "md" => "md",
        _ => "txt",
    }
}

/// The artifacts of one answer, without versions (see [`number_versions`]).
pub fn extract(message_id: i64, body: &str) -> Vec<Artifact> {
    let mut found = Vec::new();
    let trimmed = body.trim_start();
    if let Some(heading) = trimmed
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        && body.chars().count() >= DOCUMENT_MIN_CHARS
    {
        found.push(Artifact {
            message_id,
            index: 0,
            kind: Kind::Document,
            language: "markdown".to_owned(),
            title: heading.chars().take(120).collect(),
            version: 0,
            content: body.to_owned(),
        });
    }
    let mut current: Option<(String, String, String)> = None;
    let mut snippets = 0;
    for event in Parser::new(body) {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let mut words = info.split_whitespace();
                let language = words.next().unwrap_or("").to_owned();
                let title = words.collect::<Vec<_>>().join(" ");
                current = Some((language, title, String::new()));
            }
            Event::Text(text) => {
                if let Some((_, _, content)) = current.as_mut() {
                    content.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((language, title, content)) = current.take() {
                    snippets += 1;
                    let title = if title.is_empty() {
                        let what = if language.is_empty() {
                            "Code"
                        } else {
                            &language
                        };
                        format!("{what} snippet {snippets}")
                    } else {
                        title.chars().take(120).collect()
                    };
                    found.push(Artifact {
                        message_id,
                        index: found.len(),
                        kind: Kind::Code,
                        language,
                        title,
                        version: 0,
                        content,
                    });
                }
            }
            _ => {}
        }
    }
    found
}

/// Gives each artifact its version: how many artifacts of the same title came before it,
/// plus one. `artifacts` must be in chat order.
pub fn number_versions(artifacts: &mut [Artifact]) {
    let mut seen: HashMap<String, u32> = HashMap::new();
    for artifact in artifacts {
        let count = seen.entry(artifact.title.to_lowercase()).or_insert(0);
        *count += 1;
        artifact.version = *count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_blocks_become_artifacts_and_same_titles_become_versions() {
        let first = extract(
            10,
            "Here:\n\n```rust src/main.rs\nfn main() {}\n```\n\nand\n\n```\nplain\n```\n",
        );
        let second = extract(
            12,
            "Better:\n\n```rust src/main.rs\nfn main() { run() }\n```\n",
        );
        let mut all: Vec<Artifact> = first.into_iter().chain(second).collect();
        number_versions(&mut all);
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[0].title.as_str(), all[0].language.as_str()),
            ("src/main.rs", "rust")
        );
        assert_eq!(all[0].content, "fn main() {}\n");
        assert_eq!(all[0].file_name(), "src-main.rs");
        assert_eq!(all[1].title, "Code snippet 2");
        assert_eq!(all[1].file_name(), "Code-snippet-2.txt");
        assert_eq!((all[2].message_id, all[2].version), (12, 2));
        assert_eq!(all[0].version, 1);
    }

    #[test]
    fn a_long_answer_with_a_heading_is_a_document() {
        let body = format!("# Trip plan\n\n{}", "Day one: museums. ".repeat(40));
        let found = extract(3, &body);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, Kind::Document);
        assert_eq!(found[0].title, "Trip plan");
        assert_eq!(found[0].file_name(), "Trip-plan.md");
        assert!(extract(4, "# Short\n\nhi").is_empty());
    }
}
