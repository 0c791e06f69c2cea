//! Output types, input types, scalars and enums of the contract.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use async_graphql::{
    ComplexObject, Context, Enum, InputObject, InputValueError, InputValueResult, Scalar,
    ScalarType, SimpleObject, Value, ID,
};
use chrono::{DateTime, Utc};
use marketplace_domain::values::{Currency, Money as DomainMoney, Role as DomainRole};
use marketplace_projections::read_models::accounts::{self, AccountRow};
use marketplace_projections::read_models::listings::{self, ListingRow};
use marketplace_store::Position;
use sqlx::PgPool;
use uuid::Uuid;

use super::Viewer;
use crate::error::{ApiError, ApiResult};

/// An exact decimal carried as a string, e.g. `"19.99"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

#[Scalar(name = "Decimal")]
impl ScalarType for Decimal {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => {
                let t = s.trim();
                let (int, frac) = t
                    .strip_prefix('-')
                    .unwrap_or(t)
                    .split_once('.')
                    .unwrap_or((t.strip_prefix('-').unwrap_or(t), "0"));
                if !int.is_empty()
                    && int.bytes().all(|b| b.is_ascii_digit())
                    && !frac.is_empty()
                    && frac.bytes().all(|b| b.is_ascii_digit())
                    && t.len() <= 32
                {
                    Ok(Decimal(t.to_owned()))
                } else {
                    Err(InputValueError::custom(
                        "expected an exact decimal string such as \"19.99\"",
                    ))
                }
            }
            _ => Err(InputValueError::custom(
                "a Decimal is sent as a string, e.g. \"19.99\"",
            )),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

/// Roles.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Buys.
    Buyer,
    /// Sells.
    Seller,
    /// Operates.
    Admin,
}

impl From<Role> for DomainRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Buyer => DomainRole::Buyer,
            Role::Seller => DomainRole::Seller,
            Role::Admin => DomainRole::Admin,
        }
    }
}

impl Role {
    fn from_name(s: &str) -> Option<Self> {
        match s {
            "BUYER" => Some(Role::Buyer),
            "SELLER" => Some(Role::Seller),
            "ADMIN" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Physical or digital.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListingKind {
    /// Goods with stock.
    Physical,
    /// Digital asset.
    Digital,
}

impl ListingKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ListingKind::Physical => "PHYSICAL",
            ListingKind::Digital => "DIGITAL",
        }
    }
}

/// Listing status.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListingStatus {
    /// Not visible.
    Draft,
    /// Visible and buyable.
    Published,
    /// Withdrawn.
    Delisted,
}

impl ListingStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ListingStatus::Draft => "DRAFT",
            ListingStatus::Published => "PUBLISHED",
            ListingStatus::Delisted => "DELISTED",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "DRAFT" => Some(Self::Draft),
            "PUBLISHED" => Some(Self::Published),
            "DELISTED" => Some(Self::Delisted),
            _ => None,
        }
    }
}

/// Catalogue order.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListingSort {
    /// Best match (newest until full-text ranking lands).
    Relevance,
    /// Newest first.
    Newest,
    /// Cheapest first.
    PriceAsc,
    /// Dearest first.
    PriceDesc,
    /// Best rated first (newest until reviews land).
    Rating,
}

/// Money.
#[derive(SimpleObject, Debug, Clone)]
pub struct Money {
    /// Exact amount.
    pub amount: Decimal,
    /// ISO currency code.
    pub currency_code: String,
}

impl Money {
    /// From minor units.
    pub fn from_minor(minor: i64, currency: &str) -> Self {
        let amount = Currency::parse(currency)
            .map(|c| DomainMoney { minor, currency: c }.to_decimal_string())
            .unwrap_or_else(|_| minor.to_string());
        Self {
            amount: Decimal(amount),
            currency_code: currency.to_owned(),
        }
    }
}

