-- Sign-in through OpenID Connect / OAuth providers.

-- A sign-in started at a provider and not yet finished. The id is the SHA-256 of the `state`
-- sent to the provider (which the browser also holds in a cookie); rows live 10 minutes.
CREATE TABLE oidc_flows (
    id TEXT PRIMARY KEY NOT NULL,
    provider TEXT NOT NULL,
    -- The PKCE verifier, sealed (AES-256-GCM) and bound to this row.
    verifier_sealed TEXT NOT NULL,
    nonce TEXT NOT NULL,
    next_path TEXT NOT NULL,
    -- Set when a signed-in person connects a provider to their own account.
    link_user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX oidc_flows_expires ON oidc_flows (expires_at);

-- An account at a provider that signs in as a Conclave user.
CREATE TABLE user_identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    -- The provider's stable id for the account (`sub`, or GitHub's numeric id).
    subject TEXT NOT NULL,
    email TEXT NOT NULL,
    -- The provider's access/refresh tokens, sealed (AES-256-GCM) and bound to provider+subject.
    tokens_sealed TEXT,
    created_at TIMESTAMP NOT NULL,
    last_login_at TIMESTAMP,
    UNIQUE (provider, subject)
);
CREATE INDEX user_identities_user ON user_identities (user_id);

-- Proof-of-work CAPTCHA solutions already used (each works once), kept until they expire.
CREATE TABLE captcha_spent (
    signature TEXT PRIMARY KEY NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX captcha_spent_expires ON captcha_spent (expires_at);
