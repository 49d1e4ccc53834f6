-- How far each person has read in each room: the newest message id they have seen. Written by
-- the realtime endpoint's `read` frames; only ever moves forward.
CREATE TABLE read_markers (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_id BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX read_markers_user ON read_markers (user_id);
