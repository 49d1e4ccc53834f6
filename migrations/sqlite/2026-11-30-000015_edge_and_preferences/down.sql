ALTER TABLE users DROP COLUMN staff_role;
DROP TABLE user_preferences;
DROP TABLE edge_agents;
DROP TABLE edge_policies;
