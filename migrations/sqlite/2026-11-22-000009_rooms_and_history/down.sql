DROP TABLE message_terms;
DROP TABLE messages;
DROP TABLE conversation_keys;
DROP TABLE room_members;
DROP TABLE rooms;
ALTER TABLE tenants DROP COLUMN retention_days;
ALTER TABLE tenants DROP COLUMN default_privacy;
