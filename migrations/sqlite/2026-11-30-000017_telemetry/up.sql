-- Device readings, one row per metric per batch; the batch's seq is kept with them.
CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    at TIMESTAMP NOT NULL,
    value DOUBLE NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX telemetry_device_metric_at ON telemetry (device_id, metric, at);
