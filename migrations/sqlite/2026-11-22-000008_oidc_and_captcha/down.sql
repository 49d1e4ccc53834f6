DROP TABLE captcha_spent;
DROP TABLE user_identities;
DROP TABLE oidc_flows;
