-- mailgate schema v4: sending domains and their DKIM keys (both backends as written).
CREATE TABLE domains (
    name TEXT PRIMARY KEY,                 -- lower-case A-labels
    created_at DOUBLE PRECISION NOT NULL,
    sending INTEGER NOT NULL DEFAULT 0,    -- 1: DKIM verified, mail From it is signed
    checks TEXT NOT NULL DEFAULT '{}',     -- JSON: record id -> {status, found, ok}
    checked_at DOUBLE PRECISION,
    next_check_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE domain_keys (
    domain TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,               -- rsa-sha256 | ed25519-sha256
    public_key TEXT NOT NULL,              -- the p= value published
    private_key TEXT NOT NULL,             -- sealed with the secret key (secretbox.py)
    created_at DOUBLE PRECISION NOT NULL,
    retired_at DOUBLE PRECISION,
    PRIMARY KEY (domain, selector)
);