/// Money sent by a client.
#[derive(InputObject, Debug, Clone)]
pub struct MoneyInput {
    /// Exact amount.
    pub amount: Decimal,
    /// ISO currency code.
    pub currency_code: String,
}

impl MoneyInput {
    /// Validates into domain money.
    pub fn to_domain(&self) -> Result<DomainMoney, ApiError> {
        let currency = Currency::parse(&self.currency_code)?;
        Ok(DomainMoney::parse_decimal(&self.amount.0, currency)?)
    }
}

/// Relay page info.
#[derive(SimpleObject, Debug, Clone)]
pub struct PageInfo {
    /// More after this page.
    pub has_next_page: bool,
    /// Cursor of the last edge.
    pub end_cursor: Option<String>,
}

/// An account.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(complex)]
pub struct Account {
    /// Id.
    pub id: ID,
    /// Public name.
    pub display_name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Opened.
    pub created_at: DateTime<Utc>,
    /// Whether its personal data was erased (`eraseAccount`): it then shows
    /// as "Erased account" with an empty email.
    pub erased: bool,
    #[graphql(skip)]
    pub email_address: String,
    /// Set when the payload goes to the account's own holder (register, login).
    #[graphql(skip)]
    pub for_owner: bool,
}

#[ComplexObject]
impl Account {
    /// Email: shown in full to its owner and to admins; masked for others.
    async fn email(&self, ctx: &Context<'_>) -> String {
        let viewer = ctx.data_opt::<Viewer>().and_then(|v| v.0.as_deref());
        let own = viewer.is_some_and(|c| c.sub.to_string() == self.id.as_str());
        let admin = viewer.is_some_and(|c| c.has(DomainRole::Admin));
        if self.for_owner || own || admin || self.erased {
            self.email_address.clone()
        } else {
            mask_email(&self.email_address)
        }
    }

    /// Wallet: available funds in the wallet's own currency, the first one
    /// it held (a deposit's, or a seller's first credit); see `balances` for
    /// every currency. A wallet that never held money shows 0 in
    /// [`EMPTY_WALLET_CURRENCY`]. Only the owner and ADMINs may read it.
    async fn balance(&self, ctx: &Context<'_>) -> ApiResult<Money> {
        let all = wallet(self, ctx, Order::OldestFirst).await?;
        Ok(all
            .into_iter()
            .next()
            .unwrap_or_else(|| Money::from_minor(0, EMPTY_WALLET_CURRENCY)))
    }

    /// Wallet: available funds in every currency held (owner and ADMINs).
    async fn balances(&self, ctx: &Context<'_>) -> ApiResult<Vec<Money>> {
        wallet(self, ctx, Order::ByCurrency).await
    }
}

/// The currency an empty wallet's zero balance is shown in.
pub const EMPTY_WALLET_CURRENCY: &str = "EUR";

enum Order {
    ByCurrency,
    OldestFirst,
}

async fn wallet(account: &Account, ctx: &Context<'_>, order: Order) -> ApiResult<Vec<Money>> {
    use marketplace_projections::read_models::accounts;
    let viewer = ctx.data_opt::<Viewer>().and_then(|v| v.0.as_deref());
    let own = viewer.is_some_and(|c| c.sub.to_string() == account.id.as_str());
    let admin = viewer.is_some_and(|c| c.has(DomainRole::Admin));
    if !(own || admin) {
        return Err(ApiError::Forbidden(
            "only the account's owner can see its balance".into(),
        ));
    }
    let id = Uuid::try_parse(account.id.as_str()).map_err(ApiError::internal)?;
    let state = ctx.data::<crate::state::AppState>()?;
    let rows = match order {
        Order::ByCurrency => accounts::balances(&state.pool, id).await?,
        Order::OldestFirst => accounts::balances_oldest_first(&state.pool, id).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(currency, minor)| Money::from_minor(minor, &currency))
        .collect())
}

fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

