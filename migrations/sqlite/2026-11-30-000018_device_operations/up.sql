-- Commands sent to devices (from the API or a room's /cmd) and what the devices answered.
CREATE TABLE device_commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- A JSON array of strings.
    args TEXT NOT NULL,
    -- pending, sent, accepted, succeeded, failed, unknown, expired
    status TEXT NOT NULL,
    output TEXT,
    -- Set when asked in a room: the answer goes there, as a reply to the /cmd message.
    room_id BIGINT REFERENCES rooms (id) ON DELETE SET NULL,
    message_id BIGINT,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP,
    done_at TIMESTAMP
);
CREATE INDEX device_commands_device ON device_commands (device_id, status, id);

-- Threshold rules: a reading crossing one posts an event into the room (and another when it
-- returns); `firing` remembers which side the last reading was on.
CREATE TABLE device_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    -- above, below
    op TEXT NOT NULL,
    threshold DOUBLE NOT NULL,
    firing BOOLEAN NOT NULL DEFAULT FALSE,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX device_rules_device ON device_rules (device_id);

-- Hourly rollups of telemetry, kept up to date by ingestion and kept longer than raw rows.
CREATE TABLE telemetry_hourly (
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    hour TIMESTAMP NOT NULL,
    min DOUBLE NOT NULL,
    max DOUBLE NOT NULL,
    sum DOUBLE NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric, hour)
);

-- Public keys (ed25519, hex) whose signatures a workspace's firmware images must carry.
CREATE TABLE firmware_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (tenant_id, public_key)
);

-- Signed firmware images, verified on upload.
CREATE TABLE firmware_images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id BIGINT REFERENCES firmware_keys (id) ON DELETE SET NULL,
    data BLOB NOT NULL,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (tenant_id, version)
);

-- Staged rollouts of an image to a tag or a list of devices.
CREATE TABLE ota_rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    image_id BIGINT NOT NULL REFERENCES firmware_images (id),
    -- Offered instead when the rollout is rolled back.
    previous_image_id BIGINT REFERENCES firmware_images (id),
    -- JSON: {"tag": "…"} or {"devices": [ids]}
    target TEXT NOT NULL,
    -- JSON array of cumulative percentages, ending at 100.
    stages TEXT NOT NULL,
    stage INTEGER NOT NULL,
    -- Percent of a stage's devices that must boot the image before the next stage starts.
    success_threshold DOUBLE NOT NULL,
    -- Percent of the devices offered so far whose failure halts the rollout.
    failure_threshold DOUBLE NOT NULL,
    -- running, halted, completed, rolling_back, rolled_back
    state TEXT NOT NULL,
    reason TEXT,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX ota_rollouts_tenant ON ota_rollouts (tenant_id, id);

-- Each targeted device of a rollout: its stage and how its update goes.
CREATE TABLE ota_assignments (
    rollout_id BIGINT NOT NULL REFERENCES ota_rollouts (id) ON DELETE CASCADE,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    stage INTEGER NOT NULL,
    -- The image offered (the previous one once rolled back).
    image_id BIGINT NOT NULL REFERENCES firmware_images (id),
    -- waiting, offered, downloading, verifying, installed, booted_ok, rolled_back, failed
    state TEXT NOT NULL,
    received BIGINT NOT NULL DEFAULT 0,
    detail TEXT,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX ota_assignments_device ON ota_assignments (device_id, state);
