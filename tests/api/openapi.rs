//! The OpenAPI document at `/api/openapi.json` documents every `/api/v1` route the code
//! registers, with the right methods, and nothing that does not exist.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::spawn_app;

/// `(method, path)` of every `/api/v1` and `/v1` route registered in `src/` (`get("/api/v1/…", …)`,
/// `resource("/api/v1/…").post(…)` and the admin area's `action(cfg, "/api/v1/…", …)` (a POST)
/// calls).
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (kind, marker, prefix) in [
                ("get", "get(\"/api/v1", "/api/v1"),
                ("resource", "resource(\"/api/v1", "/api/v1"),
                ("action", "action(cfg, \"/api/v1", "/api/v1"),
                // The OpenAI-compatible API.
                ("get", "get(\"/v1/", "/v1/"),
                ("resource", "resource(\"/v1/", "/v1/"),
            ] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len() - prefix.len()..];
                    let route = rest.split('"').next().unwrap().to_owned();
                    // The methods chained onto this resource, up to the next one.
                    let chain_end = [rest.find(".service("), rest.find(';')]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(rest.len());
                    let chain = &rest[..chain_end];
                    if kind == "get" {
                        routes.insert(("get".to_owned(), route.clone()));
                    }
                    if kind == "action" {
                        routes.insert(("post".to_owned(), route.clone()));
                        continue;
                    }
                    for method in ["get", "post", "put", "patch", "delete"] {
                        if chain.contains(&format!(".{method}(")) {
                            routes.insert((method.to_owned(), route.clone()));
                        }
                    }
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_api_route_is_documented_and_every_documented_route_exists() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(
        doc["components"]["schemas"]["Problem"].is_object(),
        "errors are documented as problem documents"
    );

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    // Path parameters are exactly the path's placeholders (a query struct without
    // `parameter_in = Query` would document its fields as path parameters).
    for (path, item) in doc["paths"].as_object().unwrap() {
        let placeholders: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let in_path: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(
                in_path, placeholders,
                "{method} {path}: path parameters and placeholders differ"
            );
        }
    }

    // Every operation names the errors the shared layers may answer, as problem documents.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for status in ["401", "403", "429", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} documents {status}"
                );
            }
        }
    }

    let registered = registered_routes();
    assert!(
        registered.len() >= 30,
        "the scan finds the routes: {registered:?}"
    );
    let missing: Vec<_> = registered.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI document: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "documented routes that do not exist: {stale:?}"
    );

    // /docs shows every documented operation, without signing in.
    let page = app.get("/docs").await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    for (method, path) in &documented {
        let marker = format!(
            "data-operation=\"{} {}\"",
            method.to_uppercase(),
            // Tera escapes `/` in attributes.
            path.replace('/', "&#x2F;")
        );
        assert!(page.contains(&marker), "/docs shows {method} {path}");
    }

    // Request bodies are described, e.g. the sign-up's captcha field.
    let signup = &doc["components"]["schemas"]["SignupRequest"];
    assert!(signup["properties"]["captcha"].is_object(), "{signup}");
    let login = &doc["paths"]["/api/v1/auth/login"]["post"];
    assert!(login["responses"]["401"].is_object(), "{login}");
}
