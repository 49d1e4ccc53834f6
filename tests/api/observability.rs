//! Alerts, dashboards and routing in `config/`: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), the Prometheus and Alertmanager examples pass
//! `promtool check config` and `amtool check-config`, every dashboard is Grafana JSON whose
//! queries are valid PromQL, and every metric they name is one the code emits (a renamed
//! metric fails here, not silently on a dashboard). The gauges behind the alerts are on
//! `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn config(path: &str) -> PathBuf {
    Path::new(ROOT).join("config").join(path)
}

fn tool(name: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name} is installed (scripts/ensure-tools.sh): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{name} {args:?}: {text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = config("prometheus");
    let checked = tool("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    let tested = tool("promtool", &["test", "rules", "alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    tool("promtool", &["check", "config", "prometheus.yml"], &dir);
    tool("amtool", &["check-config", "alertmanager.yml"], &dir);
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts");
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).expect("tests");
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "{line} has no test in alerts.test.yml"
        );
    }
}

fn dashboards() -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = std::fs::read_dir(config("grafana/dashboards"))
        .expect("dashboards")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            (
                path.file_stem()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned(),
                json,
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn expressions(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect()
}

/// Metric names in PromQL: an identifier right before a label selector.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    for (at, _) in expr.match_indices('{') {
        let mut start = at;
        while start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            start -= 1;
        }
        if start < at {
            let name = &expr[start..at];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
    }
    names
}

fn source_text() -> String {
    let mut text = String::new();
    let mut stack = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path).expect("read"));
            }
        }
    }
    text
}

#[test]
fn the_dashboards_are_grafana_json_with_valid_queries_on_metrics_that_exist() {
    let found = dashboards();
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "assistant",
            "billing",
            "devices",
            "overview",
            "realtime",
            "tenants"
        ]
    );
    let mut all = Vec::new();
    let mut uids = BTreeSet::new();
    for (name, dashboard) in &found {
        assert!(
            dashboard["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Conclave"))
        );
        assert!(
            uids.insert(dashboard["uid"].as_str().expect("uid").to_owned()),
            "{name}: unique uid"
        );
        assert!(
            dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{name}"
        );
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 3, "{name} has its panels");
        for panel in panels {
            assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
            assert!(
                panel["gridPos"]["w"]
                    .as_u64()
                    .is_some_and(|w| (1..=24).contains(&w))
            );
            assert!(panel["type"].as_str().is_some());
        }
        all.extend(expressions(dashboard));
    }
    // PromQL syntax, checked by promtool as recording rules.
    let dir = tempfile::tempdir().expect("dir");
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, expr) in all.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query:{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quoted")
        ));
    }
    std::fs::write(dir.path().join("queries.yml"), rules).expect("write");
    tool("promtool", &["check", "rules", "queries.yml"], dir.path());

    // Every metric a dashboard or an alert names is emitted somewhere in src/.
    let alerts = std::fs::read_to_string(config("prometheus/alerts.yml")).expect("alerts");
    let mut referenced: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    referenced.extend(metric_names(&alerts));
    referenced.remove("up");
    let source = source_text();
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|name| !source.contains(&format!("\"{name}\"")))
        .collect();
    assert!(missing.is_empty(), "metrics no code emits: {missing:?}");
    assert!(referenced.len() > 30, "{referenced:?}");
}

#[tokio::test]
async fn the_gauges_behind_the_alerts_are_on_metrics() {
    let app = spawn_app().await;
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    for wanted in [
        "jobs_in_state{state=\"queued\"}",
        "jobs_in_state{state=\"dead\"}",
        "jobs_oldest_due_seconds",
        "data_dir_available_bytes",
        "data_dir_size_bytes",
        "conclave_build_info",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(wanted)),
            "{wanted} on /metrics:\n{metrics}"
        );
    }
    // Sign-ins by outcome.
    app.create_user("ada@example.com", "correct horse battery staple", true)
        .await;
    for password in ["wrong wrong wrong wrong", "correct horse battery staple"] {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .json(&serde_json::json!({ "email": "ada@example.com", "password": password }))
            .send()
            .await
            .expect("sent");
    }
    let after = app.get("/metrics").await.text().await.expect("metrics");
    for wanted in [
        "logins_total{method=\"password\",outcome=\"invalid_credentials\"} 1",
        "logins_total{method=\"password\",outcome=\"succeeded\"} 1",
        // The per-workspace dashboard's levels, by the workspace's slug.
        "tenant_members{tenant=\"default\"} 1",
        "tenant_rooms{tenant=\"default\"} 0",
        "tenant_devices{tenant=\"default\"} 0",
        "tenant_assistant_tokens_today{tenant=\"default\"} 0",
    ] {
        assert!(after.lines().any(|l| l == wanted), "{wanted}:\n{after}");
    }
    let free: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("data_dir_available_bytes "))
        .expect("free space")
        .parse()
        .expect("a number");
    assert!(free > 0.0);
}

#[test]
fn outgoing_requests_carry_the_current_trace_as_traceparent() {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    // Not exporting traces: nothing is added.
    assert!(conclave::telemetry::propagation_headers().is_empty());

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("an assistant request");
        let _entered = span.enter();
        let headers = conclave::telemetry::propagation_headers();
        let traceparent = headers["traceparent"].to_str().expect("ASCII");
        let trace_id = span.context().span().span_context().trace_id().to_string();
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{traceparent} continues {trace_id}"
        );
    });
}
