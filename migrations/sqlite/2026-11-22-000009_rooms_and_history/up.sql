-- Rooms, their members, and message history encrypted at rest with a searchable blind index.

-- Defaults a workspace gives its new rooms.
ALTER TABLE tenants ADD COLUMN default_privacy TEXT NOT NULL DEFAULT 'standard'
    CHECK (default_privacy IN ('standard', 'private', 'ephemeral'));
-- Messages older than this many days are deleted; NULL keeps them.
ALTER TABLE tenants ADD COLUMN retention_days INTEGER;

CREATE TABLE rooms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('room', 'direct')),
    name TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    visibility TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    privacy TEXT NOT NULL CHECK (privacy IN ('standard', 'private', 'ephemeral')),
    -- Overrides the workspace's retention; NULL: the workspace's.
    retention_days INTEGER,
    -- Exempts the room from retention.
    legal_hold BOOLEAN NOT NULL DEFAULT FALSE,
    archived_at TIMESTAMP,
    -- For direct rooms, `<tenant>:<lower user id>:<higher user id>`: one room per pair.
    direct_key TEXT UNIQUE,
    created_by BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX rooms_tenant ON rooms (tenant_id);

-- Members are people, devices or the assistant (`member_kind`), each with a room role.
CREATE TABLE room_members (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    member_kind TEXT NOT NULL CHECK (member_kind IN ('user', 'device', 'assistant')),
    member_id BIGINT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member', 'readonly')),
    joined_at TIMESTAMP NOT NULL,
    PRIMARY KEY (room_id, member_kind, member_id)
);
CREATE INDEX room_members_member ON room_members (member_kind, member_id);

-- A room's data key (AES-256), wrapped by a key-encryption key of the key provider.
CREATE TABLE conversation_keys (
    room_id BIGINT PRIMARY KEY NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    -- Which key-encryption key wrapped it (`local:<fingerprint>`, `vault:<key name>`).
    kek_id TEXT NOT NULL,
    wrapped TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    rewrapped_at TIMESTAMP
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    sender_kind TEXT NOT NULL CHECK (sender_kind IN ('user', 'device', 'assistant')),
    -- NULL once the sender's account was deleted (the message stays, anonymised).
    sender_id BIGINT,
    -- nonce ‖ AES-256-GCM(body) under the room's data key; NULL once deleted (tombstone).
    body_sealed BLOB,
    reply_to BIGINT,
    idempotency_key TEXT,
    created_at TIMESTAMP NOT NULL,
    edited_at TIMESTAMP,
    deleted_at TIMESTAMP
);
CREATE INDEX messages_room ON messages (room_id, id);
CREATE INDEX messages_sender ON messages (sender_kind, sender_id);
CREATE UNIQUE INDEX messages_idempotency
    ON messages (room_id, sender_kind, sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The blind index: one row per distinct word of a message, the word replaced by a keyed hash
-- (HMAC-SHA256 under a key derived from the room's data key, truncated to 16 bytes).
CREATE TABLE message_terms (
    term BLOB NOT NULL,
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (term, message_id)
) WITHOUT ROWID;
CREATE INDEX message_terms_message ON message_terms (message_id);
