-- One row per assistant call (API, personal chat, room): what it cost and how it ended. The
-- billing module sums these per user, tenant and day for quotas and credits.
CREATE TABLE assistant_usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- NULL for guests, and once the person's account is gone.
    user_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- UTC day of the call, `YYYY-MM-DD`.
    day TEXT NOT NULL,
    -- The alias the caller asked for, and the provider model that answered (`provider/model`,
    -- one per A/B variant).
    model TEXT NOT NULL,
    variant TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('api', 'chat', 'room', 'guest')),
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    -- The provider reported no usage; the counts are ours.
    estimated BOOLEAN NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('completed', 'incomplete', 'failed', 'cancelled')),
    -- Milliseconds to the first token; NULL when none came.
    first_token_ms BIGINT,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX assistant_usage_user_day ON assistant_usage (user_id, day);
CREATE INDEX assistant_usage_tenant_day ON assistant_usage (tenant_id, day);
