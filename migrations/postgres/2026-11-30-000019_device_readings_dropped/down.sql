ALTER TABLE devices DROP COLUMN readings_dropped;
