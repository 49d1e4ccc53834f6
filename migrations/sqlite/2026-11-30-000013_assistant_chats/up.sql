-- The assistant in conversations. A personal assistant chat is a private room of one person
-- (mode 'chat': every message is for the assistant); a group room can let the assistant
-- answer when mentioned (mode 'room'). Messages stay in the history store like any room's.
CREATE TABLE assistant_rooms (
    room_id BIGINT PRIMARY KEY NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    mode TEXT NOT NULL CHECK (mode IN ('chat', 'room')),
    enabled BOOLEAN NOT NULL,
    -- The model alias; '' means the configured default.
    model TEXT NOT NULL,
    system_prompt TEXT NOT NULL,
    -- The title is still "New chat": the title job has not replaced it, nor has its owner.
    untitled BOOLEAN NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX assistant_rooms_mode ON assistant_rooms (mode);

-- One answer of the assistant, from request to stored message. `state` moves
-- queued → streaming → completed | stopped | failed; a stopped or failed answer keeps what was
-- generated as its message. `lease_until` is renewed while streaming: a lapsed lease means the
-- node died, and a sweep marks the answer failed (retryable) instead of leaving a spinner.
CREATE TABLE assistant_replies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    -- Who asked (billed); NULL once their account is gone.
    user_id BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- The message it answers, and the stored answer once there is one.
    prompt_message_id BIGINT NOT NULL,
    message_id BIGINT,
    model TEXT NOT NULL,
    variant TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'streaming', 'completed', 'stopped', 'failed')),
    error TEXT,
    stop_requested BOOLEAN NOT NULL,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX assistant_replies_room ON assistant_replies (room_id, id);
CREATE INDEX assistant_replies_message ON assistant_replies (message_id);
CREATE INDEX assistant_replies_streaming ON assistant_replies (state, lease_until);

-- A person's own instructions for the assistant and the model they pick by default.
CREATE TABLE assistant_preferences (
    user_id BIGINT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    system_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
