DROP TABLE ota_assignments;
DROP TABLE ota_rollouts;
DROP TABLE firmware_images;
DROP TABLE firmware_keys;
DROP TABLE telemetry_hourly;
DROP TABLE device_rules;
DROP TABLE device_commands;
