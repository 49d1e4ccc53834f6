-- The device registry: each device belongs to a workspace.
CREATE TABLE devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- A JSON array of tag names.
    tags TEXT NOT NULL,
    firmware TEXT,
    chip TEXT,
    last_seen_at TIMESTAMP,
    -- The newest telemetry batch stored (batches at or below it are duplicates).
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (tenant_id, name)
);

-- Device tokens, stored as the SHA-256 of the token; one live token per device (rotating
-- revokes the old one).
CREATE TABLE device_tokens (
    id TEXT PRIMARY KEY,
    device_id BIGINT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP
);
CREATE INDEX device_tokens_device ON device_tokens (device_id);

-- One-time claim codes an operator hands to a device, stored as the SHA-256 of the code.
CREATE TABLE device_claims (
    id TEXT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    device_id BIGINT REFERENCES devices (id) ON DELETE SET NULL
);
CREATE INDEX device_claims_tenant ON device_claims (tenant_id, created_at);
