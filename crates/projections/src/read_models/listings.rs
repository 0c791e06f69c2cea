//! The `listings` read model: the catalogue, with filters, sorts, keyset
//! pagination, totals and facets; stock and rating per listing.
//!
//! Fed by the `listing` events and by `review.approved` (the rating: sum and
//! count of approved reviews' stars). Stock is kept as the listing
//! aggregate counts it: `quantity` is units ever stocked, `reserved` are set
//! aside for pending orders, `sold` are gone; queries show `quantity` as
//! what is available. A batch is folded in memory first: counters are
//! summed per listing (their changes commute), price, status and
//! `updated_at` take the last value in log order, listings created in the
//! batch are inserted with everything that followed folded in, and the
//! others get one multi-row `UPDATE`.
//!
//! Reads are built to be index reads:
//! - every sort has a stored key column (`created_key`, `price_minor`,
//!   `rating_key`) and a composite index per filter the contract offers
//!   (none, category, kind, seller), so a page is a keyset range scan;
//! - counts per status × category × kind (`rm_listing_counts`) and per
//!   status × category × kind × tag (`rm_listing_tag_counts`) are kept in the same
//!   transaction as the rows, so `totalCount` and the facets of a page
//!   filtered by nothing but category and kind read a few counter rows;
//! - with full-text search, tag, seller or price filters, counts are exact
//!   up to [`COUNT_CAP`] and facets come from the first [`FACET_SAMPLE`]
//!   matches, each flagged when inexact; relevance ranks the first
//!   [`RELEVANCE_CANDIDATES`] matches found through the GIN index;
//! - rows, count and facets of one page come from one statement, so they
//!   share one snapshot.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_consumers::Envelope;
use marketplace_domain::listing::{ListingEvent, ListingKind};
use marketplace_domain::review::ReviewEvent;
use marketplace_domain::{AggregateKind, Event};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::cursor;
pub use super::InvalidCursor;
use crate::builds::Table;
use crate::runtime::{Projection, ProjectionError};

/// Stable name.
pub const NAME: &str = "listings";

/// The version of the tables and the fold below; bump it when either
/// changes, and the runtime rebuilds the read model without downtime.
pub const VERSION: i32 = 5;

/// The tables of [`VERSION`], created in each build's schema (columns in the
/// order of the first layout, so that builds moved from it compare equal).
pub const TABLES: &[Table] = &[
    Table {
        name: "rm_listings",
        // Stock counters change often and are not indexed: room on each
        // page lets those updates stay HOT (no writes to the fourteen
        // indexes, two of them GIN). At 80 % a flash sale over 1,000
        // listings still wrote 26 % of its updates cold (`n_tup_hot_upd`):
        // a page of these wide rows had room for about one new version.
        // Builds made before this keep their fill factor.
        create: "CREATE TABLE rm_listings (
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
        updated_at    TIMESTAMPTZ NOT NULL,
        reserved      INT         NOT NULL DEFAULT 0,
        sold          INT         NOT NULL DEFAULT 0,
        rating_sum    BIGINT      NOT NULL DEFAULT 0,
        rating_count  INT         NOT NULL DEFAULT 0,
        search_doc    TSVECTOR    NOT NULL DEFAULT '',
        created_key   BIGINT      NOT NULL,
        rating_key    BIGINT      GENERATED ALWAYS AS
            (CASE WHEN rating_count = 0 THEN -1 ELSE rating_sum * 1000000 / rating_count END) STORED
    ) WITH (fillfactor = 50)",
        indexes: &[
            "CREATE INDEX IF NOT EXISTS rm_listings_newest_idx \
             ON rm_listings (status, created_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_price_idx \
             ON rm_listings (status, price_minor, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_rating_idx \
             ON rm_listings (status, rating_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_category_newest_idx \
             ON rm_listings (status, category, created_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_category_price_idx \
             ON rm_listings (status, category, price_minor, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_category_rating_idx \
             ON rm_listings (status, category, rating_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_kind_newest_idx \
             ON rm_listings (status, kind, created_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_kind_price_idx \
             ON rm_listings (status, kind, price_minor, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_kind_rating_idx \
             ON rm_listings (status, kind, rating_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_seller_newest_idx \
             ON rm_listings (seller_id, status, created_key, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_seller_price_idx \
             ON rm_listings (seller_id, status, price_minor, listing_id)",
            "CREATE INDEX IF NOT EXISTS rm_listings_seller_rating_idx \
             ON rm_listings (seller_id, status, rating_key, listing_id)",
            // Full-text search over title (weight A), tags (B) and description
            // (C). Without a pending list (`fastupdate`), a search never pays
            // for scanning unmerged entries, which also keeps the planner
            // on these indexes right after a bulk of inserts.
            "CREATE INDEX IF NOT EXISTS rm_listings_search_idx ON rm_listings \
             USING GIN (search_doc) WITH (fastupdate = off)",
            "CREATE INDEX IF NOT EXISTS rm_listings_tags_idx ON rm_listings \
             USING GIN (tags) WITH (fastupdate = off)",
        ],
    },
    // What ranking a search reads: narrow rows, so ranking a thousand
    // candidates reads a few pages, not the catalogue's wide rows.
    Table {
        name: "rm_listing_search",
        create: "CREATE TABLE rm_listing_search (
        listing_id  UUID      PRIMARY KEY,
        status      TEXT      NOT NULL,
        search_doc  TSVECTOR  NOT NULL
    )",
        indexes: &[
            "CREATE INDEX IF NOT EXISTS rm_listing_search_idx ON rm_listing_search \
             USING GIN (search_doc) WITH (fastupdate = off)",
        ],
    },
    Table {
        name: "rm_listing_counts",
        create: "CREATE TABLE rm_listing_counts (
        status    TEXT    NOT NULL,
        category  TEXT    NOT NULL,
        kind      TEXT    NOT NULL,
        n         BIGINT  NOT NULL,
        PRIMARY KEY (status, category, kind)
    )",
        indexes: &[],
    },
    Table {
        name: "rm_listing_tag_counts",
        create: "CREATE TABLE rm_listing_tag_counts (
        status    TEXT    NOT NULL,
        category  TEXT    NOT NULL,
        kind      TEXT    NOT NULL,
        tag       TEXT    NOT NULL,
        n         BIGINT  NOT NULL,
        PRIMARY KEY (status, category, kind, tag)
    )",
        indexes: &[],
    },
];

