-- Projection bookkeeping and the first read models.

-- One row per projection: where it is in the log. The runtime moves the
-- position in the same transaction as the read-model rows, and only from
-- the position it read (a fencing check), so a batch takes effect once.
CREATE TABLE projection_checkpoints (
    name        TEXT        PRIMARY KEY,
    version     INT         NOT NULL,
    position    BIGINT      NOT NULL DEFAULT 0,
    state       TEXT        NOT NULL DEFAULT 'RUNNING',
    last_error  TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE rm_accounts (
    account_id    UUID        PRIMARY KEY,
    email         TEXT        NOT NULL UNIQUE,
    display_name  TEXT        NOT NULL,
    roles         TEXT[]      NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE rm_listings (
    listing_id    UUID        PRIMARY KEY,
    seller_id     UUID        NOT NULL,
    kind          TEXT        NOT NULL,
    title         TEXT        NOT NULL,
    description   TEXT        NOT NULL,
    category      TEXT        NOT NULL,
    tags          TEXT[]      NOT NULL,
    price_minor   BIGINT      NOT NULL,
    currency      TEXT        NOT NULL,
    quantity      INT         NOT NULL,
    status        TEXT        NOT NULL,
    content_hash  TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX rm_listings_status_created_idx ON rm_listings (status, created_at DESC, listing_id DESC);
CREATE INDEX rm_listings_seller_idx ON rm_listings (seller_id);
CREATE INDEX rm_listings_category_idx ON rm_listings (category);
