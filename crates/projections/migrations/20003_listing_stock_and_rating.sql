-- Stock and rating of a listing.
--
-- `quantity` stays the units ever stocked; `reserved` are set aside for
-- pending orders and `sold` are gone, so available = quantity − reserved −
-- sold (physical listings). The rating is the sum and count of APPROVED
-- reviews' stars.
ALTER TABLE rm_listings
    ADD COLUMN reserved      INT    NOT NULL DEFAULT 0,
    ADD COLUMN sold          INT    NOT NULL DEFAULT 0,
    ADD COLUMN rating_sum    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN rating_count  INT    NOT NULL DEFAULT 0;
