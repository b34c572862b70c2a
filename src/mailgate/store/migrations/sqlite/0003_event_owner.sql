-- mailgate schema v3 (SQLite): each event carries the API key that owns its message, so
-- an events feed is read per key. Event ids are commit-ordered here (one writer at a
-- time holds the write turn), so `id` alone is the events cursor.
ALTER TABLE events ADD COLUMN api_key_id TEXT;