impl From<AccountRow> for Account {
    fn from(r: AccountRow) -> Self {
        Self {
            id: ID(r.account_id.to_string()),
            display_name: r.display_name,
            roles: r.roles.iter().filter_map(|s| Role::from_name(s)).collect(),
            created_at: r.created_at,
            erased: r.erased,
            email_address: r.email,
            for_owner: false,
        }
    }
}

/// Batches account look-ups (of one request, and of requests running at
/// the same time) into one statement.
pub struct AccountLoader(pub PgPool);

/// Batches listing look-ups into one statement.
pub struct ListingLoader(pub PgPool);

impl Loader<Uuid> for ListingLoader {
    type Value = ListingRow;
    type Error = std::sync::Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, ListingRow>, Self::Error> {
        let rows = marketplace_projections::read_models::listings::by_ids(&self.0, keys)
            .await
            .map_err(std::sync::Arc::new)?;
        Ok(rows.into_iter().map(|r| (r.listing_id, r)).collect())
    }
}

/// Where an object that names accounts or listings came from, and so how
/// far their read models must have come to show what it names. Each read
/// model follows the log on its own: a listing the catalogue shows may
/// name a seller the accounts read model has not reached yet, though that
/// seller was written first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen {
    /// Read from this read model: what it names was written before its
    /// position.
    In(&'static str),
    /// Answered from the write side, at this log position.
    At(Position),
}

/// The account `id` that an object from `seen` names (see [`referenced`]).
pub(crate) async fn account_named(ctx: &Context<'_>, id: Uuid, seen: Seen) -> ApiResult<Account> {
    referenced(ctx, accounts::NAME, seen, || account_row(ctx, id))
        .await?
        .map(Account::from)
        .ok_or_else(|| ApiError::internal(format!("account {id} not projected")))
}

/// The listing `id` that an object from `seen` names (see [`referenced`]).
pub(crate) async fn listing_named(ctx: &Context<'_>, id: Uuid, seen: Seen) -> ApiResult<Listing> {
    referenced(ctx, listings::NAME, seen, || listing_row(ctx, id))
        .await?
        .map(Listing)
        .ok_or_else(|| ApiError::internal(format!("listing {id} not projected")))
}

/// Reads a row of the read model `name` that an object from `seen` names:
/// at once, and, if `name` does not show it yet but has not reached where
/// the object was seen, once more after it has (bounded by the consistency
/// wait). A read model already that far that still lacks the row has lost
/// it: `None`. One that does not get there in time is a `CONFLICT` on this
/// field alone, to be read again with the consistency token.
async fn referenced<T, F, Fut>(
    ctx: &Context<'_>,
    name: &'static str,
    seen: Seen,
    read: F,
) -> ApiResult<Option<T>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    let row = read().await?;
    if row.is_some() {
        return Ok(row);
    }
    let state = ctx.data::<crate::state::AppState>()?;
    let target = match seen {
        Seen::At(at) => at,
        Seen::In(source) => state.progress.position(source),
    };
    if state.progress.position(name) >= target {
        return Ok(None);
    }
    if state.wait_for(&[name], target).await {
        read().await
    } else {
        Err(ApiError::Conflict(format!(
            "the {name} read model has not caught up in time with what this answer names; \
             read it again with its consistency token"
        )))
    }
}

