//! Hot streams on a real Postgres: concurrent commands for one stream are
//! decided one after another and appended in batches, each with its own
//! outcome; two processes on one stream stay exact through the expected
//! revision.

mod common;

use std::collections::BTreeSet;

use chrono::Utc;
use common::*;
use marketplace_commands::{CommandError, CommandHandler};
use marketplace_domain::account::{Account, AccountCommand, AccountError, HoldFunds};
use marketplace_domain::values::*;
use marketplace_domain::Aggregate;
use marketplace_store::StreamId;

fn hold(minor: i64) -> AccountCommand {
    AccountCommand::Hold(HoldFunds {
        order_id: OrderId(uuid::Uuid::now_v7()),
        amount: eur(minor),
        at: Utc::now(),
    })
}

/// 60 buyers' worth of holds on one wallet at once, from two processes (two
/// handlers, each with its own cache and queue): exactly what the balance
/// covers is held, every other hold is refused on its own, and the batches
/// carried several commands per append.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_stream_keep_their_own_outcomes() {
    let m = market().await;
    let wallet = m.account(vec![Role::Buyer], 2_000).await;
    let other = CommandHandler::new(m.store.clone());
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let handler = if i % 2 == 0 {
                m.handler.clone()
            } else {
                other.clone()
            };
            let ctx = m.ctx();
            let id = wallet.account_id.0;
            tokio::spawn(async move { handler.execute::<Account>(id, &ctx, &hold(100)).await })
        })
        .collect();
    let mut held = 0;
    let mut tokens = BTreeSet::new();
    for call in calls {
        match call.await.expect("task") {
            Ok(done) => {
                assert_eq!(done.appended, 1);
                tokens.insert(done.position);
                held += 1;
            }
            Err(CommandError::Rejected(AccountError::InsufficientFunds { .. })) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(held, 20, "2,000 covers twenty holds of 100, no more");
    let state = m.wallet(wallet.account_id).await;
    assert_eq!(
        (state.balance(&eur(0).currency).minor, state.escrow.len()),
        (0, 20)
    );
    let stream = StreamId::new(Account::CATEGORY, wallet.account_id.0).expect("stream");
    let events = m.store.read_stream(&stream, 0).await.expect("read");
    let holds: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "account.funds_held")
        .collect();
    assert_eq!(holds.len(), 20, "one event per successful hold");
    assert!(
        tokens.len() < 20,
        "holds shared appends (batches): {} distinct tokens for 20 holds",
        tokens.len()
    );
    let positions: BTreeSet<_> = holds.iter().map(|e| e.position).collect();
    assert!(
        tokens.is_subset(&positions),
        "every token is the last position of an append of holds"
    );
}
