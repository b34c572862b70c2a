-- mailgate schema v3 (PostgreSQL): each event carries the API key that owns its message,
-- and the id of the transaction that wrote it. bigserial ids are not commit-ordered (a
-- transaction holding id 10 may commit after one holding 11), so the events cursor walks
-- (xid, id) and reads only transactions older than every running one (store/postgres.py
-- events_since). The default costs no work in Python and no extra round trip.
ALTER TABLE events
    ADD COLUMN api_key_id TEXT,
    ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX events_xid ON events (xid, id);
