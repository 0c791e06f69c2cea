-- Reviews of listings and their moderation.
CREATE TABLE rm_reviews (
    review_id         UUID        PRIMARY KEY,
    listing_id        UUID        NOT NULL,
    order_id          UUID        NOT NULL,
    author_id         UUID        NOT NULL,
    rating            INT         NOT NULL,
    comment           TEXT        NOT NULL,
    status            TEXT        NOT NULL,
    rejection_reason  TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- A listing's reviews (approved only, or all), newest first.
CREATE INDEX rm_reviews_listing_idx ON rm_reviews (listing_id, status, created_at DESC, review_id DESC);
-- The moderation queue, oldest first.
CREATE INDEX rm_reviews_pending_idx ON rm_reviews (created_at, review_id) WHERE status = 'PENDING';
