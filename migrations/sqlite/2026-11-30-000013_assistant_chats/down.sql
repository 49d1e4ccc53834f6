DROP TABLE assistant_replies;
DROP TABLE assistant_rooms;
DROP TABLE assistant_preferences;
