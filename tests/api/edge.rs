//! The edge policy on a live server: saving (validated, versioned, audited), rollback,
//! enforcement (allowlists through trusted proxies, rate limits, WAF rules, headers, CSP),
//! hot reload on another node, the admin listener, the renderer checked by the real nginx,
//! Caddy and nft, `conclave edge render`, and the edge agent's apply/check/rollback/report.

use serde_json::{Value, json};

use crate::admin::staffed;
use crate::helpers::{Device, TestApp, spawn_app_with};

async fn put_policy(app: &TestApp, who: &Device, policy: Value) -> (u16, Value) {
    let response = who
        .client
        .put(app.url("/api/v1/admin/edge/policy"))
        .header("X-CSRF-Token", who.csrf(app))
        .json(&json!({ "policy": policy, "comment": "test" }))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A policy using every section, with values that need care when rendered.
fn rich_policy(cert: &str, key: &str) -> Value {
    json!({
        "headers": [
            {"name": "X-Robots-Tag", "value": "noindex; nofollow"},
            {"name": "Permissions-Policy", "value": "camera=(), geolocation=(self \"https://maps.example.com\")".replace('"', "")}
        ],
        "csp": [{"directive": "img-src", "sources": ["https://cdn.example.com", "*.images.example.org"]}],
        "allowlists": [
            {"path_prefix": "/admin", "cidrs": ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]},
            {"path_prefix": "/api/v1/admin", "cidrs": ["100.64.0.0/10"]},
            {"path_prefix": "/admin/edge", "cidrs": ["10.8.0.0/24"]}
        ],
        "rate_limits": [
            {"path_prefix": "/api/v1/auth/login", "key": "ip", "per_minute": 30, "burst": 5},
            {"path_prefix": "/", "key": "ip", "per_minute": 6000, "burst": 200},
            {"path_prefix": "/v1", "key": "user", "per_minute": 120, "burst": 20}
        ],
        "trusted_proxies": ["127.0.0.1/32", "::1/128"],
        "waf": {
            "deny_paths": ["/old-*", "*.bak"],
            "deny_methods": ["TRACE", "TRACK"],
            "deny_user_agents": ["sqlmap", "nikto", "Go-http-client/1.1"],
            "max_body_bytes": 10485760,
            "block_path_traversal": true,
            "block_scanner_probes": true
        },
        "proxy": {
            "domain": "chat.example.com",
            "upstream": "127.0.0.1:8080",
            "min_tls_version": "1.2",
            "hsts_max_age_secs": 31536000,
            "certificate": cert,
            "certificate_key": key,
            "acme_email": "ops@example.com"
        },
        "firewall": {"ssh_port": 22, "ssh_from": ["100.64.0.0/10", "2001:db8::/32"], "admin_port": 9443, "new_connections_per_second": 50}
    })
}

