//! One module per read model: its batch fold (a [`crate::Projection`]) and
//! the queries the API runs against it.
//!
//! Each fold matches the decoded [`marketplace_domain::Event`] exhaustively
//! and names what it ignores; `clippy::wildcard_enum_match_arm` is denied
//! in every read model, so a new event (or aggregate) is an error in each
//! fold until it decides about it.
//!
//! Shared here: the opaque keyset cursor, and the [`Page`] and
//! [`InvalidCursor`] types of the paginated queries.

#![deny(clippy::wildcard_enum_match_arm)]

pub mod accounts;
pub mod listings;
pub mod notifications;
pub mod orders;
pub mod reviews;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The cursor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

/// One keyset page of rows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Rows with their cursors.
    pub rows: Vec<(T, String)>,
    /// Whether more rows follow.
    pub has_next_page: bool,
    /// Rows matching the query in all (ignoring the cursor).
    pub total_count: i64,
}

/// Reads an `after` cursor whose sort key is a timestamp in microseconds.
pub(crate) fn time_cursor(
    after: Option<&str>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, InvalidCursor> {
    let Some(raw) = after else { return Ok(None) };
    let (micros, id) = cursor::decode(raw).ok_or(InvalidCursor)?;
    let at = DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
    Ok(Some((at, id)))
}

/// The cursor of a row sorted by (`at`, `id`).
pub(crate) fn time_cursor_of(at: DateTime<Utc>, id: Uuid) -> String {
    cursor::encode(at.timestamp_micros(), id)
}

/// The `LIMIT` that fetches one row past a page of `first`, to tell whether
/// another page follows.
pub(crate) fn limit_for(first: usize) -> i64 {
    i64::try_from(first.saturating_add(1)).unwrap_or(i64::MAX)
}

/// Runs a keyset page and its total as one statement, so both come from
/// one snapshot: `rows` pushes the page's `SELECT` (ending in its `ORDER
/// BY … LIMIT`), `order` repeats its order for the aggregation, `count`
/// pushes the `SELECT count(*) …` of all its matches.
pub(crate) async fn page_and_total<R: serde::de::DeserializeOwned + Send + Unpin + 'static>(
    pool: &sqlx::PgPool,
    rows: impl FnOnce(&mut sqlx::QueryBuilder<'static, sqlx::Postgres>),
    order: &str,
    count: impl FnOnce(&mut sqlx::QueryBuilder<'static, sqlx::Postgres>),
) -> Result<(Vec<R>, i64), sqlx::Error> {
    let mut qb = sqlx::QueryBuilder::new("WITH page AS (");
    rows(&mut qb);
    qb.push(format!(
        ") SELECT (SELECT coalesce(json_agg(page ORDER BY {order}), '[]') FROM page) AS rows, ("
    ));
    count(&mut qb);
    qb.push(") AS total");
    let (rows, total): (sqlx::types::Json<Vec<R>>, i64) =
        qb.build_query_as().fetch_one(pool).await?;
    Ok((rows.0, total))
}

/// An opaque keyset cursor over (sort key, id).
pub(crate) mod cursor {
    use uuid::Uuid;

    /// Encodes a cursor.
    pub fn encode(key: i64, id: Uuid) -> String {
        hex::encode(format!("{key}|{id}"))
    }

    /// Decodes a cursor; `None` if it was not made by [`encode`].
    pub fn decode(cursor: &str) -> Option<(i64, Uuid)> {
        let raw = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
        let (key, id) = raw.split_once('|')?;
        Some((key.parse().ok()?, Uuid::try_parse(id).ok()?))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips_and_refuses_garbage() {
            let id = uuid::Uuid::now_v7();
            assert_eq!(super::decode(&super::encode(-5, id)), Some((-5, id)));
            assert_eq!(super::decode("zz"), None);
            assert_eq!(super::decode(&hex::encode("nope")), None);
        }
    }
}
