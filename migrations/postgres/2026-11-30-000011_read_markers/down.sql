DROP TABLE read_markers;