#[tokio::test]
async fn a_saved_policy_is_versioned_audited_and_can_be_rolled_back() {
    let s = staffed().await;
    let app = &s.app;
    let current = s.viewer.get_json(app, "/api/v1/admin/edge/policy").await;
    assert_eq!(
        current["version"], 0,
        "the built-in default until one is saved"
    );
    let (status, saved) = put_policy(
        app,
        &s.admin,
        json!({"headers": [{"name": "X-Version", "value": "one"}]}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["version"], 1);
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"headers": [{"name": "X-Version", "value": "two"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let response = app.get("/healthz").await;
    assert_eq!(response.headers()["x-version"], "two", "in force at once");
    let rolled = s
        .admin
        .post(app, "/api/v1/admin/edge/rollback", json!({"version": 1}))
        .await;
    assert_eq!(rolled.status(), 200);
    let rolled: Value = rolled.json().await.expect("json");
    assert_eq!(rolled["version"], 3, "a rollback is a new version");
    assert_eq!(app.get("/healthz").await.headers()["x-version"], "one");
    let versions = s.viewer.get_json(app, "/api/v1/admin/edge/versions").await;
    assert_eq!(versions[0]["rolled_back_from"], 1);
    let audit = s
        .viewer
        .get_json(app, "/api/v1/admin/audit?action=edge.")
        .await;
    let events = audit["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["event"], "edge.policy_rolled_back");
    assert_eq!(events[0]["details"]["before"]["headers"][0]["value"], "two");
    assert_eq!(events[0]["details"]["after"]["headers"][0]["value"], "one");
    let missing = s
        .admin
        .post(app, "/api/v1/admin/edge/rollback", json!({"version": 99}))
        .await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_bad_value_is_refused_with_its_field_and_never_rendered() {
    let s = staffed().await;
    let app = &s.app;
    let bad = [
        (
            json!({"headers": [{"name": "X-A", "value": "a\nb"}]}),
            "headers[0].value",
        ),
        (
            json!({"headers": [{"name": "X-A\"", "value": "a"}]}),
            "headers[0].name",
        ),
        (
            json!({"headers": [{"name": "X-A", "value": "a\" always; return 200 {"}]}),
            "headers[0].value",
        ),
        (
            json!({"allowlists": [{"path_prefix": "/admin;", "cidrs": ["10.0.0.0/8"]}]}),
            "allowlists[0].path_prefix",
        ),
        (
            json!({"allowlists": [{"path_prefix": "/admin {", "cidrs": ["10.0.0.0/8"]}]}),
            "allowlists[0].path_prefix",
        ),
        (
            json!({"allowlists": [{"path_prefix": "/admin", "cidrs": []}]}),
            "allowlists[0].cidrs",
        ),
        (
            json!({"rate_limits": [{"path_prefix": "/x\"y", "key": "ip", "per_minute": 5, "burst": 1}]}),
            "rate_limits[0].path_prefix",
        ),
        (
            json!({"waf": {"deny_paths": ["/x;y"]}}),
            "waf.deny_paths[0]",
        ),
        (
            json!({"waf": {"deny_user_agents": ["bad\"agent"]}}),
            "waf.deny_user_agents[0]",
        ),
        (
            json!({"waf": {"deny_methods": ["GET;"]}}),
            "waf.deny_methods[0]",
        ),
        (
            json!({"proxy": {"domain": "chat.example.com;\nserver"}}),
            "proxy.domain",
        ),
        (
            json!({"proxy": {"upstream": "127.0.0.1:80 { }"}}),
            "proxy.upstream",
        ),
        (
            json!({"proxy": {"certificate": "/etc/x\".pem", "certificate_key": "/etc/k.pem"}}),
            "proxy.certificate",
        ),
        (
            json!({"csp": [{"directive": "script-src", "sources": ["'unsafe-eval'"]}]}),
            "csp[0].sources[0]",
        ),
        (
            json!({"csp": [{"directive": "img-src; script-src", "sources": ["https:"]}]}),
            "csp[0].directive",
        ),
    ];
    for (policy, field) in bad {
        let (status, body) = put_policy(app, &s.admin, policy.clone()).await;
        assert_eq!(status, 422, "{policy} → {body}");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{policy}: {fields:?}");
        let preview = s
            .viewer
            .post(
                app,
                "/api/v1/admin/edge/preview",
                json!({"policy": policy, "format": "nginx"}),
            )
            .await;
        assert_eq!(preview.status(), 422, "a bad draft is not rendered either");
    }
    // A malformed CIDR and an unknown key too.
    for policy in [
        json!({"trusted_proxies": ["10.0.0.0/8; drop"]}),
        json!({"allowlists": [{"path_prefix": "/a", "cidrs": ["300.1.1.1/8"]}]}),
        json!({"unknown": true}),
    ] {
        let (status, _) = put_policy(app, &s.admin, policy).await;
        assert_eq!(status, 422);
    }
    let current = s.viewer.get_json(app, "/api/v1/admin/edge/policy").await;
    assert_eq!(current["version"], 0, "nothing was saved");
}

#[tokio::test]
async fn allowlists_believe_forwarded_addresses_only_from_trusted_proxies() {
    let s = staffed().await;
    let app = &s.app;
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"allowlists": [{"path_prefix": "/admin", "cidrs": ["100.64.0.0/10"]}]}),
    )
    .await;
    assert_eq!(status, 200);
    let get = |path: &str, forwarded: Option<&str>| {
        let mut request = s
            .admin
            .client
            .get(app.url(path))
            .header("Accept", "application/json");
        if let Some(f) = forwarded {
            request = request.header("X-Forwarded-For", f);
        }
        request.send()
    };
    let refused = get("/admin", None).await.expect("sent");
    assert_eq!(refused.status(), 403, "127.0.0.1 is not in the VPN range");
    let spoofed = get("/admin/users", Some("100.64.1.2")).await.expect("sent");
    assert_eq!(
        spoofed.status(),
        403,
        "an untrusted peer cannot claim an address"
    );
    assert_eq!(
        get("/administrators", None).await.expect("sent").status(),
        404,
        "whole segments only"
    );
    assert_eq!(get("/healthz", None).await.expect("sent").status(), 200);
    // Trust the local proxy: now its X-Forwarded-For names the client.
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({
            "allowlists": [{"path_prefix": "/admin", "cidrs": ["100.64.0.0/10"]}],
            "trusted_proxies": ["127.0.0.1/32"]
        }),
    )
    .await;
    assert_eq!(status, 200, "the API is still reachable to fix the policy");
    assert_eq!(
        get("/admin", Some("100.64.1.2"))
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        get("/admin", Some("203.0.113.5"))
            .await
            .expect("sent")
            .status(),
        403
    );
    assert_eq!(
        get("/admin", Some("100.64.1.2, 203.0.113.5"))
            .await
            .expect("sent")
            .status(),
        403,
        "the right-most untrusted hop is the client"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = staffed().await;
    let app = &s.app;
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"rate_limits": [
            {"path_prefix": "/healthz", "key": "ip", "per_minute": 1, "burst": 3},
            {"path_prefix": "/api/v1/me", "key": "user", "per_minute": 1, "burst": 2}
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app.get("/healthz").await;
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        app.get("/readyz").await.status(),
        200,
        "other paths are not limited"
    );
    // Per user: each signed-in person has their own allowance, and each API token its own.
    let created = s
        .owner
        .post(
            app,
            "/api/v1/me/tokens",
            json!({"name": "script", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let token = created.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    for who in [&s.viewer, &s.operator] {
        assert_eq!(who.me_status(app).await, 200);
        assert_eq!(who.me_status(app).await, 200);
        assert_eq!(who.me_status(app).await, 429);
    }
    let script = Device::new(None);
    assert_eq!(script.me_status_with_token(app, &token).await, 200);
    assert_eq!(script.me_status_with_token(app, &token).await, 200);
    assert_eq!(script.me_status_with_token(app, &token).await, 429);
}

#[tokio::test]
async fn waf_rules_refuse_probes_traversal_methods_agents_and_large_bodies() {
    let s = staffed().await;
    let app = &s.app;
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"waf": {
            "deny_paths": ["/old-*"],
            "deny_methods": ["TRACE"],
            "deny_user_agents": ["sqlmap"],
            "max_body_bytes": 1000,
            "block_path_traversal": true,
            "block_scanner_probes": true
        }}),
    )
    .await;
    assert_eq!(status, 200);
    let client = reqwest::Client::new();
    for (path, expected) in [
        ("/.env", 403),
        ("/.git/config", 403),
        ("/wp-login.php", 403),
        ("/old-page", 403),
        ("/healthz", 200),
    ] {
        let response = client.get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status().as_u16(), expected, "{path}");
    }
    // HTTP clients resolve dot segments before sending; scanners do not.
    for path in [
        "/static/%2e%2e/secret",
        "/static/..%5cwin.ini",
        "/static/../../etc/passwd",
    ] {
        assert_eq!(app.raw_get(path).await.0, 400, "{path}");
    }
    let trace = client
        .request(reqwest::Method::TRACE, app.url("/"))
        .send()
        .await
        .expect("sent");
    assert_eq!(trace.status(), 405);
    // The refusal still names what works there (RFC 9110).
    assert_eq!(trace.headers()["allow"], "GET, HEAD");
    let agent = client
        .get(app.url("/"))
        .header("User-Agent", "sqlmap/1.7 (https://sqlmap.org)")
        .send()
        .await
        .expect("sent");
    assert_eq!(agent.status(), 403);
    let large = client
        .post(app.url("/api/v1/client-errors"))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 2000])
        .send()
        .await
        .expect("sent");
    assert_eq!(large.status(), 413);
}

