//! Pricing the lines of a new order: each requested listing's seller, kind
//! and current price, looked up on the write side now, before the order
//! command is decided (the domain does no I/O, so the facts it needs come
//! in on the command). The API's `placeOrder` and `marketplace seed` price
//! lines here, so the two can never place orders differently.

use marketplace_domain::listing::Listing;
use marketplace_domain::order::LineSpec;
use marketplace_domain::values::{ListingId, Quantity};

use crate::handler::{CommandHandler, LoadError};

/// Why the requested lines could not be priced.
#[derive(Debug, thiserror::Error)]
pub enum PriceLinesError {
    /// No listing has this id: the caller's mistake (the API answers
    /// NOT_FOUND).
    #[error("listing {0} not found")]
    ListingNotFound(ListingId),
    /// A listing could not be loaded: infrastructure.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The lines of an order for `wanted` (listing, units), in that order, at
/// each listing's price now. Later price changes do not alter them. Whether
/// a listing may be sold (published, in stock) is the checkout saga's to
/// decide, not this lookup's.
pub async fn price_lines(
    handler: &CommandHandler,
    wanted: &[(ListingId, Quantity)],
) -> Result<Vec<LineSpec>, PriceLinesError> {
    let mut lines = Vec::with_capacity(wanted.len());
    for &(listing_id, quantity) in wanted {
        let listing = handler.load::<Listing>(listing_id.0).await?.state;
        let line = line_of(&listing, listing_id, quantity)
            .ok_or(PriceLinesError::ListingNotFound(listing_id))?;
        lines.push(line);
    }
    Ok(lines)
}

/// A line for `quantity` units of `listing` (whose id is `listing_id`) at
/// its seller, kind and price as they stand; `None` if it was never
/// created.
pub fn line_of(listing: &Listing, listing_id: ListingId, quantity: Quantity) -> Option<LineSpec> {
    Some(LineSpec {
        listing_id,
        seller_id: listing.seller_id?,
        kind: listing.kind?,
        quantity: quantity.0,
        unit_price: listing.price.clone()?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use marketplace_domain::listing::{CreateListing, ListingCommand, ListingKind, ListingSpec};
    use marketplace_domain::values::{
        AccountId, Actor, Category, ContentHash, Currency, Description, Money, Role, Tags, Title,
    };
    use marketplace_store::InMemoryEventStore;
    use uuid::Uuid;

    use super::*;
    use crate::CommandContext;

    fn eur(minor: i64) -> Money {
        Money {
            minor,
            currency: Currency::parse("EUR").expect("valid"),
        }
    }

    async fn listing(handler: &CommandHandler, seller: &Actor, spec: ListingSpec) -> ListingId {
        let id = ListingId(Uuid::now_v7());
        let create = ListingCommand::Create(CreateListing {
            listing_id: id,
            actor: seller.clone(),
            spec,
            title: Title::parse("Lamp").expect("valid"),
            description: Description::parse("").expect("valid"),
            category: Category::parse("home").expect("valid"),
            tags: Tags::default(),
            price: eur(1000),
            at: Utc::now(),
        });
        let ctx = CommandContext::new(seller.account_id.to_string());
        handler
            .execute::<Listing>(id.0, &ctx, &create)
            .await
            .expect("create");
        id
    }

    /// A seller with one PHYSICAL listing, the lamp.
    async fn a_seller_with_a_lamp() -> (CommandHandler, Actor, ListingId) {
        let handler = CommandHandler::new(Arc::new(InMemoryEventStore::new()));
        let seller = Actor {
            account_id: AccountId(Uuid::now_v7()),
            roles: vec![Role::Seller],
        };
        let spec = ListingSpec::Physical {
            quantity: Quantity(5),
        };
        let lamp = listing(&handler, &seller, spec).await;
        (handler, seller, lamp)
    }

    #[tokio::test]
    async fn prices_each_line_with_its_listings_seller_kind_and_price_in_the_order_asked() {
        let (handler, seller, lamp) = a_seller_with_a_lamp().await;
        let ebook = listing(
            &handler,
            &seller,
            ListingSpec::Digital {
                content_hash: ContentHash::parse(&"ab".repeat(32)).expect("valid"),
            },
        )
        .await;

        let lines = price_lines(&handler, &[(ebook, Quantity(1)), (lamp, Quantity(3))])
            .await
            .expect("priced");

        assert_eq!(
            lines,
            vec![
                LineSpec {
                    listing_id: ebook,
                    seller_id: seller.account_id,
                    kind: ListingKind::Digital,
                    quantity: 1,
                    unit_price: eur(1000),
                },
                LineSpec {
                    listing_id: lamp,
                    seller_id: seller.account_id,
                    kind: ListingKind::Physical,
                    quantity: 3,
                    unit_price: eur(1000),
                },
            ]
        );
    }

    #[tokio::test]
    async fn refuses_a_listing_that_was_never_created() {
        let (handler, _, lamp) = a_seller_with_a_lamp().await;
        let unknown = ListingId(Uuid::now_v7());

        let refused = price_lines(&handler, &[(lamp, Quantity(1)), (unknown, Quantity(1))]).await;

        assert!(
            matches!(refused, Err(PriceLinesError::ListingNotFound(id)) if id == unknown),
            "{refused:?}"
        );
    }
}
