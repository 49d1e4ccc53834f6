//! Prometheus metrics: the recorder, the HTTP middleware that counts requests by route
//! template and status, and the `/metrics` endpoint.
//!
//! The `metrics` crate has one process-wide recorder by design (its macros need no handle), so
//! the Prometheus recorder is installed once and shared by every `Application` in the process;
//! several test apps in one process therefore share counters.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use secrecy::ExposeSecret as _;
use subtle::ConstantTimeEq as _;

use crate::error::AppError;
use crate::web::AppState;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use and returns the shared handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    // Losing the race to another thread is fine: use the winner's handle.
    if metrics::set_global_recorder(recorder).is_err() {
        return HANDLE
            .get()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("another metrics recorder is installed"));
    }
    let handle = HANDLE.get_or_init(|| handle).clone();
    describe();
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route template and status."
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by method, route template and status."
    );
    metrics::describe_gauge!("db_pool_connections", "Open database connections.");
    for (name, help) in [
        ("tenant_members", "Members of a workspace."),
        ("tenant_rooms", "Rooms of a workspace (archived ones too)."),
        ("tenant_devices", "Registered devices of a workspace."),
        (
            "tenant_devices_seen_recently",
            "Devices of a workspace heard from in the last 15 minutes.",
        ),
        (
            "tenant_assistant_requests_today",
            "Assistant requests a workspace made today (UTC), as metered for its quota.",
        ),
        (
            "tenant_assistant_tokens_today",
            "Assistant tokens a workspace used today (UTC), as metered for its quota.",
        ),
        ("tenant_credits", "A workspace's credit balance."),
    ] {
        metrics::describe_gauge!(name, help);
    }
    metrics::describe_gauge!("jobs_in_state", "Jobs queued, running and dead, by state.");
    metrics::describe_gauge!(
        "jobs_oldest_due_seconds",
        metrics::Unit::Seconds,
        "How long the oldest due job has been waiting to be claimed."
    );
    metrics::describe_gauge!(
        "data_dir_available_bytes",
        metrics::Unit::Bytes,
        "Free space on the data directory's filesystem (for unprivileged users)."
    );
    metrics::describe_gauge!(
        "data_dir_size_bytes",
        metrics::Unit::Bytes,
        "Size of the data directory's filesystem."
    );
    metrics::describe_gauge!(
        "backup_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "When the newest readable backup in backup.dir was taken (Unix time)."
    );
    metrics::describe_counter!("backups_total", "Scheduled backups by outcome.");
    metrics::describe_gauge!("db_pool_idle_connections", "Idle database connections.");
    metrics::describe_gauge!(
        "db_pool_max_connections",
        "Configured maximum database connections."
    );
    metrics::describe_gauge!(
        "conclave_build_info",
        "Always 1; labels carry the version and database backend."
    );
    metrics::describe_gauge!(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch."
    );
    metrics::describe_counter!("jobs_started_total", "Job attempts started, by kind.");
    metrics::describe_gauge!(
        "ws_connections",
        "Open WebSocket connections on this node, by kind (browser, token)."
    );
    metrics::describe_counter!(
        "ws_frames_received_total",
        "Text frames received from WebSocket clients."
    );
    metrics::describe_counter!(
        "ws_frames_sent_total",
        "Text frames sent to WebSocket clients."
    );
    metrics::describe_counter!(
        "ws_closes_total",
        "WebSocket connections closed, by close code (docs/protocol.md; 1006: no close frame)."
    );
    metrics::describe_counter!(
        "ws_slow_consumers_total",
        "WebSocket connections closed because their event queue was full (4009)."
    );
    metrics::describe_counter!(
        "ws_refusals_total",
        "WebSocket handshakes refused before the upgrade, by reason."
    );
    metrics::describe_counter!(
        "jobs_finished_total",
        "Job attempts finished, by kind and outcome (succeeded, retried, dead)."
    );
    metrics::describe_histogram!(
        "job_duration_seconds",
        metrics::Unit::Seconds,
        "Job run time by kind."
    );
    metrics::describe_counter!(
        "jobs_claim_errors_total",
        "Failed attempts to claim jobs from the database."
    );
}

/// Records every request under its route template (`/rooms/{id}`, never the raw path, so the
/// label set stays bounded); requests that matched no route are `unmatched`.
pub async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let response = next.call(req).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    Ok(response)
}

/// HTTP allows any token as a method; only the standard ones become label values, so a client
/// cannot create unbounded series.
fn method_label(method: &actix_web::http::Method) -> String {
    use actix_web::http::Method;
    let known = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if known.contains(method) {
        method.as_str().to_owned()
    } else {
        "other".to_owned()
    }
}

