#!/usr/bin/env python3
# Writes the dashboards in dashboards/ (committed): edit the panels here, run
# `python3 config/grafana/generate.py` from the repository root's config/grafana, commit both.
# tests/api/observability.rs checks the JSON, the PromQL, and that every metric exists.
import json, os
DS = {"type": "prometheus", "uid": "${datasource}"}
def panel(pid, title, exprs, x, y, w=12, h=8, kind="timeseries", unit=None, desc=None):
    p = {"id": pid, "type": kind, "title": title, "datasource": DS,
         "gridPos": {"x": x, "y": y, "w": w, "h": h},
         "targets": [{"refId": chr(65+i), "expr": e, "legendFormat": l, "datasource": DS} for i, (e, l) in enumerate(exprs)],
         "fieldConfig": {"defaults": {"unit": unit or "short"}, "overrides": []},
         "options": {}}
    if desc: p["description"] = desc
    return p
def dashboard(uid, title, rows, desc, extra_vars=()):
    panels = []
    pid = 1
    y = 0
    for row in rows:
        x = 0
        w = 24 // len(row)
        for (title_, exprs, unit, kind) in row:
            panels.append(panel(pid, title_, exprs, x, y, w=w, kind=kind, unit=unit))
            pid += 1
            x += w
        y += 8
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["conclave"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus", "current": {}},
            {"name": "instance", "type": "query", "datasource": DS, "query": "label_values(conclave_build_info, instance)",
             "refresh": 2, "includeAll": True, "multi": True, "current": {}, "label": "Node"},
        ] + list(extra_vars)},
        "annotations": {"list": []},
        "panels": panels,
    }
