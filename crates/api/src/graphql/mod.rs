//! The GraphQL schema of `../shared/api-contract.graphql`: types, queries,
//! mutations, subscriptions, and the per-request context they read.

mod commerce;
mod mutation;
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
pub use subscription::{SubscriptionBudget, SubscriptionRoot, MAX_SUBSCRIPTIONS_PER_CONNECTION};

/// Every query: accounts and the catalogue, orders and reviews.
#[derive(MergedObject, Default, Debug)]
pub struct Query(
    QueryRoot,
    read::CommerceQuery,
    read::OpsQuery,
    read::AuditQuery,
);

/// Every mutation: accounts and listings, money, orders and reviews.
#[derive(MergedObject, Default, Debug)]
pub struct Mutation(MutationRoot, commerce::CommerceMutation);

/// The served schema.
pub type MarketplaceSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Most complex query accepted (fields, with connection sizes multiplied in).
pub const MAX_COMPLEXITY: usize = 5_000;

/// Builds the schema over the application state.
pub fn build_schema(state: AppState) -> MarketplaceSchema {
    let accounts = DataLoader::new(types::AccountLoader(state.pool.clone()), tokio::spawn);
    let timing = crate::metrics::RequestMetrics(state.requests.clone());
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .data(state)
        .data(accounts)
        .extension(timing)
        .limit_depth(MAX_DEPTH)
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
