-- mailgate schema v13 (PostgreSQL only): suppressed addresses compared by code point
-- (COLLATE "C"), as SQLite and Python compare them. Listing by prefix bounds the index
-- scan with the least string above the prefix (queries.next_prefix); under a linguistic
-- collation such as en-US, '{' sorts before 'z', so every address starting with 'z'
-- fell outside its own bounds.
ALTER TABLE suppressions ALTER COLUMN address TYPE TEXT COLLATE "C";