/// Counts above this many matches are not counted on: `totalCount` is
/// then this cap and flagged inexact.
pub const COUNT_CAP: i64 = 10_000;
/// Facets of a search, tag, seller or price filter are taken over this many
/// matches (flagged inexact when there are more).
pub const FACET_SAMPLE: i64 = 1_000;
/// Relevance ranks this many matches of a search (found through the GIN
/// index); the rest are not ranked.
pub const RELEVANCE_CANDIDATES: i64 = 1_000;
/// Most values per facet.
pub const FACET_VALUES: i64 = 50;

/// Folds listing events and approved reviews into `rm_listings`.
#[derive(Debug, Clone, Copy)]
pub struct ListingsProjection;

struct NewRow {
    id: Uuid,
    seller: Uuid,
    kind: &'static str,
    title: String,
    description: String,
    category: String,
    /// Comma-joined, for the multi-row insert.
    tags: String,
    tag_list: Vec<String>,
    price_minor: i64,
    currency: String,
    status: &'static str,
    content_hash: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    counters: Counters,
}

/// Counter changes; they commute, so a batch's are summed.
#[derive(Default, Clone, Copy)]
struct Counters {
    /// Units stocked (the `quantity` column).
    stocked: i64,
    reserved: i64,
    sold: i64,
    rating_sum: i64,
    rating_count: i64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.stocked += other.stocked;
        self.reserved += other.reserved;
        self.sold += other.sold;
        self.rating_sum += other.rating_sum;
        self.rating_count += other.rating_count;
    }
}

/// What a batch changes in one listing.
#[derive(Default)]
struct Change {
    /// Last price in log order: (minor units, currency).
    price: Option<(i64, String)>,
    /// Last status in log order.
    status: Option<&'static str>,
    /// Last seller-visible change in log order.
    updated_at: Option<DateTime<Utc>>,
    counters: Counters,
}

fn kind_name(k: ListingKind) -> &'static str {
    match k {
        ListingKind::Physical => "PHYSICAL",
        ListingKind::Digital => "DIGITAL",
    }
}

fn units(q: marketplace_domain::values::Quantity) -> i64 {
    i64::from(q.0)
}

