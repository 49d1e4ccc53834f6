//! Any message body renders to HTML that cannot carry script: only the allowed tags, only
//! `href`, `class` and `rel` attributes, and links only to http, https and mailto.
#![no_main]

// The oracle keeps its own copy of the allowed tags on purpose: a tag added to the renderer's
// list must be added here too, deliberately, or fuzzing fails.

const TAGS: &[&str] = &[
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
];

/// An attribute's value as a browser's URL parser takes it: entities decoded, tabs and line
/// breaks dropped anywhere, leading spaces and control characters trimmed, lower case.
fn as_a_browser_reads(value: &str) -> String {
    let mut decoded = String::new();
    let mut rest = value;
    while let Some(amp) = rest.find('&') {
        decoded.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest.find(';').expect("entities end in ;");
        let entity = &rest[1..end];
        let character = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            numeric => {
                let code = match numeric.strip_prefix("#x").or(numeric.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => numeric.trim_start_matches('#').parse(),
                };
                code.ok()
                    .and_then(char::from_u32)
                    .unwrap_or_else(|| panic!("an unknown entity &{entity}; in {value:?}"))
            }
        };
        decoded.push(character);
        rest = &rest[end + 1..];
    }
    decoded.push_str(rest);
    decoded
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .trim_start_matches(|c: char| c <= ' ')
        .to_ascii_lowercase()
}

/// Checks every tag of `html`; text is escaped by the renderer, so every `<` opens a tag.
fn check(html: &str) {
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let rest_of_tag = rest.strip_prefix('/').unwrap_or(rest);
        let name_len = rest_of_tag
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest_of_tag.len());
        let name = &rest_of_tag[..name_len];
        assert!(TAGS.contains(&name), "tag <{name}> in {html:?}");
        let mut attributes = &rest_of_tag[name_len..];
        loop {
            attributes = attributes.trim_start();
            if attributes.starts_with('>') || attributes.starts_with("/>") {
                break;
            }
            let (attribute, after) = attributes
                .split_once("=\"")
                .unwrap_or_else(|| panic!("a quoted attribute in {html:?}"));
            let (value, after) = after
                .split_once('"')
                .unwrap_or_else(|| panic!("a closed attribute in {html:?}"));
            assert!(
                ["href", "class", "rel"].contains(&attribute),
                "attribute {attribute} in {html:?}"
            );
            if attribute == "href" {
                let url = as_a_browser_reads(value);
                // A scheme as RFC 3986 spells it; anything else before a `:` is a relative path.
                let scheme = url
                    .split_once(':')
                    .map(|(scheme, _)| scheme)
                    .filter(|scheme| {
                        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                            && scheme
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                    });
                if let Some(scheme) = scheme {
                    assert!(
                        ["http", "https", "mailto"].contains(&scheme),
                        "link {url:?} in {html:?}"
                    );
                }
            }
            attributes = after;
        }
        rest = attributes;
    }
}

libfuzzer_sys::fuzz_target!(|body: &str| {
    check(&conclave_core::markdown::render(body));
});
