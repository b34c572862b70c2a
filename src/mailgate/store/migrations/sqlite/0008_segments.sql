-- mailgate schema v8 (SQLite): the bodies each segment file still holds, for compaction
-- (store/sqlite/compaction.py): live bytes per segment and the places to copy, read from
-- this index alone. A purged body leaves it (its body_file is set to NULL).
CREATE INDEX messages_segment ON messages (body_file, body_offset, size)
    WHERE body_file IS NOT NULL;