/// Jobs waiting, running and dead (`jobs_in_state{state}`), and how long the oldest job that
/// is due has been waiting (`jobs_oldest_due_seconds`): the queue's backlog, read at scrape
/// time (one grouped query on the `jobs` state index).
async fn publish_jobs(state: &AppState) {
    use crate::schema::jobs;
    use diesel::prelude::*;
    let counted = state
        .db
        .run(|conn| {
            let now = chrono::Utc::now().naive_utc();
            let counts: Vec<(String, i64)> = jobs::table
                .filter(jobs::state.eq_any(["queued", "running", "dead"]))
                .group_by(jobs::state)
                .select((jobs::state, diesel::dsl::count_star()))
                .load(conn)?;
            let oldest: Option<chrono::NaiveDateTime> = jobs::table
                .filter(jobs::state.eq("queued"))
                .filter(jobs::run_at.le(now))
                .select(diesel::dsl::min(jobs::run_at))
                .first(conn)?;
            Ok::<_, crate::db::DbError>((counts, oldest.map(|at| (now - at).num_milliseconds())))
        })
        .await;
    match counted {
        Ok((counts, oldest_ms)) => {
            for wanted in ["queued", "running", "dead"] {
                let n = counts
                    .iter()
                    .find(|(s, _)| s == wanted)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("jobs_in_state", "state" => wanted).set(n as f64);
            }
            metrics::gauge!("jobs_oldest_due_seconds")
                .set(oldest_ms.map_or(0.0, |ms| ms.max(0) as f64 / 1_000.0));
        }
        Err(e) => tracing::warn!(error = %e, "cannot count jobs for /metrics"),
    }
}

