DROP TABLE telemetry;