/// An account's row: from the read cache while current, else through the
/// [`AccountLoader`] (and then cached).
pub(crate) async fn account_row(ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<AccountRow>> {
    let state = ctx.data::<crate::state::AppState>()?;
    if let Some(hit) = state.cache.account(id) {
        return Ok(hit);
    }
    let at = state.cache.accounts_position();
    let row = ctx
        .data_unchecked::<async_graphql::dataloader::DataLoader<AccountLoader>>()
        .load_one(id)
        .await
        .map_err(ApiError::internal)?;
    state.cache.put_account(id, at, row.clone());
    Ok(row)
}

/// A listing's row: from the read cache while current, else through the
/// [`ListingLoader`] (and then cached).
pub(crate) async fn listing_row(ctx: &Context<'_>, id: Uuid) -> ApiResult<Option<ListingRow>> {
    let state = ctx.data::<crate::state::AppState>()?;
    if let Some(hit) = state.cache.listing(id) {
        return Ok(hit);
    }
    let at = state.cache.listings_position();
    let row = ctx
        .data_unchecked::<async_graphql::dataloader::DataLoader<ListingLoader>>()
        .load_one(id)
        .await
        .map_err(ApiError::internal)?;
    state.cache.put_listing(id, at, row.clone());
    Ok(row)
}

impl Loader<Uuid> for AccountLoader {
    type Value = AccountRow;
    type Error = std::sync::Arc<sqlx::Error>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, AccountRow>, Self::Error> {
        let rows = marketplace_projections::read_models::accounts::by_ids(&self.0, keys)
            .await
            .map_err(std::sync::Arc::new)?;
        Ok(rows.into_iter().map(|r| (r.account_id, r)).collect())
    }
}

/// A listing.
#[derive(Debug, Clone)]
pub struct Listing(pub ListingRow);

impl Listing {
    /// The asset of a DIGITAL listing, from the write side (one short
    /// stream per asset, usually in the aggregate cache).
    async fn asset(
        &self,
        ctx: &Context<'_>,
    ) -> ApiResult<Option<marketplace_domain::asset::Asset>> {
        let Some(hash) = self.0.content_hash.as_deref() else {
            return Ok(None);
        };
        let Ok(hash) = marketplace_domain::values::ContentHash::parse(hash) else {
            return Ok(None);
        };
        let state = ctx.data::<crate::state::AppState>()?;
        let loaded = state
            .handler
            .load::<marketplace_domain::asset::Asset>(marketplace_domain::asset::asset_id(&hash))
            .await
            .map_err(ApiError::internal)?;
        Ok(loaded.state.is_stored().then_some(loaded.state))
    }
}

#[async_graphql::Object]
impl Listing {
    async fn id(&self) -> ID {
        ID(self.0.listing_id.to_string())
    }

    /// The seller who owns it.
    async fn seller(&self, ctx: &Context<'_>) -> ApiResult<Account> {
        account_named(ctx, self.0.seller_id, Seen::In(listings::NAME)).await
    }

    async fn kind(&self) -> ListingKind {
        if self.0.kind == "DIGITAL" {
            ListingKind::Digital
        } else {
            ListingKind::Physical
        }
    }

    async fn title(&self) -> &str {
        &self.0.title
    }

    async fn description(&self) -> &str {
        &self.0.description
    }

    async fn category(&self) -> &str {
        &self.0.category
    }

    async fn tags(&self) -> &[String] {
        &self.0.tags
    }

    async fn price(&self) -> Money {
        Money::from_minor(self.0.price_minor, &self.0.currency)
    }

    /// Units not reserved or sold; digital listings are unlimited and show 2^31-1.
    async fn available_quantity(&self) -> i32 {
        if self.0.kind == "DIGITAL" {
            i32::MAX
        } else {
            self.0.quantity
        }
    }

    async fn status(&self) -> ListingStatus {
        ListingStatus::from_name(&self.0.status).unwrap_or(ListingStatus::Draft)
    }

    /// sha256 of the asset (digital only).
    async fn content_hash(&self) -> Option<&str> {
        self.0.content_hash.as_deref()
    }

    /// The asset file's size in bytes (digital only).
    async fn asset_size(&self, ctx: &Context<'_>) -> ApiResult<Option<i64>> {
        Ok(self
            .asset(ctx)
            .await?
            .map(|a| i64::try_from(a.size).unwrap_or(i64::MAX)))
    }

    /// The asset file's media type (digital only).
    async fn asset_content_type(&self, ctx: &Context<'_>) -> ApiResult<Option<String>> {
        Ok(self
            .asset(ctx)
            .await?
            .and_then(|a| a.content_type.map(|t| t.to_string())))
    }

    /// Mean of approved reviews' ratings; null without approved reviews.
    async fn average_rating(&self) -> Option<f64> {
        self.0.average_rating
    }

    /// Approved reviews.
    async fn review_count(&self) -> i32 {
        self.0.rating_count
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// Edge.
#[derive(SimpleObject, Debug, Clone)]
pub struct ListingEdge {
    /// The listing.
    pub node: Listing,
    /// Its cursor.
    pub cursor: String,
}

/// A value and how many listings have it.
#[derive(SimpleObject, Debug, Clone)]
pub struct FacetCount {
    /// Value.
    pub value: String,
    /// Count.
    pub count: i32,
}

/// Facets of a catalogue query.
#[derive(SimpleObject, Debug, Clone)]
pub struct ListingFacets {
    /// By category.
    pub categories: Vec<FacetCount>,
    /// By tag.
    pub tags: Vec<FacetCount>,
    /// Whether the counts cover every match. False when a search, tag,
    /// seller or price filter matches more than 1,000 listings: the counts
    /// are then taken over the first 1,000 matches.
    pub exact: bool,
}

/// A page of listings.
#[derive(SimpleObject, Debug, Clone)]
pub struct ListingConnection {
    /// Edges.
    pub edges: Vec<ListingEdge>,
    /// Page info.
    pub page_info: PageInfo,
    /// All matches.
    pub total_count: i32,
    /// Whether `totalCount` is exact. False when a search, tag, seller or
    /// price filter matches more than 10,000 listings: `totalCount` is then
    /// 10,000, a lower bound.
    pub total_count_exact: bool,
    /// Facet counts of all matches.
    pub facets: ListingFacets,
}

/// Catalogue filter.
#[derive(InputObject, Debug, Clone, Default)]
pub struct ListingFilter {
    /// Text in title, description or tags.
    pub search: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// All must match.
    pub tags: Option<Vec<String>>,
    /// One seller.
    pub seller_id: Option<ID>,
    /// Lowest price.
    pub min_price: Option<Decimal>,
    /// Highest price.
    pub max_price: Option<Decimal>,
    /// Kind.
    pub kind: Option<ListingKind>,
    /// Default PUBLISHED; other values only for the owner or ADMIN.
    pub status: Option<ListingStatus>,
}

/// Token and account.
#[derive(SimpleObject, Debug, Clone)]
pub struct AuthPayload {
    /// Bearer token.
    pub token: String,
    /// The account.
    pub account: Account,
    /// Position of the registration's last event (login: the account's).
    pub consistency_token: String,
}

/// A listing mutation's result.
#[derive(SimpleObject, Debug, Clone)]
pub struct ListingPayload {
    /// The listing, once the catalogue shows it (null if it did not catch up in time).
    pub listing: Option<Listing>,
    /// Send as `X-Consistency-Token` to read this write.
    pub consistency_token: String,
}

/// Registration input.
#[derive(InputObject, Debug, Clone)]
pub struct RegisterInput {
    /// Email.
    pub email: String,
    /// Password (8 to 128 characters).
    pub password: String,
    /// Public name.
    pub display_name: String,
    /// BUYER and/or SELLER; ADMIN cannot be self-assigned.
    pub roles: Option<Vec<Role>>,
}

/// New listing.
#[derive(InputObject, Debug, Clone)]
pub struct CreateListingInput {
    /// Kind.
    pub kind: ListingKind,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Category.
    pub category: String,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// Unit price.
    pub price: MoneyInput,
    /// PHYSICAL: initial stock.
    pub quantity: Option<i32>,
    /// DIGITAL: required.
    pub content_hash: Option<String>,
}

/// Parses a GraphQL ID as a UUID.
pub fn parse_id(id: &ID, what: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id.as_str())
        .map_err(|_| ApiError::BadUserInput(format!("{what} is not a valid id")))
}
