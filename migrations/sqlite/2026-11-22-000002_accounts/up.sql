-- Accounts: tenants (workspaces), users, their roles, and the security audit log.
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Normalised (trimmed, lower-case), so uniqueness is case-insensitive.
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    -- argon2id PHC string; NULL for accounts that only sign in through an identity provider.
    password_hash TEXT,
    email_verified_at TIMESTAMP,
    disabled_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE memberships (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'operator', 'viewer')),
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TIMESTAMP NOT NULL,
    event TEXT NOT NULL,
    actor_user_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    tenant_id BIGINT REFERENCES tenants (id) ON DELETE SET NULL,
    subject TEXT,
    ip TEXT,
    user_agent TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at);

-- Every installation starts with one workspace; the first user becomes its owner.
INSERT INTO tenants (slug, name, created_at) VALUES ('default', 'Default workspace', strftime('%Y-%m-%d %H:%M:%f', 'now'));
