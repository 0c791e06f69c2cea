//! The `reviews` read model: reviews of listings and their moderation, by
//! id, as keyset pages of one listing's reviews (newest first; APPROVED
//! only unless asked for all) and as the moderation queue (PENDING, oldest
//! first).
//!
//! `review.submitted` inserts the review (PENDING); `review.approved` and
//! `review.rejected` (with its reason) settle it. A batch is folded in
//! memory first: a review submitted and moderated in the same batch is
//! inserted settled. The listing's rating lives in the `listings` read
//! model.
//!
//! A comment is personal (free text that can identify its author):
//! `account.erased` empties the comments of that author's reviews in the
//! batch's transaction, and a comment read after the erasure is already
//! erased, so a rebuild writes the same empty comment. The rating, status
//! and author id stay: ratings still add up.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use marketplace_consumers::Envelope;
use marketplace_domain::account::AccountEvent;
use marketplace_domain::review::ReviewEvent;
use marketplace_domain::{AggregateKind, Event};
use sqlx::{PgConnection, PgPool, QueryBuilder};
use uuid::Uuid;

use super::{limit_for, time_cursor, time_cursor_of, InvalidCursor, Page};
use crate::builds::Table;
use crate::runtime::{Projection, ProjectionError};

/// Stable name.
pub const NAME: &str = "reviews";

/// The version of the tables and the fold below; bump it when either
/// changes, and the runtime rebuilds the read model without downtime.
/// Version 2 empties erased authors' comments.
pub const VERSION: i32 = 2;

/// The tables of [`VERSION`], created in each build's schema.
pub const TABLES: &[Table] = &[Table {
    name: "rm_reviews",
    create: "CREATE TABLE rm_reviews (
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
    )",
    indexes: &[
        // A listing's reviews (approved only, or all), newest first.
        "CREATE INDEX IF NOT EXISTS rm_reviews_listing_idx \
         ON rm_reviews (listing_id, status, created_at DESC, review_id DESC)",
        // The moderation queue, oldest first.
        "CREATE INDEX IF NOT EXISTS rm_reviews_pending_idx \
         ON rm_reviews (created_at, review_id) WHERE status = 'PENDING'",
    ],
}];

/// Folds review events into `rm_reviews`.
#[derive(Debug, Clone, Copy)]
pub struct ReviewsProjection;

