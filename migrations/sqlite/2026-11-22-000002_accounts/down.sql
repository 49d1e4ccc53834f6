DROP TABLE audit_events;
DROP TABLE memberships;
DROP TABLE users;
DROP TABLE tenants;
