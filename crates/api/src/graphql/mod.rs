//! The GraphQL schema of `../shared/api-contract.graphql`: types, queries,
//! mutations, subscriptions, and the per-request context they read.
//! [`admission`] checks every operation's text, shape and rate before it
//! runs, on HTTP and WebSocket alike.

pub mod admission;
mod commerce;
mod erasure;
mod mutation;
mod payments;
mod query;
mod read;
mod subscription;
mod types;

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{MergedObject, Schema};

use crate::auth::Claims;
use crate::error::ApiError;
use crate::state::AppState;

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use subscription::{
    ConnectionTrace, SubscriptionBudget, SubscriptionRoot, MAX_SUBSCRIPTIONS_PER_CONNECTION,
};

/// Every query: accounts and the catalogue, orders and reviews.
#[derive(MergedObject, Default, Debug)]
pub struct Query(
    QueryRoot,
    read::CommerceQuery,
    read::OpsQuery,
    read::AuditQuery,
    payments::PaymentQuery,
);

/// Every mutation: accounts and listings, money, orders and reviews, and
/// erasure.
#[derive(MergedObject, Default, Debug)]
pub struct Mutation(
    MutationRoot,
    commerce::CommerceMutation,
    erasure::ErasureMutation,
);

/// The served schema.
pub type MarketplaceSchema = Schema<Query, Mutation, SubscriptionRoot>;

pub use admission::MAX_DEPTH;

/// Most complex operation accepted. Each field costs 1; a connection costs
/// its page size (`first`, default 20) times what is selected under it,
/// plus [`PAGE_COST`]; an order's `lines` cost up to
/// [`marketplace_domain::order::MAX_LINES`] times theirs. So the figure
/// bounds the rows an operation can read, and with the root-field cap of
/// [`admission`], the SQL it can run.
pub const MAX_COMPLEXITY: usize = 25_000;

/// What one page read costs before its rows: its statements.
pub const PAGE_COST: usize = 10;

/// The rows a stream's history is costed at (audit streams are long).
pub const HISTORY_COST_ROWS: usize = 100;

/// The complexity of a connection field: [`PAGE_COST`] plus its page size
/// times the complexity of what is selected under it.
pub fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = first
        .unwrap_or(query::DEFAULT_FIRST)
        .clamp(0, query::MAX_FIRST);
    PAGE_COST + usize::try_from(rows).unwrap_or(0) * child_complexity
}

/// Builds the schema over the application state.
pub fn build_schema(state: AppState) -> MarketplaceSchema {
    let accounts = DataLoader::new(types::AccountLoader(state.pool.clone()), tokio::spawn);
    let listings = DataLoader::new(types::ListingLoader(state.pool.clone()), tokio::spawn);
    let lines = DataLoader::new(read::OrderLinesLoader(state.pool.clone()), tokio::spawn);
    let timing = crate::metrics::RequestMetrics(state.requests.clone());
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .data(state)
        .data(accounts)
        .data(listings)
        .data(lines)
        .extension(timing)
        .extension(admission::Admission)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// Who is calling, per request.
#[derive(Debug, Clone, Default)]
pub struct Viewer(pub Option<Arc<Claims>>);

impl Viewer {
    /// The caller's claims, or UNAUTHENTICATED.
    pub fn require(&self) -> Result<&Claims, ApiError> {
        self.0.as_deref().ok_or_else(|| {
            ApiError::Unauthenticated("sign in first: send Authorization: Bearer <token>".into())
        })
    }
}

/// The SDL of the served schema.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .finish()
        .sdl()
}
