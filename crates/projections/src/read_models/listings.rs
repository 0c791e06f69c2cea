//! The `listings` read model: the catalogue, with filters, sorts, keyset
//! pagination, totals and facets.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_domain::listing::{ListingEvent, ListingKind};
use marketplace_store::RecordedEvent;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{cursor, decode};
use crate::runtime::{Projection, ProjectionError};

/// Stable name.
pub const NAME: &str = "listings";

/// Folds listing events into `rm_listings`.
#[derive(Debug, Clone, Copy)]
pub struct ListingsProjection;

struct NewRow {
    id: Uuid,
    seller: Uuid,
    kind: &'static str,
    title: String,
    description: String,
    category: String,
    tags: String,
    price_minor: i64,
    currency: String,
    quantity: i32,
    status: &'static str,
    content_hash: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn kind_name(k: ListingKind) -> &'static str {
    match k {
        ListingKind::Physical => "PHYSICAL",
        ListingKind::Digital => "DIGITAL",
    }
}

#[async_trait]
impl Projection for ListingsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> i32 {
        1
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        // Fold the batch in memory first: a listing created and published in
        // the same batch becomes one insert, not an insert and an update.
        let mut created: Vec<NewRow> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        let mut status_updates: HashMap<Uuid, (&'static str, DateTime<Utc>)> = HashMap::new();
        for e in events {
            match e.stream_id.category() {
                "listing" => match decode::<ListingEvent>(e)? {
                    ListingEvent::Created(c) => {
                        index.insert(c.listing_id.0, created.len());
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
                            price_minor: c.price.minor,
                            currency: c.price.currency.as_str().to_owned(),
                            quantity: i32::try_from(c.quantity.0).unwrap_or(i32::MAX),
                            status: "DRAFT",
                            content_hash: c.content_hash.map(|h| h.as_str().to_owned()),
                            created_at: c.created_at,
                            updated_at: c.created_at,
                        });
                    }
                    ListingEvent::Published(p) => match index.get(&p.listing_id.0) {
                        Some(&i) => {
                            created[i].status = "PUBLISHED";
                            created[i].updated_at = p.published_at;
                        }
                        None => {
                            status_updates.insert(p.listing_id.0, ("PUBLISHED", p.published_at));
                        }
                    },
                    _ => {}
                },
                // Categories this read model does not show.
                "account" | "email" => {}
                other => tracing::trace!(category = other, "listings: category not projected"),
            }
        }
        if !created.is_empty() {
            insert_rows(tx, created).await?;
        }
        if !status_updates.is_empty() {
            let (ids, rest): (Vec<Uuid>, Vec<_>) = status_updates.into_iter().unzip();
            let (statuses, times): (Vec<&str>, Vec<DateTime<Utc>>) = rest.into_iter().unzip();
            sqlx::query(
                "UPDATE rm_listings l SET status = u.status, updated_at = u.at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, status, at) \
                 WHERE l.listing_id = u.id",
            )
            .bind(ids)
            .bind(statuses)
            .bind(times)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
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
    for r in rows {
        id.push(r.id);
        seller.push(r.seller);
        kind.push(r.kind);
        title.push(r.title);
        description.push(r.description);
        category.push(r.category);
        tags.push(r.tags);
        price.push(r.price_minor);
        currency.push(r.currency);
        quantity.push(r.quantity);
        status.push(r.status);
        hash.push(r.content_hash);
        created.push(r.created_at);
        updated.push(r.updated_at);
    }
    sqlx::query(
        "INSERT INTO rm_listings (listing_id, seller_id, kind, title, description, category, \
             tags, price_minor, currency, quantity, status, content_hash, created_at, updated_at) \
         SELECT id, seller, kind, title, description, category, \
                CASE WHEN tags = '' THEN '{}'::text[] ELSE string_to_array(tags, ',') END, \
                price, currency, quantity, status, hash, created, updated \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::bigint[], $9::text[], $10::int[], $11::text[], $12::text[], \
                     $13::timestamptz[], $14::timestamptz[]) \
              AS t(id, seller, kind, title, description, category, tags, price, currency, \
                   quantity, status, hash, created, updated)",
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
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One listing as the API shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    /// Units available.
    pub quantity: i32,
    /// DRAFT, PUBLISHED or DELISTED.
    pub status: String,
    /// sha256 of a digital asset.
    pub content_hash: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "listing_id, seller_id, kind, title, description, category, tags, \
    price_minor, currency, quantity, status, content_hash, created_at, updated_at";

/// One listing by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<ListingRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rm_listings WHERE listing_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Catalogue order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Newest first.
    #[default]
    Newest,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
}

impl Sort {
    fn key(self) -> &'static str {
        match self {
            Sort::Newest => "(extract(epoch from created_at) * 1000000)::bigint",
            Sort::PriceAsc | Sort::PriceDesc => "price_minor",
        }
    }

    fn descending(self) -> bool {
        match self {
            Sort::Newest | Sort::PriceDesc => true,
            Sort::PriceAsc => false,
        }
    }

    fn key_of(self, row: &ListingRow) -> i64 {
        match self {
            Sort::Newest => row.created_at.timestamp_micros(),
            Sort::PriceAsc | Sort::PriceDesc => row.price_minor,
        }
    }
}

