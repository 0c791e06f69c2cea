-- Orders and their lines, as buyers and sellers see them.
CREATE TABLE rm_orders (
    order_id       UUID        PRIMARY KEY,
    buyer_id       UUID        NOT NULL,
    seller_id      UUID        NOT NULL,
    status         TEXT        NOT NULL,
    status_reason  TEXT,
    tracking_code  TEXT,
    total_minor    BIGINT      NOT NULL,
    currency       TEXT        NOT NULL,
    placed_at      TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

-- Keyset pages of one buyer's and one seller's orders, newest first.
CREATE INDEX rm_orders_buyer_idx ON rm_orders (buyer_id, placed_at DESC, order_id DESC);
CREATE INDEX rm_orders_seller_idx ON rm_orders (seller_id, placed_at DESC, order_id DESC);

-- Lines in the order they were placed (line_no from 1), with the unit
-- price of that moment.
CREATE TABLE rm_order_lines (
    order_id          UUID    NOT NULL,
    line_no           INT     NOT NULL,
    listing_id        UUID    NOT NULL,
    quantity          INT     NOT NULL,
    unit_price_minor  BIGINT  NOT NULL,
    currency          TEXT    NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
