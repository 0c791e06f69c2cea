//! Mutations: validated input → command → consistency token.

use async_graphql::{Context, Object, ID};
use chrono::Utc;
use marketplace_commands::flows::find_account::find_account_by_email;
use marketplace_commands::flows::register::{register, RegisterError, Registration};
use marketplace_commands::{CommandContext, CommandError};
use marketplace_domain::account::{AccountError, RegistrationChannel};
use marketplace_domain::listing::{
    CreateListing, Listing as ListingAggregate, ListingCommand, ListingError, ListingSpec,
    PublishListing,
};
use marketplace_domain::values::{
    Category, ContentHash, Description, DisplayName, Email, ListingId, Quantity, Tags, Title,
};
use marketplace_projections::read_models::listings;
use marketplace_store::IdempotencyKey;
use marketplace_store::Position;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::types::*;
use super::Viewer;
use crate::auth::{hash_password, hashing, verify_password, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::{retry_after_seconds, EmailKey};
use crate::state::AppState;

/// Namespace of listing ids derived from idempotency keys.
const IDEMPOTENT_LISTING_NS: Uuid = Uuid::from_u128(0x1d3a_7c55_4f0b_4a3e_8e61_6c69_7374_0001);

/// Maps a command failure; `rejected` maps the domain's refusals.
pub(crate) fn command_error<E>(
    e: CommandError<E>,
    rejected: impl FnOnce(E) -> ApiError,
) -> ApiError {
    match e {
        CommandError::Rejected(r) => rejected(r),
        CommandError::Conflict { .. } => {
            ApiError::Conflict("too many concurrent changes to this item; try again".into())
        }
        CommandError::Store(s) => store_error(s),
        CommandError::Codec(c) => ApiError::internal(c),
        CommandError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
    }
}

/// A store failure: the request's own data refused by the store is the
/// client's (its reason, which may quote the backend, is logged, not
/// shown); anything else is internal.
pub(crate) fn store_error(e: marketplace_store::StoreError) -> ApiError {
    match e {
        marketplace_store::StoreError::Rejected { reason } => {
            tracing::warn!(%reason, "the event store refused a request's data");
            ApiError::BadUserInput(
                "the input holds characters or values that cannot be stored".into(),
            )
        }
        other => ApiError::internal(other),
    }
}

pub(crate) fn listing_error(e: ListingError) -> ApiError {
    match e {
        ListingError::NotASeller => ApiError::Forbidden(e.to_string()),
        ListingError::NotOwner => ApiError::Forbidden(e.to_string()),
        ListingError::NotFound => ApiError::NotFound(e.to_string()),
        ListingError::AlreadyExists | ListingError::AlreadyPublished => {
            ApiError::Conflict(e.to_string())
        }
        ListingError::NonPositivePrice
        | ListingError::CurrencyChange
        | ListingError::NonPositiveQuantity
        | ListingError::DigitalHasNoStock
        | ListingError::TooMuchStock => ApiError::BadUserInput(e.to_string()),
        ListingError::NotPublished
        | ListingError::NotAvailable
        | ListingError::OwnListing
        | ListingError::OutOfStock { .. }
        | ListingError::NoReservation => ApiError::Conflict(e.to_string()),
    }
}

pub(crate) fn validate_idempotency_key(key: &Option<String>) -> Result<(), ApiError> {
    match key {
        Some(k) if k.is_empty() || k.len() > 128 => Err(ApiError::BadUserInput(
            "idempotencyKey must be 1 to 128 characters".into(),
        )),
        _ => Ok(()),
    }
}

/// Reads a listing back after a write, once the catalogue has caught up
/// (its seller is read when asked for: [`super::types::Seen`]).
pub(crate) async fn listing_after(
    state: &AppState,
    id: Uuid,
    position: Position,
) -> Result<ListingPayload, ApiError> {
    let listing = if state.wait_for(&[listings::NAME], position).await {
        listings::by_id(&state.pool, id).await?.map(Listing)
    } else {
        None
    };
    Ok(ListingPayload {
        listing,
        consistency_token: position.to_string(),
    })
}

/// The mutation root.
#[derive(Debug, Default)]
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Opens an account and signs it in.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> ApiResult<AuthPayload> {
        let state = ctx.data::<AppState>()?;
        let email = Email::parse(&input.email)?;
        let display_name = DisplayName::parse(&input.display_name)?;
        let n = input.password.chars().count();
        if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
            return Err(ApiError::BadUserInput(format!(
                "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
            )));
        }
        let roles = input
            .roles
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect();
        let password = input.password;
        let password_hash = hashing(move || hash_password(&password))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        let registered = register(
            &state.handler,
            &CommandContext::new("anonymous"),
            Registration {
                email,
                display_name,
                password_hash,
                roles,
                channel: RegistrationChannel::SelfService,
            },
            Utc::now(),
        )
        .await
        .map_err(|e| match e {
            RegisterError::EmailTaken(_) => {
                ApiError::Conflict("an account with this email already exists".into())
            }
            RegisterError::Rejected(AccountError::AdminNotSelfAssignable) => {
                ApiError::Forbidden("the ADMIN role cannot be self-assigned".into())
            }
            RegisterError::Rejected(AccountError::AlreadyRegistered) | RegisterError::Conflict => {
                ApiError::Conflict("registration collided with another; try again".into())
            }
            RegisterError::Failed(_, Some(store)) => store_error(store),
            RegisterError::Failed(detail, None) => ApiError::internal(detail),
            RegisterError::Rejected(other) => ApiError::internal(other.to_string()),
        })?;
        let account = registered.account;
        let token = state
            .tokens
            .issue(registered.account_id.0, account.roles.clone())
            .map_err(ApiError::internal)?;
        Ok(AuthPayload {
            token,
            account: write_side_account(&account),
            consistency_token: registered.position.to_string(),
        })
    }

    /// Signs in with email and password.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        let state = ctx.data::<AppState>()?;
        let refused = || ApiError::Unauthenticated("invalid email or password".into());
        if password.chars().count() > MAX_PASSWORD_LEN {
            return Err(refused());
        }
        // Guesses are throttled per target email and per client before any
        // password is hashed; a successful login gives its tokens back.
        let target = EmailKey::of(&email);
        let client = ctx
            .data_opt::<super::admission::Caller>()
            .and_then(|c| c.client);
        if let Err(wait) = state.limiter.logins.attempt(target, client) {
            return Err(ApiError::RateLimited {
                retry_after_seconds: retry_after_seconds(wait),
            });
        }
        let account = match Email::parse(&email) {
            Ok(email) => find_account_by_email(&state.handler, &email)
                .await
                .map_err(ApiError::internal)?,
            Err(_) => None,
        };
        let hash = account.as_ref().and_then(|a| a.password_hash.clone());
        let ok = hashing(move || match hash {
            Some(h) => verify_password(&password, &h),
            None => {
                // Spend the same time as a real check, so response times do
                // not reveal which emails have accounts.
                let _ = hash_password(&password);
                false
            }
        })
        .await
        .map_err(ApiError::internal)?;
        let Some(account) = account.filter(|_| ok) else {
            return Err(refused());
        };
        state.limiter.logins.succeeded(target, client);
        let id = account.id.ok_or_else(refused)?;
        let token = state
            .tokens
            .issue(id.0, account.roles.clone())
            .map_err(ApiError::internal)?;
        let position = state
            .handler
            .load::<marketplace_domain::account::Account>(id.0)
            .await
            .map_err(ApiError::internal)?
            .position;
        Ok(AuthPayload {
            token,
            account: write_side_account(&account),
            consistency_token: position.to_string(),
        })
    }

    /// Creates a DRAFT listing owned by the signed-in seller.
    async fn create_listing(
        &self,
        ctx: &Context<'_>,
        input: CreateListingInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<ListingPayload> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        validate_idempotency_key(&idempotency_key)?;
        let spec = match input.kind {
            ListingKind::Physical => {
                if input.content_hash.is_some() {
                    return Err(ApiError::BadUserInput(
                        "contentHash is only for DIGITAL listings".into(),
                    ));
                }
                ListingSpec::Physical {
                    quantity: Quantity::parse(i64::from(input.quantity.unwrap_or(0)))?,
                }
            }
            ListingKind::Digital => {
                if input.quantity.is_some() {
                    return Err(ApiError::BadUserInput(
                        "quantity is only for PHYSICAL listings; digital ones are unlimited".into(),
                    ));
                }
                let hash = input.content_hash.as_deref().ok_or_else(|| {
                    ApiError::BadUserInput("contentHash is required for DIGITAL listings".into())
                })?;
                let content_hash = ContentHash::parse(hash)?;
                let asset = state
                    .handler
                    .load::<marketplace_domain::asset::Asset>(marketplace_domain::asset::asset_id(
                        &content_hash,
                    ))
                    .await
                    .map_err(ApiError::internal)?;
                if !asset.state.is_stored() {
                    return Err(ApiError::BadUserInput(
                        "no asset with this contentHash is stored: upload the file first \
                         (PUT /assets)"
                            .into(),
                    ));
                }
                ListingSpec::Digital { content_hash }
            }
        };
        let tags = input.tags.unwrap_or_default();
        let price = input.price.to_domain()?;
        let title = Title::parse(&input.title)?;
        let description = Description::parse(&input.description)?;
        let category = Category::parse(&input.category)?;
        let tags = Tags::parse(tags.iter().map(String::as_str))?;
        let key = idempotency_key.as_deref().map(|k| IdempotencyKey {
            key: format!("createListing:{}:{k}", claims.sub),
            request_hash: format!(
                "{:x}",
                Sha256::digest(
                    serde_json::json!([
                        format!("{spec:?}"),
                        title.as_str(),
                        description.as_str(),
                        category.as_str(),
                        tags.as_slice()
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>(),
                        price.minor,
                        price.currency.as_str(),
                    ])
                    .to_string()
                    .as_bytes()
                )
            ),
        });
        let listing_id = match &key {
            Some(k) => Uuid::new_v5(&IDEMPOTENT_LISTING_NS, k.key.as_bytes()),
            None => Uuid::now_v7(),
        };
        let command = ListingCommand::Create(CreateListing {
            listing_id: ListingId(listing_id),
            actor: claims.actor(),
            spec,
            title,
            description,
            category,
            tags,
            price,
            at: Utc::now(),
        });
        let mut cctx = CommandContext::new(claims.sub.to_string());
        cctx.idempotency_key = idempotency_key.clone();
        let (listing_id, position) = super::commerce::run_keyed::<ListingAggregate>(
            state,
            listing_id,
            &cctx,
            &command,
            key,
            listing_error,
        )
        .await?;
        Ok(listing_after(state, listing_id, position).await?)
    }

    /// Publishes a listing of the signed-in seller.
    async fn publish_listing(&self, ctx: &Context<'_>, id: ID) -> ApiResult<ListingPayload> {
        let state = ctx.data::<AppState>()?;
        let claims = ctx.data::<Viewer>()?.require()?;
        let listing_id = parse_id(&id, "id")?;
        let done = state
            .handler
            .execute::<ListingAggregate>(
                listing_id,
                &CommandContext::new(claims.sub.to_string()),
                &ListingCommand::Publish(PublishListing {
                    actor: claims.actor(),
                    at: Utc::now(),
                }),
            )
            .await
            .map_err(|e| command_error(e, listing_error))?;
        Ok(listing_after(state, listing_id, done.position).await?)
    }
}

fn write_side_account(a: &marketplace_domain::account::Account) -> Account {
    use marketplace_domain::values::Role as R;
    Account {
        id: ID(a.id.map(|i| i.to_string()).unwrap_or_default()),
        display_name: a
            .display_name
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default(),
        roles: a
            .roles
            .iter()
            .map(|r| match r {
                R::Buyer => Role::Buyer,
                R::Seller => Role::Seller,
                R::Admin => Role::Admin,
            })
            .collect(),
        created_at: a.registered_at.unwrap_or_default(),
        erased: a.erased,
        email_address: a
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        for_owner: true,
    }
}
