DROP TABLE personal_keys;