/// Billing orders by state (`billing_orders{state}`) and devices by update state
/// (`ota_assignments{state}`), read at scrape time: what the billing and devices dashboards
/// show as levels rather than rates.
async fn publish_states(state: &AppState) {
    use crate::schema::{billing_orders, ota_assignments};
    use diesel::prelude::*;
    let counted = state
        .db
        .run(|conn| {
            let orders: Vec<(String, i64)> = billing_orders::table
                .group_by(billing_orders::state)
                .select((billing_orders::state, diesel::dsl::count_star()))
                .load(conn)?;
            let updates: Vec<(String, i64)> = ota_assignments::table
                .group_by(ota_assignments::state)
                .select((ota_assignments::state, diesel::dsl::count_star()))
                .load(conn)?;
            Ok::<_, crate::db::DbError>((orders, updates))
        })
        .await;
    match counted {
        Ok((orders, updates)) => {
            for (state, n) in orders {
                metrics::gauge!("billing_orders", "state" => state).set(n as f64);
            }
            for (state, n) in updates {
                metrics::gauge!("ota_assignments", "state" => state).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count orders and updates for /metrics"),
    }
}

/// One workspace's figures for `/metrics`.
#[derive(Default)]
struct TenantFigures {
    slug: String,
    members: i64,
    rooms: i64,
    devices: i64,
    devices_seen: i64,
    requests_today: i64,
    tokens_today: i64,
    credits: i64,
}

/// Per-workspace levels (`tenant_*{tenant}`, labelled with the slug) for the per-tenant
/// dashboard, read at scrape time with one grouped query per table, for at most
/// `telemetry.tenant_metrics_limit` workspaces (the oldest), so the series stay bounded.
async fn publish_tenants(state: &AppState) {
    use crate::schema::{credit_entries, devices, memberships, rooms, tenants, usage_daily};
    use diesel::prelude::*;
    let limit = state.settings.telemetry.tenant_metrics_limit;
    if limit == 0 {
        return;
    }
    let read = state
        .db
        .run(move |conn| {
            let listed: Vec<(i64, String)> = tenants::table
                .order(tenants::id)
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select((tenants::id, tenants::slug))
                .load(conn)?;
            let ids: Vec<i64> = listed.iter().map(|(id, _)| *id).collect();
            let count = |rows: Vec<(i64, i64)>| -> std::collections::HashMap<i64, i64> {
                rows.into_iter().collect()
            };
            let members = count(
                memberships::table
                    .filter(memberships::tenant_id.eq_any(&ids))
                    .group_by(memberships::tenant_id)
                    .select((memberships::tenant_id, diesel::dsl::count_star()))
                    .load(conn)?,
            );
            let rooms = count(
                rooms::table
                    .filter(rooms::tenant_id.eq_any(&ids))
                    .group_by(rooms::tenant_id)
                    .select((rooms::tenant_id, diesel::dsl::count_star()))
                    .load(conn)?,
            );
            let fleet = count(
                devices::table
                    .filter(devices::tenant_id.eq_any(&ids))
                    .group_by(devices::tenant_id)
                    .select((devices::tenant_id, diesel::dsl::count_star()))
                    .load(conn)?,
            );
            let recently = chrono::Utc::now().naive_utc() - chrono::TimeDelta::minutes(15);
            let seen = count(
                devices::table
                    .filter(devices::tenant_id.eq_any(&ids))
                    .filter(devices::last_seen_at.ge(recently))
                    .group_by(devices::tenant_id)
                    .select((devices::tenant_id, diesel::dsl::count_star()))
                    .load(conn)?,
            );
            let today = chrono::Utc::now().date_naive().to_string();
            let usage: std::collections::HashMap<i64, (i64, i64)> = usage_daily::table
                .filter(usage_daily::tenant_id.eq_any(&ids))
                .filter(usage_daily::day.eq(today))
                .select((
                    usage_daily::tenant_id,
                    usage_daily::requests,
                    usage_daily::tokens,
                ))
                .load::<(i64, i64, i64)>(conn)?
                .into_iter()
                .map(|(tenant, requests, tokens)| (tenant, (requests, tokens)))
                .collect();
            // The balance is the newest ledger entry's.
            let newest: Vec<Option<i64>> = credit_entries::table
                .filter(credit_entries::tenant_id.eq_any(&ids))
                .group_by(credit_entries::tenant_id)
                .select(diesel::dsl::max(credit_entries::id))
                .load(conn)?;
            let credits = count(
                credit_entries::table
                    .filter(credit_entries::id.eq_any(newest.into_iter().flatten()))
                    .select((credit_entries::tenant_id, credit_entries::balance_after))
                    .load(conn)?,
            );
            let figures: Vec<TenantFigures> = listed
                .into_iter()
                .map(|(id, slug)| {
                    let (requests_today, tokens_today) = usage.get(&id).copied().unwrap_or((0, 0));
                    TenantFigures {
                        slug,
                        members: members.get(&id).copied().unwrap_or(0),
                        rooms: rooms.get(&id).copied().unwrap_or(0),
                        devices: fleet.get(&id).copied().unwrap_or(0),
                        devices_seen: seen.get(&id).copied().unwrap_or(0),
                        requests_today,
                        tokens_today,
                        credits: credits.get(&id).copied().unwrap_or(0),
                    }
                })
                .collect();
            Ok::<_, crate::db::DbError>(figures)
        })
        .await;
    match read {
        Ok(figures) => {
            for t in figures {
                let tenant = t.slug;
                for (name, value) in [
                    ("tenant_members", t.members),
                    ("tenant_rooms", t.rooms),
                    ("tenant_devices", t.devices),
                    ("tenant_devices_seen_recently", t.devices_seen),
                    ("tenant_assistant_requests_today", t.requests_today),
                    ("tenant_assistant_tokens_today", t.tokens_today),
                    ("tenant_credits", t.credits),
                ] {
                    metrics::gauge!(name, "tenant" => tenant.clone()).set(value as f64);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the workspaces' figures for /metrics"),
    }
}

/// Free and total bytes of the data directory's filesystem (SQLite, backups, keys).
fn publish_disk(data_dir: &std::path::Path) {
    if let Ok(stats) = rustix::fs::statvfs(data_dir) {
        let unit = stats.f_frsize as f64;
        metrics::gauge!("data_dir_available_bytes").set(stats.f_bavail as f64 * unit);
        metrics::gauge!("data_dir_size_bytes").set(stats.f_blocks as f64 * unit);
    }
}

/// `GET /metrics`: Prometheus text exposition.
/// When `telemetry.metrics_token` is set, scrapers must send `Authorization: Bearer <token>`.
pub async fn render(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, AppError> {
    if let Some(token) = &state.settings.telemetry.metrics_token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
            return Err(AppError::Unauthenticated(
                "Metrics need the bearer token configured in telemetry.metrics_token.".to_owned(),
            ));
        }
    }
    publish_jobs(&state).await;
    publish_states(&state).await;
    publish_tenants(&state).await;
    publish_disk(&state.settings.data_dir);
    let pool = state.db.pool_stats();
    metrics::gauge!("db_pool_connections").set(f64::from(pool.connections));
    metrics::gauge!("db_pool_idle_connections").set(f64::from(pool.idle));
    metrics::gauge!("db_pool_max_connections").set(f64::from(pool.max));
    state.metrics.run_upkeep();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}