#[async_trait]
impl Projection for ListingsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        VERSION
    }

    fn tables(&self) -> &'static [Table] {
        TABLES
    }

    fn reads(&self, aggregate: AggregateKind) -> bool {
        match aggregate {
            AggregateKind::Listing | AggregateKind::Review => true,
            AggregateKind::Account
            | AggregateKind::EmailClaim
            | AggregateKind::Order
            | AggregateKind::Payment
            | AggregateKind::Asset => false,
        }
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        // Fold the batch in memory first: a listing created and published in
        // the same batch becomes one insert, not an insert and an update.
        let mut created: Vec<NewRow> = Vec::new();
        let mut changes: HashMap<Uuid, Change> = HashMap::new();
        for e in events {
            match &e.event {
                Event::Listing(listing) => match listing {
                    ListingEvent::Created(c) => {
                        created.push(NewRow {
                            id: c.listing_id.0,
                            seller: c.seller_id.0,
                            kind: kind_name(c.kind),
                            title: c.title.as_str().to_owned(),
                            description: c.description.as_str().to_owned(),
                            category: c.category.as_str().to_owned(),
                            tags: c
                                .tags
                                .as_slice()
                                .iter()
                                .map(|t| t.as_str().replace(',', " "))
                                .collect::<Vec<_>>()
                                .join(","),
                            tag_list: c
                                .tags
                                .as_slice()
                                .iter()
                                .map(|t| t.as_str().replace(',', " "))
                                .collect(),
                            price_minor: c.price.minor,
                            currency: c.price.currency.as_str().to_owned(),
                            status: "DRAFT",
                            content_hash: c.content_hash.as_ref().map(|h| h.as_str().to_owned()),
                            created_at: c.created_at,
                            updated_at: c.created_at,
                            counters: Counters {
                                stocked: units(c.quantity),
                                ..Counters::default()
                            },
                        });
                    }
                    ListingEvent::Published(p) => {
                        let ch = changes.entry(p.listing_id.0).or_default();
                        ch.status = Some("PUBLISHED");
                        ch.updated_at = Some(p.published_at);
                    }
                    ListingEvent::PriceChanged(p) => {
                        let ch = changes.entry(p.listing_id.0).or_default();
                        ch.price = Some((p.price.minor, p.price.currency.as_str().to_owned()));
                        ch.updated_at = Some(p.changed_at);
                    }
                    ListingEvent::Restocked(r) => {
                        let ch = changes.entry(r.listing_id.0).or_default();
                        ch.counters.stocked += units(r.quantity);
                        ch.updated_at = Some(r.restocked_at);
                    }
                    ListingEvent::Delisted(d) => {
                        let ch = changes.entry(d.listing_id.0).or_default();
                        ch.status = Some("DELISTED");
                        ch.updated_at = Some(d.delisted_at);
                    }
                    // Reservations move stock between counters; they are the
                    // checkout's doing, not the seller's, so `updated_at` stays.
                    ListingEvent::StockReserved(r) => {
                        changes.entry(r.listing_id.0).or_default().counters.reserved +=
                            units(r.quantity);
                    }
                    ListingEvent::ReservationReleased(r) => {
                        changes.entry(r.listing_id.0).or_default().counters.reserved -=
                            units(r.quantity);
                    }
                    ListingEvent::ReservationCommitted(r) => {
                        let counters = &mut changes.entry(r.listing_id.0).or_default().counters;
                        counters.reserved -= units(r.quantity);
                        counters.sold += units(r.quantity);
                    }
                },
                Event::Review(review) => match review {
                    ReviewEvent::Approved(a) => {
                        let counters = &mut changes.entry(a.listing_id.0).or_default().counters;
                        counters.rating_sum += i64::from(a.rating.stars());
                        counters.rating_count += 1;
                    }
                    // Only approved reviews count toward the rating.
                    ReviewEvent::Submitted(_) | ReviewEvent::Rejected(_) => {}
                },
                // Aggregates this read model does not show.
                Event::Account(_)
                | Event::EmailClaim(_)
                | Event::Order(_)
                | Event::Payment(_)
                | Event::Asset(_) => {}
            }
        }
        // Listings created in this batch take everything that followed into
        // their insert (in a valid log nothing precedes a listing's creation).
        for row in &mut created {
            if let Some(ch) = changes.remove(&row.id) {
                if let Some((minor, currency)) = ch.price {
                    row.price_minor = minor;
                    row.currency = currency;
                }
                if let Some(status) = ch.status {
                    row.status = status;
                }
                if let Some(at) = ch.updated_at {
                    row.updated_at = at;
                }
                row.counters.add(ch.counters);
            }
        }
        // Counts move with statuses: new rows count under their final
        // status, existing rows whose status changes move from the old one
        // (read before the update) to the new.
        let mut counts = CountDeltas::default();
        for row in &created {
            counts.add(row.status, &row.category, row.kind, &row.tag_list, 1);
        }
        let moved: Vec<Uuid> = changes
            .iter()
            .filter(|(_, ch)| ch.status.is_some())
            .map(|(id, _)| *id)
            .collect();
        if !moved.is_empty() {
            let before: Vec<(Uuid, String, String, String, Vec<String>)> = sqlx::query_as(
                "SELECT listing_id, status, category, kind, tags FROM rm_listings \
                 WHERE listing_id = ANY($1)",
            )
            .bind(&moved)
            .fetch_all(&mut *tx)
            .await?;
            for (id, old, category, kind, tags) in before {
                let Some(new) = changes.get(&id).and_then(|ch| ch.status) else {
                    continue;
                };
                if old != new {
                    counts.add(&old, &category, &kind, &tags, -1);
                    counts.add(new, &category, &kind, &tags, 1);
                }
            }
        }
        if !created.is_empty() {
            insert_rows(tx, created).await?;
        }
        if !changes.is_empty() {
            update_rows(tx, changes).await?;
        }
        counts.write(tx).await?;
        Ok(())
    }
}

/// Changes to the counter tables over one batch, summed per key.
#[derive(Default)]
struct CountDeltas {
    /// (status, category, kind) -> change.
    listings: HashMap<(String, String, String), i64>,
    /// (status, category, kind, tag) -> change.
    tags: HashMap<(String, String, String, String), i64>,
}

impl CountDeltas {
    fn add(&mut self, status: &str, category: &str, kind: &str, tags: &[String], by: i64) {
        *self
            .listings
            .entry((status.to_owned(), category.to_owned(), kind.to_owned()))
            .or_default() += by;
        for tag in tags {
            *self
                .tags
                .entry((
                    status.to_owned(),
                    category.to_owned(),
                    kind.to_owned(),
                    tag.clone(),
                ))
                .or_default() += by;
        }
    }

