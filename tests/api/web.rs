//! The foundation's HTTP surface: landing page, health, metrics, static files, headers, errors.

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn landing_page_is_html_with_the_product_pitch() {
    let app = spawn_app().await;
    let response = app.get_with_accept("/", "text/html").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("Secure rooms for people, AI assistants and devices."));
    // The bound port, not the configured port 0 (Tera escapes the slashes of the URL).
    let port = app.address.rsplit(':').next().unwrap();
    assert!(
        body.contains(&format!("127.0.0.1:{port}</code>")),
        "the landing page shows this instance's address"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/healthz",
        "/does-not-exist",
        "/static/css/conclave.css",
    ] {
        let response = app.get(path).await;
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("object-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(
            headers["referrer-policy"], "strict-origin-when-cross-origin",
            "{path}"
        );
        assert!(
            headers["permissions-policy"]
                .to_str()
                .unwrap()
                .contains("camera=()"),
            "{path}"
        );
        // Plain http: HSTS would be ignored by browsers and wrong to send.
        assert!(headers.get("strict-transport-security").is_none(), "{path}");
        let request_id = headers["x-request-id"].to_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(request_id).is_ok(),
            "{path}: {request_id}"
        );
    }
}

#[tokio::test]
async fn csp_nonce_is_fresh_for_every_request() {
    let app = spawn_app().await;
    let nonce = |csp: &str| {
        csp.split("'nonce-")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .map(str::to_owned)
            .expect("CSP has a nonce")
    };
    let first = app.get("/").await.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let second = app.get("/").await.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(nonce(&first), nonce(&second));
    assert!(nonce(&first).len() >= 22, "nonce has at least 128 bits");
}

#[tokio::test]
async fn hsts_is_sent_when_the_public_url_is_https() {
    let app =
        spawn_app_with(|s| s.server.public_url = Some("https://chat.example.com".to_owned())).await;
    let response = app.get("/healthz").await;
    let hsts = response.headers()["strict-transport-security"]
        .to_str()
        .unwrap();
    assert!(hsts.starts_with("max-age=63072000"), "{hsts}");
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("upgrade-insecure-requests"));
}

#[tokio::test]
async fn unknown_routes_are_problem_json_for_api_clients() {
    let app = spawn_app().await;
    let response = app
        .get_with_accept("/api/v1/nothing", "application/json")
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");
    assert_eq!(problem["detail"], "There is nothing at /api/v1/nothing.");
    assert_eq!(problem["request_id"], request_id.as_str());
}

#[tokio::test]
async fn unknown_routes_are_an_html_page_for_browsers() {
    let app = spawn_app().await;
    let response = app
        .get_with_accept(
            "/nope",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("<h1>Not Found</h1>"), "{body}");
    assert!(
        body.contains("There is nothing at &#x2F;nope."),
        "user input is escaped: {body}"
    );
}

#[tokio::test]
async fn error_pages_escape_what_the_user_typed() {
    let app = spawn_app().await;
    let response = app
        .get_with_accept("/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "text/html")
        .await;
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(!body.contains("<script>alert(1)</script>"), "{body}");
    assert!(body.contains("&lt;script&gt;"), "{body}");
}

#[tokio::test]
async fn wrong_method_is_405_with_a_clear_message_and_the_allowed_methods() {
    let app = spawn_app().await;
    let response = app.client.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["detail"],
        "POST is not allowed on /healthz; use GET, HEAD."
    );

    // A path with several methods names them all, for API clients and for browsers alike.
    let response = app
        .client
        .put(app.url("/api/v1/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD, POST");
    let page = app
        .client
        .delete(app.url("/login"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 405);
    let allow = page.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert!(page.text().await.unwrap().contains("<html"));
}

#[tokio::test]
async fn head_requests_work_for_pages_and_probes() {
    let app = spawn_app().await;
    for path in ["/", "/healthz", "/readyz"] {
        let response = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn healthz_reports_the_process_is_alive() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn readyz_is_ready_when_the_database_is_migrated() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["migrations"], "current");
    let expected = match crate::helpers::backend() {
        crate::helpers::TestBackend::Sqlite => "sqlite",
        crate::helpers::TestBackend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
}

#[tokio::test]
async fn readyz_is_503_with_a_reason_when_migrations_are_missing() {
    let app = spawn_app().await;
    // Roll the schema back behind the running node's back, as a bad restore would.
    app.state
        .db
        .run(|conn| {
            use diesel::connection::SimpleConnection as _;
            conn.batch_execute("DELETE FROM __diesel_schema_migrations")
                .map_err(conclave::db::DbError::from)
        })
        .await
        .unwrap();
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    let reason = body["reason"].as_str().unwrap();
    let expected = format!(
        "{} database migrations are not applied",
        crate::helpers::migration_count()
    );
    assert!(reason.contains(&expected), "{reason}");
}

#[tokio::test]
async fn metrics_expose_requests_by_route_template_pool_and_build_info() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    app.get("/static/css/conclave.css").await;
    app.get("/missing").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for expected in [
        r#"http_requests_total{method="GET",route="/healthz",status="200"}"#,
        r#"http_requests_total{method="GET",route="/static/{path:.*}",status="200"}"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/healthz",status="200",le="0.005"}"#,
        "db_pool_connections ",
        "db_pool_idle_connections ",
        "db_pool_max_connections ",
        r#"conclave_build_info{version=""#,
        "# TYPE http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    // Raw paths never become labels: that would let clients blow up the series count.
    assert!(!text.contains("route=\"/static/css/conclave.css\""));
}

#[tokio::test]
async fn static_files_are_served_with_type_and_etag_and_revalidate() {
    let app = spawn_app().await;
    let response = app.get("/static/css/conclave.css").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert!(response.text().await.unwrap().contains("--accent"));

    let again = app
        .client
        .get(app.url("/static/css/conclave.css"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let svg = app.get("/static/favicon.svg").await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");

    let missing = app.get("/static/nope.js").await;
    assert_eq!(missing.status(), 404);
    // HTTP clients normalise `..` away (even encoded), so send the raw request line. The edge
    // policy refuses traversal first (400); with that rule off, the asset route still does.
    let (status, _) = app.raw_get("/static/%2e%2e/Cargo.toml").await;
    assert_eq!(status, 400, "refused by the edge");
    let mut lenient = conclave::edge::EdgePolicy::default();
    lenient.waf.block_path_traversal = false;
    let owner = app
        .create_user("owner@example.com", "correct horse battery staple", true)
        .await;
    app.state
        .edge
        .save(lenient, "no traversal rule", Some(owner), None, None)
        .await
        .unwrap();
    let (status, body) = app.raw_get("/static/%2e%2e/Cargo.toml").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("No static file ../Cargo.toml."),
        "answered by the asset route: {body}"
    );
    let (status, body) = app.raw_get("/static/../Cargo.toml").await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("[package]"), "{body}");
}

#[tokio::test]
async fn responses_are_compressed_when_the_client_accepts_gzip() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/static/css/conclave.css"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
}

/// Decodes a brotli body (the encoding static files are precompressed in).
fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut std::io::Cursor::new(bytes), &mut out).unwrap();
    out
}

