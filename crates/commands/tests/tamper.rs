//! Tamper evidence on a real Postgres: edits and deletions made directly in
//! the database, around the append-only guard, are found by the chain check.

mod common;

use common::*;
use marketplace_commands::audit::verify_chains;
use marketplace_domain::account::Account;
use marketplace_domain::listing::{Listing, ListingSpec};
use marketplace_domain::values::*;
use marketplace_domain::Aggregate;
use marketplace_store::{Position, StreamId};

/// Runs `sql` as the superuser with the append-only triggers switched off.
async fn tamper(m: &Market, sql: &str) {
    let mut tx = m.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass the guard (superuser)");
    let done = sqlx::query(sql).execute(&mut *tx).await.expect("tamper");
    assert_eq!(done.rows_affected(), 1, "{sql}");
    tx.commit().await.expect("commit");
}

async fn checked(m: &Market) -> Vec<marketplace_commands::audit::ChainBreak> {
    verify_chains(&*m.store, None, &|_, _| {})
        .await
        .expect("verify")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_log_verifies_and_an_edited_event_is_named_by_stream_and_revision() {
    let m = market().await;
    let seller = m.account(vec![Role::Seller], 0).await;
    let buyer = m.account(vec![Role::Buyer], 5_000).await;
    let listing = m
        .listing(
            &seller,
            ListingSpec::Physical {
                quantity: Quantity(3),
            },
            1_000,
        )
        .await;
    m.place(&buyer, listing, 1).await;
    assert_eq!(checked(&m).await, vec![], "an untouched log has no breaks");

    // Someone doubles the deposit directly in the database.
    let stream = StreamId::new(Account::CATEGORY, buyer.account_id.0).expect("stream");
    tamper(
        &m,
        &format!(
            "UPDATE events SET data = jsonb_set(data, '{{amount,minor}}', '10000') \
             WHERE stream_id = '{stream}' AND revision = 1"
        ),
    )
    .await;
    let breaks = checked(&m).await;
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0].stream.as_ref(), Some(&stream));
    assert_eq!(breaks[0].revision, Some(1));
    assert!(breaks[0].reason.contains("does not match its hash"));
    // The one-stream check finds it too.
    let one = verify_chains(&*m.store, Some(&stream), &|_, _| {})
        .await
        .expect("verify");
    assert_eq!(one.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_is_detected_in_its_stream_and_in_the_log() {
    let m = market().await;
    let seller = m.account(vec![Role::Seller], 0).await;
    let listing = m
        .listing(
            &seller,
            ListingSpec::Physical {
                quantity: Quantity(3),
            },
            1_000,
        )
        .await;
    let buyer = m.account(vec![Role::Buyer], 5_000).await;
    // The listing's stream: created (0), published (1). Delete the creation.
    let stream = StreamId::new(Listing::CATEGORY, listing.0).expect("stream");
    let position: i64 = sqlx::query_scalar(&format!(
        "SELECT position FROM events WHERE stream_id = '{stream}' AND revision = 0"
    ))
    .fetch_one(&m.pool)
    .await
    .expect("position");
    tamper(
        &m,
        &format!("DELETE FROM events WHERE stream_id = '{stream}' AND revision = 0"),
    )
    .await;
    let breaks = checked(&m).await;
    assert!(
        breaks.iter().any(|b| b.stream.is_none()
            && b.reason
                .contains(&format!("positions {position}..{position}"))),
        "the missing position is reported: {breaks:?}"
    );
    assert!(
        breaks
            .iter()
            .any(|b| b.stream.as_ref() == Some(&stream) && b.revision == Some(1)),
        "the stream's gap is reported at the next revision: {breaks:?}"
    );
    let _ = buyer;
    assert!(Position(position as u64) > Position::START);
}