    async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        // Keys are unique within the batch, so each row is upserted once.
        let listings: Vec<_> = self.listings.into_iter().filter(|(_, n)| *n != 0).collect();
        if !listings.is_empty() {
            let (mut status, mut category, mut kind, mut n) = (vec![], vec![], vec![], vec![]);
            for ((s, c, k), d) in listings {
                status.push(s);
                category.push(c);
                kind.push(k);
                n.push(d);
            }
            let shrank = n.iter().any(|d| *d < 0);
            sqlx::query(
                "INSERT INTO rm_listing_counts (status, category, kind, n) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) \
                 ON CONFLICT (status, category, kind) \
                 DO UPDATE SET n = rm_listing_counts.n + EXCLUDED.n",
            )
            .bind(&status)
            .bind(&category)
            .bind(&kind)
            .bind(n)
            .execute(&mut *tx)
            .await?;
            // A count that fell to zero is no count: drop it, so the table is
            // the same whatever batches the log was folded in.
            if shrank {
                sqlx::query(
                    "DELETE FROM rm_listing_counts c \
                     USING UNNEST($1::text[], $2::text[], $3::text[]) AS k(status, category, kind) \
                     WHERE c.n = 0 AND c.status = k.status AND c.category = k.category \
                       AND c.kind = k.kind",
                )
                .bind(status)
                .bind(category)
                .bind(kind)
                .execute(&mut *tx)
                .await?;
            }
        }
        let tags: Vec<_> = self.tags.into_iter().filter(|(_, n)| *n != 0).collect();
        if !tags.is_empty() {
            let (mut status, mut category, mut kind, mut tag, mut n) =
                (vec![], vec![], vec![], vec![], vec![]);
            for ((s, c, k, t), d) in tags {
                status.push(s);
                category.push(c);
                kind.push(k);
                tag.push(t);
                n.push(d);
            }
            let shrank = n.iter().any(|d| *d < 0);
            sqlx::query(
                "INSERT INTO rm_listing_tag_counts (status, category, kind, tag, n) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                                      $5::bigint[]) \
                 ON CONFLICT (status, category, kind, tag) \
                 DO UPDATE SET n = rm_listing_tag_counts.n + EXCLUDED.n",
            )
            .bind(&status)
            .bind(&category)
            .bind(&kind)
            .bind(&tag)
            .bind(n)
            .execute(&mut *tx)
            .await?;
            if shrank {
                sqlx::query(
                    "DELETE FROM rm_listing_tag_counts c \
                     USING UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
                           AS k(status, category, kind, tag) \
                     WHERE c.n = 0 AND c.status = k.status AND c.category = k.category \
                       AND c.kind = k.kind AND c.tag = k.tag",
                )
                .bind(status)
                .bind(category)
                .bind(kind)
                .bind(tag)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }
}

async fn update_rows(
    tx: &mut PgConnection,
    changes: HashMap<Uuid, Change>,
) -> Result<(), sqlx::Error> {
    let n = changes.len();
    let mut id = Vec::with_capacity(n);
    let mut price = Vec::with_capacity(n);
    let mut currency = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut stocked = Vec::with_capacity(n);
    let mut reserved = Vec::with_capacity(n);
    let mut sold = Vec::with_capacity(n);
    let mut rating_sum = Vec::with_capacity(n);
    let mut rating_count = Vec::with_capacity(n);
    for (listing, ch) in changes {
        id.push(listing);
        let (p, c) = ch.price.unzip();
        price.push(p);
        currency.push(c);
        status.push(ch.status);
        at.push(ch.updated_at);
        stocked.push(ch.counters.stocked);
        reserved.push(ch.counters.reserved);
        sold.push(ch.counters.sold);
        rating_sum.push(ch.counters.rating_sum);
        rating_count.push(ch.counters.rating_count);
    }
    // Statuses are mirrored into the search rows.
    sqlx::query(
        "UPDATE rm_listing_search s SET status = u.status \
         FROM UNNEST($1::uuid[], $2::text[]) AS u(id, status) \
         WHERE s.listing_id = u.id AND u.status IS NOT NULL",
    )
    .bind(&id)
    .bind(&status)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE rm_listings l SET \
             price_minor = COALESCE(u.price, l.price_minor), \
             currency = COALESCE(u.currency, l.currency), \
             status = COALESCE(u.status, l.status), \
             updated_at = COALESCE(u.at, l.updated_at), \
             quantity = l.quantity + u.stocked, \
             reserved = l.reserved + u.reserved, \
             sold = l.sold + u.sold, \
             rating_sum = l.rating_sum + u.rating_sum, \
             rating_count = l.rating_count + u.rating_count \
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
              AS u(id, price, currency, status, at, stocked, reserved, sold, rating_sum, \
                   rating_count) \
         WHERE l.listing_id = u.id",
    )
    .bind(id)
    .bind(price)
    .bind(currency)
    .bind(status)
    .bind(at)
    .bind(stocked)
    .bind(reserved)
    .bind(sold)
    .bind(rating_sum)
    .bind(rating_count)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_rows(tx: &mut PgConnection, rows: Vec<NewRow>) -> Result<(), sqlx::Error> {
    let mut id = Vec::new();
    let mut seller = Vec::new();
    let mut kind = Vec::new();
    let mut title = Vec::new();
    let mut description = Vec::new();
    let mut category = Vec::new();
    let mut tags = Vec::new();
    let mut price = Vec::new();
    let mut currency = Vec::new();
    let mut quantity = Vec::new();
    let mut status = Vec::new();
    let mut hash = Vec::new();
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut reserved = Vec::new();
    let mut sold = Vec::new();
    let mut rating_sum = Vec::new();
    let mut rating_count = Vec::new();
    let mut created_key = Vec::new();
    for r in rows {
        created_key.push(r.created_at.timestamp_micros());
        id.push(r.id);
        seller.push(r.seller);
        kind.push(r.kind);
        title.push(r.title);
        description.push(r.description);
        category.push(r.category);
        tags.push(r.tags);
        price.push(r.price_minor);
        currency.push(r.currency);
        quantity.push(r.counters.stocked);
        status.push(r.status);
        hash.push(r.content_hash);
        created.push(r.created_at);
        updated.push(r.updated_at);
        reserved.push(r.counters.reserved);
        sold.push(r.counters.sold);
        rating_sum.push(r.counters.rating_sum);
        rating_count.push(r.counters.rating_count);
    }
    // The narrow search row is written from the inserted row, in the same
    // statement.
    sqlx::query(
        "WITH ins AS (INSERT INTO rm_listings (listing_id, seller_id, kind, title, description, category, \
             tags, price_minor, currency, quantity, status, content_hash, created_at, updated_at, \
             reserved, sold, rating_sum, rating_count, search_doc, created_key) \
         SELECT id, seller, kind, title, description, category, \
                CASE WHEN tags = '' THEN '{}'::text[] ELSE string_to_array(tags, ',') END, \
                price, currency, quantity, status, hash, created, updated, \
                reserved, sold, rating_sum, rating_count, \
                setweight(to_tsvector('english', title), 'A') \
                || setweight(to_tsvector('english', replace(tags, ',', ' ')), 'B') \
                || setweight(to_tsvector('english', description), 'C'), \
                created_key \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::bigint[], $9::text[], $10::bigint[], $11::text[], \
                     $12::text[], $13::timestamptz[], $14::timestamptz[], $15::bigint[], \
                     $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[]) \
              AS t(id, seller, kind, title, description, category, tags, price, currency, \
                   quantity, status, hash, created, updated, reserved, sold, rating_sum, \
                   rating_count, created_key) \
         RETURNING listing_id, status, search_doc) \
         INSERT INTO rm_listing_search (listing_id, status, search_doc) \
         SELECT listing_id, status, search_doc FROM ins",
    )
    .bind(id)
    .bind(seller)
    .bind(kind)
    .bind(title)
    .bind(description)
    .bind(category)
    .bind(tags)
    .bind(price)
    .bind(currency)
    .bind(quantity)
    .bind(status)
    .bind(hash)
    .bind(created)
    .bind(updated)
    .bind(reserved)
    .bind(sold)
    .bind(rating_sum)
    .bind(rating_count)
    .bind(created_key)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One listing as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Deserialize)]