#[tokio::test]
async fn pages_link_static_files_by_content_hash_and_they_are_cached_for_a_year_precompressed() {
    let app = spawn_app().await;
    let page = app.get("/login").await.text().await.unwrap();
    let css = page
        .split("href=\"")
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.starts_with("/static/css/conclave.") && href.ends_with(".css"))
        .unwrap_or_else(|| panic!("the stylesheet link: {page}"))
        .to_owned();
    assert_ne!(css, "/static/css/conclave.css", "a content-hashed name");
    let plain = app
        .client
        .get(app.url("/static/css/conclave.css"))
        .header("Accept-Encoding", "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["cache-control"], "public, max-age=3600");
    let original = plain.bytes().await.unwrap();

    let fetch = |encoding: &'static str| {
        let (app, css) = (&app, css.clone());
        async move {
            app.client
                .get(app.url(&css))
                .header("Accept-Encoding", encoding)
                .send()
                .await
                .unwrap()
        }
    };
    let br = fetch("gzip, deflate, br").await;
    assert_eq!(br.status(), 200);
    assert_eq!(br.headers()["content-encoding"], "br");
    assert_eq!(br.headers()["vary"], "Accept-Encoding");
    assert_eq!(
        br.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = br.headers()["etag"].to_str().unwrap().to_owned();
    let compressed = br.bytes().await.unwrap();
    assert!(
        compressed.len() * 3 < original.len(),
        "brotli shrinks the stylesheet"
    );
    assert_eq!(unbrotli(&compressed), original.to_vec());
    let gz = fetch("gzip").await;
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let refused = fetch("br;q=0, gzip;q=0").await;
    assert!(refused.headers().get("content-encoding").is_none());
    assert_eq!(refused.bytes().await.unwrap(), original);
    // Revalidation still answers 304.
    let again = app
        .client
        .get(app.url(&css))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // A name from another build gets today's file, not to be kept; a made-up one 404s.
    let stale = app
        .client
        .get(app.url("/static/css/conclave.00000000.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["cache-control"], "no-cache");
    let missing = app.get("/static/css/nothing.0123abcd.css").await;
    assert_eq!(missing.status(), 404);
    // The service worker keeps the hashed names offline.
    let worker = app.get("/sw.js").await.text().await.unwrap();
    assert!(worker.contains(&format!("'{css}'")), "{worker}");
    assert!(!worker.contains("'conclave-shell-v2'"));
}

#[tokio::test]
async fn template_directory_overrides_built_in_templates() {
    let overrides = tempfile::tempdir().unwrap();
    let original = include_str!("../../templates/index.html");
    std::fs::write(
        overrides.path().join("index.html"),
        original.replace("Secure rooms for people", "Our very own rooms for people"),
    )
    .unwrap();
    let dir = overrides.path().to_path_buf();
    let app = spawn_app_with(move |s| s.templates.dir = Some(dir)).await;
    let body = app.get("/").await.text().await.unwrap();
    assert!(body.contains("Our very own rooms for people"), "{body}");
    // Templates not overridden still come from the binary.
    let missing = app
        .get_with_accept("/x", "text/html")
        .await
        .text()
        .await
        .unwrap();
    assert!(missing.contains("Back to the start page"));
}

#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token =
            Some(secrecy::SecretString::from("scrape-me-please".to_owned()));
    })
    .await;
    let anonymous = app.get("/metrics").await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me-please")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("http_requests_total"));
}

#[tokio::test]
async fn unusual_http_methods_do_not_create_new_metric_series() {
    let app = spawn_app().await;
    let method = reqwest::Method::from_bytes(b"BREW").unwrap();
    let response = app
        .client
        .request(method, app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("method=\"BREW\""), "{text}");
    assert!(
        text.contains(r#"http_requests_total{method="other",route="/healthz",status="405"}"#),
        "{text}"
    );
}