/// What to select from the catalogue. Every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct ListingQuery {
    /// Substring of title, description or a tag (case-insensitive).
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

/// A count per facet value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FacetCount {
    /// The value.
    pub value: String,
    /// How many listings match with it.
    pub count: i64,
}

/// One page of the catalogue.
#[derive(Debug, Clone)]
pub struct ListingPage {
    /// Rows with their cursors.
    pub rows: Vec<(ListingRow, String)>,
    /// Whether more rows follow.
    pub has_next_page: bool,
    /// Rows matching the query in all.
    pub total_count: i64,
    /// Categories of the matching rows.
    pub categories: Vec<FacetCount>,
    /// Tags of the matching rows.
    pub tags: Vec<FacetCount>,
}

/// The cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

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
    if let Some(s) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let pattern = format!(
            "%{}%",
            s.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        qb.push(" AND (title ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR description ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR array_to_string(tags, ' ') ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
}

/// A page of the catalogue: `first` rows after `after`, with totals and facets.
pub async fn search(
    pool: &PgPool,
    q: &ListingQuery,
    sort: Sort,
    first: usize,
    after: Option<&str>,
) -> Result<Result<ListingPage, InvalidCursor>, sqlx::Error> {
    let after = match after.map(cursor::decode) {
        Some(None) => return Ok(Err(InvalidCursor)),
        Some(Some(c)) => Some(c),
        None => None,
    };
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM rm_listings"));
    push_filter(&mut qb, q);
    let (cmp, dir) = if sort.descending() {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((key, id)) = after {
        qb.push(format!(" AND ({}, listing_id) {cmp} (", sort.key()))
            .push_bind(key)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(format!(
        " ORDER BY {} {dir}, listing_id {dir} LIMIT ",
        sort.key()
    ))
    .push_bind(i64::try_from(first + 1).unwrap_or(i64::MAX));
    let mut rows: Vec<ListingRow> = qb.build_query_as().fetch_all(pool).await?;
    let has_next_page = rows.len() > first;
    rows.truncate(first);

    let mut count = QueryBuilder::new("SELECT count(*) FROM rm_listings");
    push_filter(&mut count, q);
    let total_count: i64 = count.build_query_scalar().fetch_one(pool).await?;

    let mut cats =
        QueryBuilder::new("SELECT category AS value, count(*) AS count FROM rm_listings");
    push_filter(&mut cats, q);
    cats.push(" GROUP BY category ORDER BY count(*) DESC, category LIMIT 50");
    let categories = cats.build_query_as().fetch_all(pool).await?;

    let mut tags = QueryBuilder::new(
        "SELECT tag AS value, count(*) AS count FROM rm_listings CROSS JOIN LATERAL unnest(tags) AS tag",
    );
    push_filter(&mut tags, q);
    tags.push(" GROUP BY tag ORDER BY count(*) DESC, tag LIMIT 50");
    let tags = tags.build_query_as().fetch_all(pool).await?;

    Ok(Ok(ListingPage {
        rows: rows
            .into_iter()
            .map(|r| {
                let c = cursor::encode(sort.key_of(&r), r.listing_id);
                (r, c)
            })
            .collect(),
        has_next_page,
        total_count,
        categories,
        tags,
    }))
}