I = 'instance=~"$instance"'
T = 'tenant=~"$tenant"'
dashboards = {
 "overview": ("conclave-overview", "Conclave · overview", "Requests, errors, latency, jobs, database, disk and backups.", [
   [("Requests per second by status", [(f'sum by (status) (rate(http_requests_total{{{I}}}[5m]))', "{{status}}")], "reqps", "timeseries"),
    ("Share of 5xx answers", [(f'sum(rate(http_requests_total{{{I},status=~"5.."}}[5m])) / sum(rate(http_requests_total{{{I}}}[5m]))', "5xx")], "percentunit", "timeseries")],
   [("Latency p50 / p95 / p99", [(f'histogram_quantile({q}, sum by (le) (rate(http_request_duration_seconds_bucket{{{I}}}[5m])))', f"p{int(q*100)}") for q in (0.5, 0.95, 0.99)], "s", "timeseries"),
    ("Slowest routes (p99)", [(f'topk(5, histogram_quantile(0.99, sum by (route, le) (rate(http_request_duration_seconds_bucket{{{I}}}[5m]))))', "{{route}}")], "s", "timeseries")],
   [("Sign-ins by outcome", [(f'sum by (outcome) (rate(logins_total{{{I}}}[5m]))', "{{outcome}}")], "ops", "timeseries"),
    ("Two-factor events", [(f'sum by (event) (rate(two_factor_events_total{{{I}}}[5m]))', "{{event}}")], "ops", "timeseries"),
    ("Account lockouts", [(f'sum(increase(account_lockouts_total{{{I}}}[1h]))', "per hour")], "short", "timeseries")],
   [("Jobs by state", [(f'max by (state) (jobs_in_state{{{I}}})', "{{state}}")], "short", "timeseries"),
    ("Oldest due job", [(f'max(jobs_oldest_due_seconds{{{I}}})', "waiting")], "s", "stat"),
    ("Jobs finished by outcome", [(f'sum by (outcome) (rate(jobs_finished_total{{{I}}}[5m]))', "{{outcome}}")], "ops", "timeseries")],
   [("Database connections", [(f'sum(db_pool_connections{{{I}}})', "open"), (f'sum(db_pool_idle_connections{{{I}}})', "idle"), (f'sum(db_pool_max_connections{{{I}}})', "max")], "short", "timeseries"),
    ("Data disk free", [(f'min(data_dir_available_bytes{{{I}}} / data_dir_size_bytes{{{I}}})', "free")], "percentunit", "stat"),
    ("Newest backup age", [('time() - max(backup_last_success_timestamp_seconds)', "age")], "s", "stat"),
    ("Versions", [(f'conclave_build_info{{{I}}}', "{{instance}} {{version}} {{database}}")], "short", "table")],
 ]),
 "realtime": ("conclave-realtime", "Conclave · realtime", "WebSocket connections, frames, closes and slow consumers.", [
   [("Connections by kind", [(f'sum by (kind) (ws_connections{{{I}}})', "{{kind}}")], "short", "timeseries"),
    ("Frames per second", [(f'sum(rate(ws_frames_received_total{{{I}}}[5m]))', "in"), (f'sum(rate(ws_frames_sent_total{{{I}}}[5m]))', "out")], "ops", "timeseries")],
   [("Closes by code", [(f'sum by (code) (rate(ws_closes_total{{{I}}}[5m]))', "{{code}}")], "ops", "timeseries"),
    ("Slow consumers disconnected", [(f'sum(rate(ws_slow_consumers_total{{{I}}}[5m]))', "slow")], "ops", "timeseries"),
    ("Refused upgrades", [(f'sum(rate(ws_refusals_total{{{I}}}[5m]))', "refused")], "ops", "timeseries")],
 ]),
 "assistant": ("conclave-assistant", "Conclave · assistant", "Requests, tokens, provider health and time to first token.", [
   [("Requests by outcome", [(f'sum by (outcome) (rate(assistant_requests_total{{{I}}}[5m]))', "{{outcome}}")], "reqps", "timeseries"),
    ("Tokens per second", [(f'sum by (kind) (rate(assistant_tokens_total{{{I}}}[5m]))', "{{kind}}")], "short", "timeseries")],
   [("Time to first token p50 / p95", [(f'histogram_quantile({q}, sum by (le) (rate(assistant_first_token_seconds_bucket{{{I}}}[5m])))', f"p{int(q*100)}") for q in (0.5, 0.95)], "s", "timeseries"),
    ("Provider circuit (0 closed, 1 half-open, 2 open)", [(f'max by (provider) (assistant_provider_circuit{{{I}}})', "{{provider}}")], "short", "timeseries"),
    ("Provider failures", [(f'sum(rate(assistant_provider_failures_total{{{I}}}[5m]))', "failures")], "ops", "timeseries")],
 ]),
 "devices": ("conclave-devices", "Conclave · devices", "Devices online, telemetry, commands and firmware updates.", [
   [("Devices online", [(f'sum(device_connections{{{I}}})', "online")], "short", "stat"),
    ("Telemetry batches by outcome", [(f'sum by (outcome) (rate(device_telemetry_batches_total{{{I}}}[5m]))', "{{outcome}}")], "ops", "timeseries"),
    ("Readings dropped offline", [(f'sum(increase(device_readings_dropped_total{{{I}}}[1h]))', "per hour")], "short", "timeseries")],
   [("Telemetry refused", [(f'sum by (reason) (rate(device_telemetry_refused_total{{{I}}}[5m]))', "{{reason}}")], "ops", "timeseries"),
    ("Command results", [(f'sum by (status) (rate(device_command_results_total{{{I}}}[5m]))', "{{status}}")], "ops", "timeseries"),
    ("Connections replaced", [(f'sum(rate(device_connections_replaced_total{{{I}}}[5m]))', "replaced")], "ops", "timeseries")],
   [("Devices by update state", [(f'max by (state) (ota_assignments{{{I}}})', "{{state}}")], "short", "timeseries"),
    ("Update reports by state", [(f'sum by (state) (increase(ota_status_total{{{I}}}[1h]))', "{{state}}")], "short", "timeseries"),
    ("Rollouts halted", [(f'sum(increase(ota_rollouts_halted_total{{{I}}}[1d]))', "halted")], "short", "stat"),
    ("Firmware downloads", [(f'sum(rate(firmware_downloads_total{{{I}}}[5m]))', "downloads")], "ops", "timeseries")],
 ]),
 "billing": ("conclave-billing", "Conclave · billing", "Payment webhooks, completed orders and quota refusals.", [
   [("Orders by state", [(f'max by (state) (billing_orders{{{I}}})', "{{state}}")], "short", "timeseries")],
   [("Webhooks by outcome", [(f'sum by (outcome) (rate(billing_webhooks_total{{{I}}}[5m]))', "{{outcome}}")], "ops", "timeseries"),
    ("Orders completed", [(f'sum(increase(billing_orders_completed_total{{{I}}}[1h]))', "per hour")], "short", "timeseries"),
    ("Quota refusals (429)", [(f'sum(rate(billing_quota_refusals_total{{{I}}}[5m]))', "refused")], "ops", "timeseries")],
 ]),
 # Per workspace: levels every node reads from the shared database (so `max`, not `sum`),
 # for the workspaces telemetry.tenant_metrics_limit admits.
 "tenants": ("conclave-tenants", "Conclave · workspaces", "Per workspace: members, rooms, devices, assistant use against the quota, credits.", [
   [("Members", [(f'max by (tenant) (tenant_members{{{I},{T}}})', "{{tenant}}")], "short", "timeseries"),
    ("Rooms", [(f'max by (tenant) (tenant_rooms{{{I},{T}}})', "{{tenant}}")], "short", "timeseries")],
   [("Assistant requests today", [(f'max by (tenant) (tenant_assistant_requests_today{{{I},{T}}})', "{{tenant}}")], "short", "timeseries"),
    ("Assistant tokens today", [(f'max by (tenant) (tenant_assistant_tokens_today{{{I},{T}}})', "{{tenant}}")], "short", "timeseries")],
   [("Devices heard from (15 min) / registered", [(f'max by (tenant) (tenant_devices_seen_recently{{{I},{T}}})', "{{tenant}} seen"), (f'max by (tenant) (tenant_devices{{{I},{T}}})', "{{tenant}} registered")], "short", "timeseries"),
    ("Credit balance", [(f'max by (tenant) (tenant_credits{{{I},{T}}})', "{{tenant}}")], "short", "timeseries")],
   [("Busiest workspaces (tokens today)", [(f'topk(10, max by (tenant) (tenant_assistant_tokens_today{{{I}}}))', "{{tenant}}")], "short", "table")],
 ]),
}
TENANT_VAR = {"name": "tenant", "type": "query", "datasource": DS, "query": "label_values(tenant_members, tenant)",
              "refresh": 2, "includeAll": True, "multi": True, "current": {}, "label": "Workspace"}
os.makedirs("dashboards", exist_ok=True)
for name, (uid, title, desc, rows) in dashboards.items():
    with open(f"dashboards/{name}.json", "w") as f:
        extra = [TENANT_VAR] if name == "tenants" else []
        json.dump(dashboard(uid, title, rows, desc, extra), f, indent=2)
        f.write("\n")
print("ok")
