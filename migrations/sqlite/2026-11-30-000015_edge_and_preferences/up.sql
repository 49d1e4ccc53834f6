-- Edge policy versions: append-only; the newest version is the active one. A rollback saves an
-- older document again as a new version (rolled_back_from says which).
CREATE TABLE edge_policies (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    document TEXT NOT NULL,
    comment TEXT NOT NULL,
    rolled_back_from BIGINT,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL
);

-- Edge agents (proxies on other hosts) and the policy version each last applied.
CREATE TABLE edge_agents (
    name TEXT PRIMARY KEY,
    format TEXT NOT NULL,
    applied_version BIGINT,
    status TEXT NOT NULL CHECK (status IN ('applied', 'check_failed', 'error')),
    error TEXT,
    address TEXT,
    reported_at TIMESTAMP NOT NULL
);

-- Each person's preferences: a JSON document of a known shape (version says which).
CREATE TABLE user_preferences (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- The admin area's role (owner > admin > operator > viewer), apart from workspace roles: the
-- default workspace holds everyone, so its roles cannot double as staff roles. Its owners,
-- admins and operators so far keep their powers.
ALTER TABLE users ADD COLUMN staff_role TEXT CHECK (staff_role IN ('owner', 'admin', 'operator', 'viewer'));
UPDATE users SET staff_role = (
    SELECT m.role FROM memberships m JOIN tenants t ON t.id = m.tenant_id
    WHERE t.slug = 'default' AND m.user_id = users.id AND m.role IN ('owner', 'admin', 'operator')
);
