-- Readings a device's full offline buffer dropped (reported in its hello), in total.
ALTER TABLE devices ADD COLUMN readings_dropped BIGINT NOT NULL DEFAULT 0;
