//! Page weight of the chat page (`/rooms/{id}` of a default install): the HTML and every static file
//! it loads — stylesheets, scripts, the modules those import, the icon — as sent to a browser
//! that accepts brotli and gzip, against the same files uncompressed (the baseline). Bytes do
//! not depend on the build profile or the machine's load.
//!
//! Run with `make bench` (or `cargo bench --bench page_weight`). Results go to
//! `docs/benchmarks.md`, between the `page-weight` markers.

use std::collections::BTreeSet;

mod common;
use common::{ServerWithUser, report, write_into_benchmarks_md};

const EMAIL: &str = "weigh@example.com";
const PASSWORD: &str = "a long enough benchmark password";

/// `/static/…` references in `href="…"`, `src="…"` and JS `import … from '…'`.
fn references(text: &str, base_dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["href=\"", "src=\""] {
        for part in text.split(marker).skip(1) {
            if let Some(url) = part.split('"').next()
                && url.starts_with("/static/")
            {
                found.push(url.to_owned());
            }
        }
    }
    for marker in ["from '", "import '"] {
        for part in text.split(marker).skip(1) {
            if let Some(relative) = part.split('\'').next()
                && let Some(name) = relative.strip_prefix("./")
            {
                found.push(format!("{base_dir}/{name}"));
            }
        }
    }
    found
}

#[tokio::main]
async fn main() {
    conclave::crypto::install_tls_provider();
    let server = ServerWithUser::start(EMAIL, PASSWORD, &[]);
    let _token = common::sign_in_for_token(&server.base, EMAIL, PASSWORD).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .expect("client");
    let signed_in = browser
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&serde_json::json!({ "email": EMAIL, "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(signed_in.status(), 200);
    use reqwest::cookie::CookieStore as _;
    let cookies = jar
        .cookies(&server.base.parse().expect("url"))
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    let csrf = cookies
        .split("; ")
        .find_map(|c| c.strip_prefix("conclave_csrf="))
        .expect("csrf")
        .to_owned();
    let room: serde_json::Value = browser
        .post(format!("{}/api/v1/rooms", server.base))
        .header("X-CSRF-Token", &csrf)
        .json(&serde_json::json!({ "name": "weighed" }))
        .send()
        .await
        .expect("room")
        .json()
        .await
        .expect("json");
    let page_path = format!("/rooms/{}", room["id"]);

    // (name, uncompressed, as sent)
    let mut rows: Vec<(String, usize, usize, String)> = Vec::new();
    let fetch = |path: String, encoding: &'static str| {
        let (browser, base) = (browser.clone(), server.base.clone());
        async move {
            let response = browser
                .get(format!("{base}{path}"))
                .header("Accept-Encoding", encoding)
                .send()
                .await
                .expect("fetched");
            assert_eq!(response.status(), 200, "{path}");
            let coding = response
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            (coding, response.bytes().await.expect("body").to_vec())
        }
    };
    let (_, html) = fetch(page_path.clone(), "identity").await;
    let (html_coding, html_sent) = fetch(page_path.clone(), "br, gzip").await;
    rows.push((
        "the page (HTML)".to_owned(),
        html.len(),
        html_sent.len(),
        html_coding,
    ));
    let html = String::from_utf8_lossy(&html).into_owned();
    let mut pending: Vec<String> = references(&html, "/static");
    let mut seen = BTreeSet::new();
    while let Some(path) = pending.pop() {
        let path = path.split(['?', '#']).next().unwrap_or_default().to_owned();
        if !seen.insert(path.clone()) {
            continue;
        }
        let (_, plain) = fetch(path.clone(), "identity").await;
        let (coding, sent) = fetch(path.clone(), "br, gzip").await;
        if path.ends_with(".js") {
            let dir = path
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default();
            pending.extend(references(&String::from_utf8_lossy(&plain), &dir));
        }
        rows.push((path, plain.len(), sent.len(), coding));
    }
    let total_plain: usize = rows.iter().map(|r| r.1).sum();
    let total_sent: usize = rows.iter().map(|r| r.2).sum();
    let mut table = String::from(
        "| resource | uncompressed (baseline) | sent | encoding |\n|---|---:|---:|---|\n",
    );
    for (name, plain, sent, coding) in &rows {
        table.push_str(&format!("| `{name}` | {plain} B | {sent} B | {coding} |\n"));
    }
    table.push_str(&format!(
        "| **total** | **{total_plain} B** | **{total_sent} B** | {:.0} % of the baseline |\n",
        100.0 * total_sent as f64 / total_plain as f64
    ));
    let section = format!(
        "<!-- page-weight:begin -->\n## Page weight: the chat page\n\n\
         `cargo bench --bench page_weight`: a signed-in browser opening a room (a default install: \
         no assistant provider, so no code highlighting), and every static file the page loads (stylesheets, scripts and the modules they \
         import, the icon), as sent to a client that accepts brotli and gzip, against the same \
         bytes uncompressed. Static files are content-hashed (cached for a year, so a return \
         visit sends only the HTML) and precompressed; the HTML is compressed per response.\n\n\
         {table}\n<!-- page-weight:end -->"
    );
    println!("{section}");
    write_into_benchmarks_md("page-weight", &section);
    report::record(
        "page_weight",
        &[report::Row::new(
            "page weight: the chat page and everything it loads",
            format!("{total_sent} B sent"),
            format!("{total_plain} B uncompressed"),
        )
        .ratio(total_sent as f64, total_plain as f64)],
    );
}
