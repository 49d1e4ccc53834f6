DROP TABLE assistant_usage;
