DROP TABLE usage_daily;
DROP TABLE credit_entries;
DROP TABLE billing_orders;
ALTER TABLE users DROP COLUMN signup_plan;
ALTER TABLE tenants DROP COLUMN plan_changed_at;
ALTER TABLE tenants DROP COLUMN plan_renews_at;
ALTER TABLE tenants DROP COLUMN plan;
