//! Queries: served from the read models.

use async_graphql::{Context, Object, ID};
use marketplace_domain::values::{Currency, Money as DomainMoney, Role as DomainRole};
use std::sync::Arc;

use marketplace_projections::read_models::{accounts, listings};

use super::types::*;
use super::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::read_cache::PageKey;
use crate::state::AppState;

/// Default page size of connections.
pub const DEFAULT_FIRST: i32 = 20;
/// Largest page size of connections.
pub const MAX_FIRST: i32 = 100;

/// Validates `first`: default 20, 0..=100.
pub fn page_size(first: Option<i32>) -> Result<usize, ApiError> {
    let n = first.unwrap_or(DEFAULT_FIRST);
    if !(0..=MAX_FIRST).contains(&n) {
        return Err(ApiError::BadUserInput(format!(
            "first must be between 0 and {MAX_FIRST}"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The query root.
#[derive(Debug, Default)]
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The signed-in account (null without a token).
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Option<Account>> {
        let Some(claims) = ctx.data::<Viewer>()?.0.as_deref() else {
            return Ok(None);
        };
        let state = ctx.data::<AppState>()?;
        Ok(accounts::by_id(&state.pool, claims.sub)
            .await
            .map_err(ApiError::from)?
            .map(Account::from))
    }

    /// One listing. Drafts and delisted listings are visible to their seller and admins only.
    async fn listing(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Listing>> {
        let id = parse_id(&id, "id")?;
        let viewer = ctx.data::<Viewer>()?;
        let Some(row) = listing_row(ctx, id).await? else {
            return Ok(None);
        };
        let visible = row.status == "PUBLISHED"
            || viewer
                .0
                .as_deref()
                .is_some_and(|c| c.sub == row.seller_id || c.has(DomainRole::Admin));
        Ok(visible.then_some(Listing(row)))
    }

    /// The catalogue.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn listings(
        &self,
        ctx: &Context<'_>,
        filter: Option<ListingFilter>,
        sort: Option<ListingSort>,
        #[graphql(validator(maximum = 100, minimum = 0))] first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<ListingConnection> {
        let state = ctx.data::<AppState>()?;
        let viewer = ctx.data::<Viewer>()?;
        let first = page_size(first)?;
        let filter = filter.unwrap_or_default();
        let status = filter.status.unwrap_or(ListingStatus::Published);
        let mut seller_id = filter
            .seller_id
            .as_ref()
            .map(|id| parse_id(id, "sellerId"))
            .transpose()?;
        if status != ListingStatus::Published {
            let claims = viewer.require()?;
            if !claims.has(DomainRole::Admin) {
                match seller_id {
                    Some(s) if s != claims.sub => {
                        return Err(ApiError::Forbidden(
                            "only the seller or an admin can list unpublished listings".into(),
                        ))
                    }
                    _ => seller_id = Some(claims.sub),
                }
            }
        }
        let price = |d: &Option<Decimal>| -> Result<Option<i64>, ApiError> {
            d.as_ref()
                .map(|d| {
                    // Price bounds are compared in minor units of a 2-decimal currency.
                    let eur = Currency::parse("EUR")?;
                    Ok(DomainMoney::parse_decimal(&d.0, eur)?.minor)
                })
                .transpose()
        };
        let query = listings::ListingQuery {
            search: filter.search.filter(|s| !s.trim().is_empty()),
            category: filter.category,
            tags: filter.tags.unwrap_or_default(),
            seller_id,
            min_price_minor: price(&filter.min_price)?,
            max_price_minor: price(&filter.max_price)?,
            kind: filter.kind.map(|k| k.as_str().to_owned()),
            status: status.as_str().to_owned(),
        };
        if query.search.as_ref().is_some_and(|s| s.len() > 200) {
            return Err(ApiError::BadUserInput(
                "search is limited to 200 characters".into(),
            ));
        }
        // Searching sorts by relevance unless asked otherwise.
        let default_sort = if query.search.is_some() {
            ListingSort::Relevance
        } else {
            ListingSort::Newest
        };
        let sort = match sort.unwrap_or(default_sort) {
            ListingSort::Newest => listings::Sort::Newest,
            ListingSort::Relevance => listings::Sort::Relevance,
            ListingSort::Rating => listings::Sort::Rating,
            ListingSort::PriceAsc => listings::Sort::PriceAsc,
            ListingSort::PriceDesc => listings::Sort::PriceDesc,
        };
        // Pay only for what is selected.
        let ahead = ctx.look_ahead();
        let want = listings::Want {
            total: ahead.field("totalCount").exists() || ahead.field("totalCountExact").exists(),
            facets: ahead.field("facets").exists(),
        };
        // The first pages of the unfiltered catalogue are the storefront:
        // served from the cache while the read model has not moved.
        let cacheable = after.is_none() && query == listings::ListingQuery::published();
        let key = PageKey { sort, first, want };
        let page = match cacheable.then(|| state.cache.page(&key)).flatten() {
            Some(page) => page,
            None => {
                let at = state.cache.listings_position();
                let page = Arc::new(
                    listings::search_with(&state.pool, &query, sort, first, after.as_deref(), want)
                        .await??,
                );
                if cacheable {
                    state.cache.put_page(key, at, page.clone());
                }
                page
            }
        };
        let facet = |f: &[listings::FacetCount]| {
            f.iter()
                .map(|c| FacetCount {
                    value: c.value.clone(),
                    count: i32::try_from(c.count).unwrap_or(i32::MAX),
                })
                .collect()
        };
        let end_cursor = page.rows.last().map(|(_, c)| c.clone());
        Ok(ListingConnection {
            edges: page
                .rows
                .iter()
                .map(|(row, cursor)| ListingEdge {
                    node: Listing(row.clone()),
                    cursor: cursor.clone(),
                })
                .collect(),
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                end_cursor,
            },
            total_count: i32::try_from(page.total_count).unwrap_or(i32::MAX),
            total_count_exact: page.total_exact,
            facets: ListingFacets {
                categories: facet(&page.categories),
                tags: facet(&page.tags),
                exact: page.facets_exact,
            },
        })
    }
}
