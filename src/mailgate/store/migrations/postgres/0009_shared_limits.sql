-- mailgate schema v9 (PostgreSQL only): the limits every node keeps in its shared tables
-- (shared.py), told to the other nodes (cluster_limits.py). One row per process and
-- limit name: how much that process has taken ever (a rate's tokens, failed logins) and
-- in its latest change (step), when the last of it happened (its own clock), and what it
-- holds open now (connections). `changed` is PostgreSQL's clock at the write: readers ask for rows
-- changed since their last read.
CREATE TABLE shared_limits (
    node TEXT NOT NULL,
    proc TEXT NOT NULL,
    tab TEXT NOT NULL,
    name TEXT NOT NULL,
    total BIGINT NOT NULL,
    step BIGINT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    held INTEGER NOT NULL,
    changed DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (node, proc, tab, name)
);
CREATE INDEX shared_limits_changed ON shared_limits (changed);
