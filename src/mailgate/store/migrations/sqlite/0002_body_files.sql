-- mailgate schema v2 (SQLite): bodies of 512 bytes and more live in segment files beside
-- the database (store/body_files.py); such rows keep an empty `raw`.
ALTER TABLE messages ADD COLUMN body_file TEXT;      -- segment name, NULL: body in raw
ALTER TABLE messages ADD COLUMN body_offset INTEGER; -- where it starts; `size` bytes long
