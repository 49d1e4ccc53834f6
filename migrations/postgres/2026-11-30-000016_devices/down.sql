DROP TABLE device_claims;
DROP TABLE device_tokens;
DROP TABLE devices;
