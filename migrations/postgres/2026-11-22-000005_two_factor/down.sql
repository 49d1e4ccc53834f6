DROP TABLE mfa_challenges;
DROP TABLE remembered_devices;
DROP TABLE recovery_codes;
DROP TABLE totp_secrets;