#[tokio::test]
async fn headers_and_csp_additions_reach_every_response() {
    let s = staffed().await;
    let app = &s.app;
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({
            "headers": [{"name": "X-Robots-Tag", "value": "noindex; nofollow"}, {"name": "Referrer-Policy", "value": "no-referrer"}],
            "csp": [{"directive": "img-src", "sources": ["https://cdn.example.com"]}, {"directive": "frame-ancestors", "sources": ["https://intranet.example.com"]}]
        }),
    )
    .await;
    assert_eq!(status, 200);
    let response = app.get("/").await;
    let headers = response.headers();
    assert_eq!(headers["x-robots-tag"], "noindex; nofollow");
    assert_eq!(
        headers["referrer-policy"], "no-referrer",
        "a policy header replaces the default"
    );
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("img-src 'self' data: https://cdn.example.com"),
        "{csp}"
    );
    assert!(
        csp.contains("frame-ancestors https://intranet.example.com"),
        "{csp}"
    );
    assert!(
        csp.contains("script-src 'self' 'nonce-"),
        "the nonce stays: {csp}"
    );
    let refused = app.get("/.env").await;
    assert_eq!(
        refused.headers()["x-robots-tag"],
        "noindex; nofollow",
        "refusals too"
    );
}

#[tokio::test]
async fn another_node_enforces_a_policy_saved_on_this_one_within_seconds() {
    let s = staffed().await;
    let app = &s.app;
    let (node, stop, _running) = app.another_node().await;
    assert!(node.get("/admin").await.status() != 403);
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"allowlists": [{"path_prefix": "/admin", "cidrs": ["192.0.2.0/24"]}]}),
    )
    .await;
    assert_eq!(status, 200);
    let enforced = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        (node.get("/admin").await.status() == 403).then_some(())
    })
    .await;
    assert!(enforced.is_some(), "the other node reloaded the policy");
    let _ = stop.send(());
}