pub struct ListingRow {
    /// Id.
    pub listing_id: Uuid,
    /// Owner.
    pub seller_id: Uuid,
    /// PHYSICAL or DIGITAL.
    pub kind: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Price in minor units.
    pub price_minor: i64,
    /// Currency code.
    pub currency: String,
    /// Units available: PHYSICAL, stocked − reserved − sold (never below
    /// zero); DIGITAL, the stored figure (0: digital listings have no stock).
    pub quantity: i32,
    /// DRAFT, PUBLISHED or DELISTED.
    pub status: String,
    /// sha256 of a digital asset.
    pub content_hash: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change by the seller (created, published, price, restock, delisted).
    pub updated_at: DateTime<Utc>,
    /// Units set aside for pending orders.
    pub reserved: i32,
    /// Units sold.
    pub sold: i32,
    /// Approved reviews.
    pub rating_count: i32,
    /// Mean stars of the approved reviews; `None` without any.
    pub average_rating: Option<f64>,
}

const COLUMNS: &str = "listing_id, seller_id, kind, title, description, category, tags, \
    price_minor, currency, \
    CASE WHEN kind = 'PHYSICAL' THEN GREATEST(quantity - reserved - sold, 0) ELSE quantity END \
        AS quantity, \
    status, content_hash, created_at, updated_at, reserved, sold, rating_count, \
    CASE WHEN rating_count = 0 THEN NULL ELSE rating_sum::float8 / rating_count END \
        AS average_rating";

/// One listing by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<ListingRow>, sqlx::Error> {
    Ok(by_ids(pool, &[id]).await?.pop())
}

/// Listings by id, in one statement (for batching nested look-ups). Ids
/// without a listing are left out.
pub async fn by_ids(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<ListingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rm_listings WHERE listing_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Catalogue order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Sort {
    /// Newest first.
    #[default]
    Newest,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// Best full-text match first (newest first without a search).
    Relevance,
    /// Best average approved rating first; unrated listings last.
    Rating,
}

impl Sort {
    /// Pushes the integer sort key of a row (the cursor's key): a stored,
    /// indexed column, or the rank of a search.
    fn push_key(self, qb: &mut QueryBuilder<'_, Postgres>, search: Option<&str>) {
        match (self, search) {
            (Sort::Relevance, Some(q)) => {
                qb.push("(ts_rank(search_doc, websearch_to_tsquery('english', ")
                    .push_bind(q.to_owned())
                    .push(")) * 1000000)::bigint");
            }
            (Sort::Newest | Sort::Relevance, _) => {
                qb.push("created_key");
            }
            (Sort::PriceAsc | Sort::PriceDesc, _) => {
                qb.push("price_minor");
            }
            (Sort::Rating, _) => {
                qb.push("rating_key");
            }
        }
    }

    fn descending(self) -> bool {
        !matches!(self, Sort::PriceAsc)
    }
}

/// A row with the key it is sorted by.
#[derive(sqlx::FromRow, serde::Deserialize)]
struct Keyed {
    #[sqlx(flatten)]
    #[serde(flatten)]
    row: ListingRow,
    sort_key: i64,
}

/// What to select from the catalogue. Every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ListingQuery {
    /// Full-text search over title, tags and description (web-search
    /// syntax: words, "phrases", -exclusions, or).
    pub search: Option<String>,
    /// Exact category.
    pub category: Option<String>,
    /// All of these tags.
    pub tags: Vec<String>,
    /// One seller's listings.
    pub seller_id: Option<Uuid>,
    /// Lowest price in minor units.
    pub min_price_minor: Option<i64>,
    /// Highest price in minor units.
    pub max_price_minor: Option<i64>,
    /// PHYSICAL or DIGITAL.
    pub kind: Option<String>,
    /// DRAFT, PUBLISHED or DELISTED.
    pub status: String,
}

