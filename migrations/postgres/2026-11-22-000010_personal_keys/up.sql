-- A person's key for `private` conversations: 32 random bytes, stored only wrapped (AES-256-GCM)
-- by a key derived from their password (argon2id with these parameters and salt). The server
-- holds it unwrapped only in memory, after the person unlocks it with their password.
CREATE TABLE personal_keys (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    salt TEXT NOT NULL,
    m_cost INTEGER NOT NULL,
    t_cost INTEGER NOT NULL,
    p_cost INTEGER NOT NULL,
    wrapped TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