#[tokio::test]
async fn the_admin_listener_is_the_only_way_in_when_set() {
    let app = spawn_app_with(|settings| {
        settings.server.admin_listen = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    app.create_user("owner@example.com", "correct horse battery staple", true)
        .await;
    let owner = Device::signed_in(&app, "owner@example.com", "correct horse battery staple").await;
    let admin = app.state.edge.admin_listen.expect("bound");
    let public = owner
        .client
        .get(app.url("/admin"))
        .send()
        .await
        .expect("sent");
    assert_eq!(public.status(), 404, "not served on the public listener");
    let api = owner
        .client
        .get(app.url("/api/v1/admin/dashboard"))
        .send()
        .await
        .expect("sent");
    assert_eq!(api.status(), 404);
    let private = owner
        .client
        .get(format!("http://{admin}/admin"))
        .send()
        .await
        .expect("sent");
    assert_eq!(private.status(), 200, "served on the admin listener");
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn metrics_can_be_kept_to_the_admin_listener() {
    let app = spawn_app_with(|settings| {
        settings.server.admin_listen = Some("127.0.0.1:0".parse().expect("address"));
        settings.telemetry.metrics_on_admin_listener = true;
    })
    .await;
    let admin = app.state.edge.admin_listen.expect("bound");
    assert_eq!(
        app.get("/metrics").await.status(),
        404,
        "not on the public listener"
    );
    let private = app
        .client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(private.status(), 200);
    assert!(
        private
            .text()
            .await
            .expect("text")
            .contains("conclave_build_info")
    );
}

fn test_certificate(dir: &std::path::Path) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=chat.example.com",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (make test installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (make test installs it): {e}"))
}

#[tokio::test]
async fn rendered_configs_are_accepted_by_caddy_nginx_and_nft() {
    let s = staffed().await;
    let app = &s.app;
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = test_certificate(dir.path());
    let (status, saved) = put_policy(app, &s.admin, rich_policy(&cert, &key)).await;
    assert_eq!(status, 200, "{saved}");
    let render = |format: &str| {
        let url = app.url(&format!("/api/v1/admin/edge/render?format={format}"));
        let client = s.viewer.client.clone();
        async move {
            // The policy keeps /api/v1/admin for the VPN range; this test is "on the VPN"
            // behind the trusted local proxy.
            let response = client
                .get(url)
                .header("X-Forwarded-For", "100.64.0.7")
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-edge-version"], "1");
            response.text().await.expect("text")
        }
    };
    let caddyfile = dir.path().join("Caddyfile");
    std::fs::write(&caddyfile, render("caddy").await).expect("write");
    let out = run(
        "caddy",
        &[
            "validate",
            "--adapter",
            "caddyfile",
            "--config",
            &caddyfile.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "caddy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nginx = render("nginx").await;
    assert!(nginx.contains("add_header X-Robots-Tag \"noindex; nofollow\" always;"));
    let include = dir.path().join("conclave.conf");
    std::fs::write(&include, &nginx).expect("write");
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  include {1};\n}}\n",
            dir.path().display(),
            include.display()
        ),
    )
    .expect("write");
    let out = run(
        "nginx",
        &[
            "-t",
            "-p",
            &dir.path().to_string_lossy(),
            "-c",
            &main.to_string_lossy(),
        ],
    );
    assert!(
        out.status.success(),
        "nginx: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rules = dir.path().join("conclave.nft");
    std::fs::write(&rules, render("nftables").await).expect("write");
    let out = run("nft", &["-c", "-f", &rules.to_string_lossy()]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CLI prints exactly what the API and the admin preview show.
    let cli = app
        .command()
        .args(["edge", "render", "--format", "nginx"])
        .output()
        .expect("conclave runs");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cli.stdout), nginx);
    let bad = app
        .command()
        .args(["edge", "render", "--format", "apache"])
        .output()
        .expect("conclave runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("caddy, nginx, nftables"));
    let page = s
        .viewer
        .client
        .get(app.url("/admin/edge"))
        .header("X-Forwarded-For", "10.8.0.9")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("page");
    let start = page
        .find("data-format=\"nginx\"")
        .and_then(|at| page[at..].find("<code>").map(|c| at + c + "<code>".len()))
        .expect("an nginx preview");
    let end = start + page[start..].find("</code>").expect("its end");
    let shown = page[start..end]
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2F;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    assert_eq!(shown, nginx, "the preview is the exported text");
}