struct NewReview {
    id: Uuid,
    listing: Uuid,
    order: Uuid,
    author: Uuid,
    rating: i32,
    comment: String,
    status: &'static str,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A moderation decision: the last in log order wins.
struct Moderation {
    status: &'static str,
    reason: Option<String>,
    at: DateTime<Utc>,
}

#[async_trait]
impl Projection for ReviewsProjection {
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
            // Accounts for their erasures.
            AggregateKind::Review | AggregateKind::Account => true,
            AggregateKind::EmailClaim
            | AggregateKind::Listing
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
        let mut submitted: Vec<NewReview> = Vec::new();
        let mut moderated: HashMap<Uuid, Moderation> = HashMap::new();
        let mut erased: Vec<Uuid> = Vec::new();
        for e in events {
            match &e.event {
                Event::Review(review) => match review {
                    ReviewEvent::Submitted(s) => submitted.push(NewReview {
                        id: s.review_id.0,
                        listing: s.listing_id.0,
                        order: s.order_id.0,
                        author: s.author_id.0,
                        rating: i32::from(s.rating.stars()),
                        // Erased: read after its author's erasure.
                        comment: s
                            .comment
                            .known()
                            .map_or_else(String::new, |c| c.as_str().to_owned()),
                        status: "PENDING",
                        reason: None,
                        created_at: s.submitted_at,
                        updated_at: s.submitted_at,
                    }),
                    ReviewEvent::Approved(a) => {
                        moderated.insert(
                            a.review_id.0,
                            Moderation {
                                status: "APPROVED",
                                reason: None,
                                at: a.approved_at,
                            },
                        );
                    }
                    ReviewEvent::Rejected(r) => {
                        moderated.insert(
                            r.review_id.0,
                            Moderation {
                                status: "REJECTED",
                                reason: Some(r.reason.as_str().to_owned()),
                                at: r.rejected_at,
                            },
                        );
                    }
                },
                Event::Account(AccountEvent::Erased(x)) => erased.push(x.account_id.0),
                // Aggregates this read model does not show.
                Event::Account(_)
                | Event::EmailClaim(_)
                | Event::Listing(_)
                | Event::Order(_)
                | Event::Payment(_)
                | Event::Asset(_) => {}
            }
        }
        for review in &mut submitted {
            if let Some(m) = moderated.remove(&review.id) {
                review.status = m.status;
                review.reason = m.reason;
                review.updated_at = m.at;
            }
        }
        if !submitted.is_empty() {
            insert_reviews(tx, submitted).await?;
        }
        if !moderated.is_empty() {
            let n = moderated.len();
            let mut ids = Vec::with_capacity(n);
            let mut statuses = Vec::with_capacity(n);
            let mut reasons = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            for (id, m) in moderated {
                ids.push(id);
                statuses.push(m.status);
                reasons.push(m.reason);
                times.push(m.at);
            }
            sqlx::query(
                "UPDATE rm_reviews r SET status = u.status, rejection_reason = u.reason, \
                     updated_at = u.at \
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) \
                      AS u(id, status, reason, at) \
                 WHERE r.review_id = u.id",
            )
            .bind(ids)
            .bind(statuses)
            .bind(reasons)
            .bind(times)
            .execute(&mut *tx)
            .await?;
        }
        if !erased.is_empty() {
            sqlx::query("UPDATE rm_reviews SET comment = '' WHERE author_id = ANY($1)")
                .bind(erased)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

async fn insert_reviews(tx: &mut PgConnection, rows: Vec<NewReview>) -> Result<(), sqlx::Error> {
    let n = rows.len();
    let mut id = Vec::with_capacity(n);
    let mut listing = Vec::with_capacity(n);
    let mut order = Vec::with_capacity(n);
    let mut author = Vec::with_capacity(n);
    let mut rating = Vec::with_capacity(n);
    let mut comment = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    for r in rows {
        id.push(r.id);
        listing.push(r.listing);
        order.push(r.order);
        author.push(r.author);
        rating.push(r.rating);
        comment.push(r.comment);
        status.push(r.status);
        reason.push(r.reason);
        created.push(r.created_at);
        updated.push(r.updated_at);
    }
    sqlx::query(
        "INSERT INTO rm_reviews (review_id, listing_id, order_id, author_id, rating, comment, \
             status, rejection_reason, created_at, updated_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], \
                              $6::text[], $7::text[], $8::text[], $9::timestamptz[], \
                              $10::timestamptz[])",
    )
    .bind(id)
    .bind(listing)
    .bind(order)
    .bind(author)
    .bind(rating)
    .bind(comment)
    .bind(status)
    .bind(reason)
    .bind(created)
    .bind(updated)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One review as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct ReviewRow {
    /// Id.
    pub review_id: Uuid,
    /// The listing reviewed.
    pub listing_id: Uuid,
    /// The order it was bought in.
    pub order_id: Uuid,
    /// The author (the order's buyer).
    pub author_id: Uuid,
    /// Stars, 1 to 5.
    pub rating: i32,
    /// Text.
    pub comment: String,
    /// PENDING, APPROVED or REJECTED.
    pub status: String,
    /// Why REJECTED.
    pub rejection_reason: Option<String>,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Last moderation (or submission).
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "review_id, listing_id, order_id, author_id, rating, comment, status, \
    rejection_reason, created_at, updated_at";

/// One review by id.
pub async fn by_id(pool: &PgPool, id: Uuid) -> Result<Option<ReviewRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM rm_reviews WHERE review_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A page of `listing_id`'s reviews, newest first: APPROVED ones only, or
/// every status when `include_all` (for ADMIN).
pub async fn for_listing(
    pool: &PgPool,
    listing_id: Uuid,
    include_all: bool,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<ReviewRow>, InvalidCursor>, sqlx::Error> {
    let after = match time_cursor(after) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let filter = |qb: &mut QueryBuilder<'_, sqlx::Postgres>| {
        qb.push(" WHERE listing_id = ").push_bind(listing_id);
        if !include_all {
            qb.push(" AND status = 'APPROVED'");
        }
    };
    let (rows, total_count): (Vec<ReviewRow>, i64) = super::page_and_total(
        pool,
        |qb| {
            qb.push(format!("SELECT {COLUMNS} FROM rm_reviews"));
            filter(qb);
            if let Some((at, id)) = after {
                qb.push(" AND (created_at, review_id) < (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
            }
            qb.push(" ORDER BY created_at DESC, review_id DESC LIMIT ")
                .push_bind(limit_for(first));
        },
        "created_at DESC, review_id DESC",
        |qb| {
            qb.push("SELECT count(*) FROM rm_reviews");
            filter(qb);
        },
    )
    .await?;
    Ok(Ok(page(rows, first, total_count)))
}

/// The moderation queue: a page of PENDING reviews, oldest first.
pub async fn pending(
    pool: &PgPool,
    first: usize,
    after: Option<&str>,
) -> Result<Result<Page<ReviewRow>, InvalidCursor>, sqlx::Error> {
    let after = match time_cursor(after) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let (rows, total_count): (Vec<ReviewRow>, i64) = super::page_and_total(
        pool,
        |qb| {
            qb.push(format!(
                "SELECT {COLUMNS} FROM rm_reviews WHERE status = 'PENDING'"
            ));
            if let Some((at, id)) = after {
                qb.push(" AND (created_at, review_id) > (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
            }
            qb.push(" ORDER BY created_at, review_id LIMIT ")
                .push_bind(limit_for(first));
        },
        "created_at, review_id",
        |qb| {
            qb.push("SELECT count(*) FROM rm_reviews WHERE status = 'PENDING'");
        },
    )
    .await?;
    Ok(Ok(page(rows, first, total_count)))
}

fn page(mut rows: Vec<ReviewRow>, first: usize, total_count: i64) -> Page<ReviewRow> {
    let has_next_page = rows.len() > first;
    rows.truncate(first);
    Page {
        rows: rows
            .into_iter()
            .map(|r| {
                let c = time_cursor_of(r.created_at, r.review_id);
                (r, c)
            })
            .collect(),
        has_next_page,
        total_count,
    }
}