impl ListingQuery {
    /// Every PUBLISHED listing: the storefront's query.
    pub fn published() -> Self {
        Self {
            status: "PUBLISHED".into(),
            ..Self::default()
        }
    }

    /// Whether only status, category and kind narrow it: then its counts
    /// are kept by the projection.
    fn counted(&self) -> bool {
        search_term(self).is_none()
            && self.tags.is_empty()
            && self.seller_id.is_none()
            && self.min_price_minor.is_none()
            && self.max_price_minor.is_none()
    }
}

/// A count per facet value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct FacetCount {
    /// The value.
    pub value: String,
    /// How many listings match with it.
    pub count: i64,
}

/// What a page should carry besides its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Want {
    /// `total_count`.
    pub total: bool,
    /// `categories` and `tags`.
    pub facets: bool,
}

impl Want {
    /// Rows, total and facets.
    pub const ALL: Want = Want {
        total: true,
        facets: true,
    };
    /// Rows only.
    pub const ROWS: Want = Want {
        total: false,
        facets: false,
    };
}

/// One page of the catalogue.
#[derive(Debug, Clone)]
pub struct ListingPage {
    /// Rows with their cursors.
    pub rows: Vec<(ListingRow, String)>,
    /// Whether more rows follow.
    pub has_next_page: bool,
    /// Rows matching the query in all (0 unless asked for).
    pub total_count: i64,
    /// Whether `total_count` is exact; otherwise it is [`COUNT_CAP`] and
    /// more match.
    pub total_exact: bool,
    /// Categories of the matching rows (empty unless asked for).
    pub categories: Vec<FacetCount>,
    /// Tags of the matching rows (empty unless asked for).
    pub tags: Vec<FacetCount>,
    /// Whether the facets count every match; otherwise they count the
    /// first [`FACET_SAMPLE`].
    pub facets_exact: bool,
}

fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery) {
    qb.push(" WHERE status = ").push_bind(q.status.clone());
    if let Some(c) = &q.category {
        qb.push(" AND category = ").push_bind(c.to_lowercase());
    }
    if !q.tags.is_empty() {
        let tags: Vec<String> = q.tags.iter().map(|t| t.to_lowercase()).collect();
        qb.push(" AND tags @> ").push_bind(tags);
    }
    if let Some(s) = q.seller_id {
        qb.push(" AND seller_id = ").push_bind(s);
    }
    if let Some(k) = &q.kind {
        qb.push(" AND kind = ").push_bind(k.clone());
    }
    if let Some(p) = q.min_price_minor {
        qb.push(" AND price_minor >= ").push_bind(p);
    }
    if let Some(p) = q.max_price_minor {
        qb.push(" AND price_minor <= ").push_bind(p);
    }
    if let Some(s) = search_term(q) {
        qb.push(" AND search_doc @@ websearch_to_tsquery('english', ")
            .push_bind(s.to_owned())
            .push(")");
    }
}

/// The filter of the counter tables: status, category and kind.
fn push_counter_filter(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery) {
    qb.push(" WHERE status = ").push_bind(q.status.clone());
    if let Some(c) = &q.category {
        qb.push(" AND category = ").push_bind(c.to_lowercase());
    }
    if let Some(k) = &q.kind {
        qb.push(" AND kind = ").push_bind(k.clone());
    }
}