#[tokio::test]
async fn the_edge_agent_applies_checks_rolls_back_and_reports() {
    let s = staffed().await;
    let app = &s.app;
    let created = s
        .operator
        .post(
            app,
            "/api/v1/me/tokens",
            json!({"name": "edge agent", "scopes": ["read", "write"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let token = created.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write");
    let out = dir.path().join("conclave.conf");
    let agent = |check: &str| {
        app.command()
            .args([
                "edge",
                "agent",
                "--server",
                &app.address,
                "--format",
                "nginx",
                "--name",
                "proxy-a",
                "--once",
            ])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--out")
            .arg(&out)
            .args(["--check", check, "--reload", "true"])
            .output()
            .expect("conclave runs")
    };
    let first = agent("true");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let applied = std::fs::read_to_string(&out).expect("written");
    assert!(applied.contains("version 0"));
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"headers": [{"name": "X-New", "value": "1"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let refused = agent("echo 'config test failed' >&2; false");
    assert!(
        !refused.status.success(),
        "a failed check is an error with --once"
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("still there"),
        applied,
        "the previous file is back"
    );
    let agents = s.viewer.get_json(app, "/api/v1/admin/edge/agents").await;
    let report = &agents[0];
    assert_eq!(report["name"], "proxy-a");
    assert_eq!(report["status"], "check_failed");
    assert_eq!(report["applied_version"], 0);
    assert!(
        report["error"]
            .as_str()
            .unwrap_or_default()
            .contains("config test failed")
    );
    let second = agent("true");
    assert!(second.status.success());
    assert!(
        std::fs::read_to_string(&out)
            .expect("written")
            .contains("X-New")
    );
    assert!(
        dir.path().join("conclave.conf.previous").exists(),
        "the replaced file is kept"
    );
    let agents = s.viewer.get_json(app, "/api/v1/admin/edge/agents").await;
    assert_eq!(agents[0]["status"], "applied");
    assert_eq!(agents[0]["applied_version"], 1);
    let page = s.viewer.page(app, "/admin/edge").await;
    assert!(page.contains("data-agent=\"proxy-a\""));
    // A token without a staff role gets nowhere.
    std::fs::write(&token_file, "cnv_not_a_token").expect("write");
    let denied = agent("true");
    assert!(!denied.status.success());
}

#[tokio::test]
async fn a_policy_that_locks_everyone_out_is_undone_from_the_command_line() {
    let s = staffed().await;
    let app = &s.app;
    let (status, _) = put_policy(
        app,
        &s.admin,
        json!({"allowlists": [{"path_prefix": "/", "cidrs": ["192.0.2.0/24"]}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.get("/api/v1/admin/edge/policy").await.status(),
        403,
        "locked out"
    );
    let missing = app
        .command()
        .args(["edge", "rollback", "--to", "42"])
        .output()
        .expect("conclave runs");
    assert_eq!(missing.status.code(), Some(65), "no such version");
    let undone = app
        .command()
        .args(["edge", "rollback", "--to", "0"])
        .output()
        .expect("conclave runs");
    assert!(
        undone.status.success(),
        "{}",
        String::from_utf8_lossy(&undone.stderr)
    );
    assert!(String::from_utf8_lossy(&undone.stdout).contains("as version 2"));
    let back = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        (app.get("/healthz").await.status() == 200).then_some(())
    })
    .await;
    assert!(back.is_some(), "the running server picked up the rollback");
    let audit = s
        .viewer
        .get_json(app, "/api/v1/admin/audit?action=edge.policy_rolled_back")
        .await;
    assert_eq!(
        audit["events"][0]["actor_user_id"],
        Value::Null,
        "done from the host"
    );
}
