//! Message bodies are Markdown, rendered on the server into HTML that cannot carry script:
//! pulldown-cmark renders, ammonia keeps only a fixed set of harmless tags and attributes
//! (no raw HTML survives, links are http/https/mailto only and get `rel="noopener noreferrer
//! nofollow"`, images are not shown so a message cannot track who reads it).

use std::collections::HashSet;
use std::sync::LazyLock;

static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .tags(HashSet::from([
            "p",
            "br",
            "em",
            "strong",
            "del",
            "code",
            "pre",
            "blockquote",
            "ul",
            "ol",
            "li",
            "a",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "hr",
            "table",
            "thead",
            "tbody",
            "tr",
            "th",
            "td",
        ]))
        .generic_attributes(HashSet::new())
        .tag_attributes(std::collections::HashMap::from([
            ("a", HashSet::from(["href"])),
            // `language-…` only (see the filter): what code highlighting keys on.
            ("code", HashSet::from(["class"])),
        ]))
        .attribute_filter(|element, attribute, value| match (element, attribute) {
            ("code", "class") => {
                let language = value.strip_prefix("language-")?;
                let plain = !language.is_empty()
                    && language.len() <= 30
                    && language
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '#' | '-' | '_'));
                plain.then_some(value.into())
            }
            _ => Some(value.into()),
        })
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer nofollow"));
    builder
});

/// Safe HTML for a Markdown message body.
pub fn render(body: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, html};
    let options = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
    // Raw HTML in a message is shown as text, not dropped: people paste snippets.
    let events = Parser::new_ext(body, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut unsafe_html = String::with_capacity(body.len() * 3 / 2);
    html::push_html(&mut unsafe_html, events);
    CLEANER.clean(&unsafe_html).to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_renders_without_script() {
        assert_eq!(
            render("**hi** _there_"),
            "<p><strong>hi</strong> <em>there</em></p>\n"
        );
        let html = render("<script>alert(1)</script> <img src=x onerror=alert(1)>");
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let html = render("[x](javascript:alert(1)) [y](https://example.com)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains(r#"href="https://example.com""#), "{html}");
        assert!(html.contains("noopener"), "{html}");
        let html = render("![pixel](https://tracker.example/p.gif)");
        assert!(!html.contains("<img"), "{html}");
        let html = render("```rust\nfn main() {}\n```");
        assert!(html.contains(r#"<code class="language-rust">"#), "{html}");
        let html = render("```x\" onclick=\"y\nz\n```");
        assert!(!html.contains("onclick"), "{html}");
    }
}
