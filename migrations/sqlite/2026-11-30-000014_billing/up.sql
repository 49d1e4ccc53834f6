-- Billing: the plan each workspace is on, its orders, its credits ledger and its daily usage
-- counters (the quotas).
ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL DEFAULT 'free';
-- When a paid monthly plan runs out (NULL: the plan does not run out).
ALTER TABLE tenants ADD COLUMN plan_renews_at TIMESTAMP;
ALTER TABLE tenants ADD COLUMN plan_changed_at TIMESTAMP;
-- A paid plan chosen at sign-up, offered for payment at the first visit after signing in.
ALTER TABLE users ADD COLUMN signup_plan TEXT;

CREATE TABLE billing_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Who ordered; NULL once their account is gone.
    user_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    plan TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_order_id TEXT UNIQUE,
    -- Our reference, sent to the provider (merchant_order_ext_ref).
    reference TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('created', 'pending', 'processing', 'authorised', 'completed', 'cancelled', 'failed', 'refunded')),
    checkout_url TEXT,
    -- The plan or credits were granted (once, when the provider confirmed completion).
    activated BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    completed_at TIMESTAMP
);
CREATE INDEX billing_orders_tenant ON billing_orders (tenant_id, id);
CREATE INDEX billing_orders_open ON billing_orders (state, updated_at);

-- Append-only: rows are never updated or deleted (but with their workspace).
CREATE TABLE credit_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('purchase', 'usage', 'refund', 'adjustment')),
    amount BIGINT NOT NULL,
    balance_after BIGINT NOT NULL CHECK (balance_after >= 0),
    order_id BIGINT REFERENCES billing_orders (id) ON DELETE SET NULL,
    user_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    reason TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX credit_entries_tenant ON credit_entries (tenant_id, id);

-- Requests and tokens per workspace per UTC day (`YYYY-MM-DD`): what quotas count.
CREATE TABLE usage_daily (
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    requests BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day)
);