fn search_term(q: &ListingQuery) -> Option<&str> {
    q.search.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The matches of `q`, at most `limit` of them (any `limit` rows).
fn push_matches(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery, what: &str, limit: i64) {
    qb.push(format!("SELECT {what} FROM rm_listings"));
    push_filter(qb, q);
    qb.push(" LIMIT ").push_bind(limit);
}

/// Whether a query is a search and nothing else (besides its status): its
/// candidates then come from the narrow search rows.
fn search_only(q: &ListingQuery) -> bool {
    search_term(q).is_some()
        && q.category.is_none()
        && q.tags.is_empty()
        && q.seller_id.is_none()
        && q.kind.is_none()
        && q.min_price_minor.is_none()
        && q.max_price_minor.is_none()
}

/// A ranked search's candidates: `(listing_id, sort_key)` of at most
/// `limit` matches, as the GIN index finds them.
fn push_candidates(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery, limit: i64) {
    push_search_matches(qb, q, true, limit);
}

/// At most `limit` matches of a search: their ids and ranks when `ranked`,
/// else only that they exist (for counting).
fn push_search_matches(
    qb: &mut QueryBuilder<'_, Postgres>,
    q: &ListingQuery,
    ranked: bool,
    limit: i64,
) {
    if search_only(q) {
        // The query is parsed once, as a FROM item, not once per row (with
        // a generic plan nothing else folds it).
        qb.push("SELECT listing_id");
        if ranked {
            qb.push(", (ts_rank(search_doc, tsq) * 1000000)::bigint AS sort_key");
        }
        qb.push(" FROM rm_listing_search, websearch_to_tsquery('english', ")
            .push_bind(search_term(q).unwrap_or_default().to_owned())
            .push(") AS tsq WHERE status = ")
            .push_bind(q.status.clone())
            .push(" AND search_doc @@ tsq");
    } else {
        qb.push("SELECT listing_id");
        if ranked {
            qb.push(", ");
            Sort::Relevance.push_key(qb, search_term(q));
            qb.push(" AS sort_key");
        }
        qb.push(" FROM rm_listings");
        push_filter(qb, q);
    }
    qb.push(" LIMIT ").push_bind(limit);
}

/// The keyset page: `first + 1` rows after `after`, with their sort keys.
fn push_page(
    qb: &mut QueryBuilder<'_, Postgres>,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<(i64, Uuid)>,
    candidates: bool,
) {
    let term = search_term(q);
    if let (Sort::Relevance, Some(_)) = (sort, term) {
        // Ranking reads every candidate: bound them, taking the matches the
        // GIN index finds first (already gathered in `cand`, when the
        // statement has it); rank them narrow, and read the wide rows of
        // the page's alone.
        qb.push(format!(
            "SELECT {COLUMNS}, t.sort_key FROM (SELECT listing_id, sort_key FROM ("
        ));
        if candidates {
            qb.push("SELECT * FROM cand LIMIT ")
                .push_bind(RELEVANCE_CANDIDATES);
        } else {
            push_candidates(qb, q, RELEVANCE_CANDIDATES);
        }
        qb.push(") c WHERE true");
        if let Some((key, id)) = after {
            qb.push(" AND (sort_key, listing_id) < (")
                .push_bind(key)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
        qb.push(" ORDER BY sort_key DESC, listing_id DESC LIMIT ")
            .push_bind(super::limit_for(first))
            .push(
                ") t JOIN rm_listings USING (listing_id) ORDER BY t.sort_key DESC, listing_id DESC",
            );
        return;
    }
    qb.push(format!("SELECT {COLUMNS}, "));
    sort.push_key(qb, term);
    qb.push(" AS sort_key FROM ");
    qb.push("rm_listings");
    push_filter(qb, q);
    let (cmp, dir) = if sort.descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((key, id)) = after {
        qb.push(" AND (");
        sort.push_key(qb, term);
        qb.push(format!(", listing_id) {cmp} ("))
            .push_bind(key)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(" ORDER BY ");
    sort.push_key(qb, term);
    qb.push(format!(" {dir}, listing_id {dir} LIMIT "))
        .push_bind(super::limit_for(first));
}

/// One facet as a JSON array of `{value, count}`: from the counter tables
/// when they cover `q`, else over a sample of its matches.
fn push_facet(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery, tags: bool, candidates: bool) {
    qb.push("(SELECT coalesce(json_agg(f), '[]') FROM (");
    match (tags, q.counted()) {
        (false, true) => {
            qb.push("SELECT category AS value, sum(n)::bigint AS count FROM rm_listing_counts");
            push_counter_filter(qb, q);
            qb.push(" GROUP BY category HAVING sum(n) > 0");
        }
        (true, true) => {
            qb.push("SELECT tag AS value, sum(n)::bigint AS count FROM rm_listing_tag_counts");
            push_counter_filter(qb, q);
            qb.push(" GROUP BY tag HAVING sum(n) > 0");
        }
        (false, false) => {
            qb.push("SELECT category AS value, count(*) AS count FROM (");
            push_sample(qb, q, "category", candidates);
            qb.push(") s GROUP BY category");
        }
        (true, false) => {
            qb.push("SELECT tag AS value, count(*) AS count FROM (");
            push_sample(qb, q, "tags", candidates);
            qb.push(") s CROSS JOIN LATERAL unnest(s.tags) AS tag GROUP BY tag");
        }
    }
    qb.push(" ORDER BY 2 DESC, 1 LIMIT ")
        .push_bind(FACET_VALUES)
        .push(") f)");
}

/// The first [`FACET_SAMPLE`] matches of `q`: from `cand` when the
/// statement has it.
fn push_sample(
    qb: &mut QueryBuilder<'_, Postgres>,
    q: &ListingQuery,
    what: &str,
    candidates: bool,
) {
    if candidates {
        qb.push(format!(
            "SELECT {what} FROM (SELECT listing_id FROM cand LIMIT "
        ))
        .push_bind(FACET_SAMPLE)
        .push(") c JOIN rm_listings USING (listing_id)");
    } else {
        push_matches(qb, q, what, FACET_SAMPLE);
    }
}

/// The total count: from the counter table when it covers `q`, else
/// counted up to one past [`COUNT_CAP`] (from `cand` alone when it holds
/// every match).
fn push_total(qb: &mut QueryBuilder<'_, Postgres>, q: &ListingQuery, candidates: bool) {
    if candidates {
        qb.push("(SELECT CASE WHEN n <= ")
            .push_bind(RELEVANCE_CANDIDATES)
            .push(" THEN n ELSE (SELECT count(*) FROM (");
        push_search_matches(qb, q, false, COUNT_CAP + 1);
        qb.push(") c) END FROM (SELECT count(*) AS n FROM cand) k)");
        return;
    }
    if q.counted() {
        qb.push("(SELECT coalesce(sum(n), 0)::bigint FROM rm_listing_counts");
        push_counter_filter(qb, q);
        qb.push(")");
    } else {
        qb.push("(SELECT count(*) FROM (");
        push_matches(qb, q, "1", COUNT_CAP + 1);
        qb.push(") c)");
    }
}

/// What the one statement of a page with totals or facets returns.
#[derive(sqlx::FromRow)]
struct Combined {
    rows: sqlx::types::Json<Vec<Keyed>>,
    total: Option<i64>,
    categories: Option<sqlx::types::Json<Vec<FacetCount>>>,
    tags: Option<sqlx::types::Json<Vec<FacetCount>>>,
    sampled: Option<i64>,
}

/// The one statement of a page: the keyset page alone, or with the total
/// and the facets `want` asks for.
fn statement(
    prefix: &str,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<(i64, Uuid)>,
    want: Want,
) -> QueryBuilder<'static, Postgres> {
    if want == Want::ROWS {
        let mut qb = QueryBuilder::new(prefix);
        push_page(&mut qb, q, sort, first, after, false);
        return qb;
    }
    let dir = if sort.descending() { "DESC" } else { "ASC" };
    // A ranked search gathers its candidates once, one past the bound, for
    // the page, the total and the facets alike.
    let candidates = sort == Sort::Relevance && search_term(q).is_some();
    let mut qb = QueryBuilder::new(format!("{prefix}WITH "));
    if candidates {
        qb.push("cand AS MATERIALIZED (");
        push_candidates(&mut qb, q, RELEVANCE_CANDIDATES.max(FACET_SAMPLE) + 1);
        qb.push("), ");
    }
    qb.push("page AS (");
    push_page(&mut qb, q, sort, first, after, candidates);
    qb.push(format!(
        ") SELECT (SELECT coalesce(json_agg(page ORDER BY sort_key {dir}, listing_id {dir}), \
         '[]') FROM page) AS rows, "
    ));
    if want.total {
        push_total(&mut qb, q, candidates);
    } else {
        qb.push("NULL::bigint");
    }
    qb.push(" AS total, ");
    if want.facets {
        push_facet(&mut qb, q, false, candidates);
        qb.push(" AS categories, ");
        push_facet(&mut qb, q, true, candidates);
        qb.push(" AS tags, ");
    } else {
        qb.push("NULL::json AS categories, NULL::json AS tags, ");
    }
    if want.facets && candidates {
        qb.push("(SELECT count(*) FROM cand)");
    } else if want.facets && !q.counted() {
        qb.push("(SELECT count(*) FROM (");
        push_matches(&mut qb, q, "1", FACET_SAMPLE + 1);
        qb.push(") c)");
    } else {
        qb.push("NULL::bigint");
    }
    qb.push(" AS sampled");
    qb
}

/// The plan Postgres picks for the statement of [`search_with`], as
/// `EXPLAIN (FORMAT JSON)` shows it (for tests that a page is an index
/// read).
pub async fn explain(
    pool: &PgPool,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<&str>,
    want: Want,
) -> Result<serde_json::Value, sqlx::Error> {
    let after = after.and_then(cursor::decode);
    let mut qb = statement("EXPLAIN (FORMAT JSON) ", q, sort, first, after, want);
    let (plan,): (sqlx::types::Json<serde_json::Value>,) =
        qb.build_query_as().fetch_one(pool).await?;
    Ok(plan.0)
}

/// A page of the catalogue: `first` rows after `after`, with totals and facets.
pub async fn search(
    pool: &PgPool,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<&str>,
) -> Result<Result<ListingPage, InvalidCursor>, sqlx::Error> {
    search_with(pool, q, sort, first, after, Want::ALL).await
}

/// A page of the catalogue with only what `want` asks for besides the rows.
/// Rows, total and facets are read by one statement, so they agree.
pub async fn search_with(
    pool: &PgPool,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<&str>,
    want: Want,
) -> Result<Result<ListingPage, InvalidCursor>, sqlx::Error> {
    let after = match after.map(cursor::decode) {
        Some(None) => return Ok(Err(InvalidCursor)),
        Some(Some(c)) => Some(c),
        None => None,
    };
    let mut page = ListingPage {
        rows: Vec::new(),
        has_next_page: false,
        total_count: 0,
        total_exact: true,
        categories: Vec::new(),
        tags: Vec::new(),
        facets_exact: true,
    };
    let mut qb = statement("", q, sort, first, after, want);
    let rows: Vec<Keyed> = if want == Want::ROWS {
        qb.build_query_as().fetch_all(pool).await?
    } else {
        let combined: Combined = qb.build_query_as().fetch_one(pool).await?;
        if let Some(total) = combined.total {
            page.total_exact = total <= COUNT_CAP;
            page.total_count = total.min(COUNT_CAP);
        }
        page.categories = combined.categories.map(|j| j.0).unwrap_or_default();
        page.tags = combined.tags.map(|j| j.0).unwrap_or_default();
        page.facets_exact = combined.sampled.is_none_or(|n| n <= FACET_SAMPLE);
        combined.rows.0
    };
    let mut rows = rows;
    page.has_next_page = rows.len() > first;
    rows.truncate(first);
    page.rows = rows
        .into_iter()
        .map(|k| {
            let c = cursor::encode(k.sort_key, k.row.listing_id);
            (k.row, c)
        })
        .collect();
    Ok(Ok(page))
}

/// Whether `seller` has a listing (in any status) of the asset `content_hash`.
pub async fn sells_content(
    pool: &PgPool,
    seller: Uuid,
    content_hash: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rm_listings WHERE seller_id = $1 AND content_hash = $2)",
    )
    .bind(seller)
    .bind(content_hash)
    .fetch_one(pool)
    .await
}
