//! Upcasters: old stored versions to the current one.
//!
//! Every event type has a current version, declared once beside its type
//! in the domain ([`CURRENT_VERSIONS`] is generated from it). A stored document
//! older than that passes through the chain of typed upcasters registered
//! for its type (`v1 -> v2 -> … -> current`, one step at a time); one newer
//! than that, or one with a gap in the chain, is refused rather than
//! misread.
//!
//! Each step deserialises the old document into a frozen `V<N>` struct,
//! converts it into a frozen `V<N+1>` struct and serialises that. The frozen
//! structs use plain types (uuids, strings, integers) rather than the domain
//! types, so a later change to the domain cannot silently change what an old
//! step produces; the domain's own validation runs once, on the final
//! (current) document.

use std::sync::LazyLock;

use marketplace_domain::Event;

use crate::codec::CodecError;

/// The current schema version of every stored event type, as the domain
/// declares it beside each type (`DomainEvent::VERSION`, gathered by
/// [`Event::versions`]): nothing to keep in step by hand.
pub static CURRENT_VERSIONS: LazyLock<Vec<(&'static str, u32)>> = LazyLock::new(Event::versions);

/// One upcasting step: a document of `event_type` at `from` becomes one at
/// `from + 1`.
type Step = fn(serde_json::Value) -> Result<serde_json::Value, String>;

/// Every upcasting step this build knows, as `(event_type, from, step)`.
pub const UPCASTERS: &[(&str, u32, Step)] = &[
    ("order.placed", 1, order_placed::v1_to_v2),
    ("account.registered", 1, account_registered::v1_to_v2),
    ("email.claimed", 1, email_claimed::v1_to_v2),
    ("review.submitted", 1, review_submitted::v1_to_v2),
];

/// The version this build writes for `event_type`, if it knows the type.
pub fn current_version(event_type: &str) -> Option<u32> {
    CURRENT_VERSIONS
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, v)| *v)
}

fn step_for(event_type: &str, from: u32) -> Option<Step> {
    UPCASTERS
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == from)
        .map(|(_, _, f)| *f)
}

/// Brings `data` stored at `version` up to the current version.
pub fn to_current(
    event_type: &str,
    version: u32,
    data: serde_json::Value,
) -> Result<serde_json::Value, CodecError> {
    let current = current_version(event_type).unwrap_or(1);
    let unsupported = || CodecError::UnsupportedVersion {
        event_type: event_type.to_owned(),
        version,
        current,
    };
    if version == 0 || version > current {
        return Err(unsupported());
    }
    let mut data = data;
    for from in version..current {
        let step = step_for(event_type, from).ok_or_else(unsupported)?;
        data = step(data).map_err(|reason| CodecError::Upcast {
            event_type: event_type.to_owned(),
            from,
            reason,
        })?;
    }
    Ok(data)
}

/// `order.placed`: v1 priced every line in minor units of one order-wide
/// currency; v2 gives every line (and the total) its own money value, so an
/// order's lines no longer depend on a field beside them to mean anything.
pub mod order_placed {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// `order.placed` as version 1 stored it.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V1 {
        /// The order.
        pub order_id: Uuid,
        /// Who buys.
        pub buyer_id: Uuid,
        /// Who sells.
        pub seller_id: Uuid,
        /// What, at which prices (in `currency`).
        pub lines: Vec<LineV1>,
        /// The one currency of every amount in the order.
        pub currency: String,
        /// The sum of the lines, in minor units of `currency`.
        pub total_minor: i64,
        /// When.
        pub placed_at: DateTime<Utc>,
    }

    /// One line of a version 1 order.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct LineV1 {
        /// The listing bought.
        pub listing_id: Uuid,
        /// Its seller.
        pub seller_id: Uuid,
        /// `PHYSICAL` or `DIGITAL`.
        pub kind: String,
        /// Units.
        pub quantity: u32,
        /// Unit price in minor units of the order's currency.
        pub unit_price_minor: i64,
    }

    /// `order.placed` as version 2 stores it.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V2 {
        /// The order.
        pub order_id: Uuid,
        /// Who buys.
        pub buyer_id: Uuid,
        /// Who sells.
        pub seller_id: Uuid,
        /// What, at which prices.
        pub lines: Vec<LineV2>,
        /// The sum of the lines.
        pub total: MoneyV2,
        /// When.
        pub placed_at: DateTime<Utc>,
    }

    /// One line of a version 2 order.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct LineV2 {
        /// The listing bought.
        pub listing_id: Uuid,
        /// Its seller.
        pub seller_id: Uuid,
        /// `PHYSICAL` or `DIGITAL`.
        pub kind: String,
        /// Units.
        pub quantity: u32,
        /// The unit price at placement.
        pub unit_price: MoneyV2,
    }

    /// Money as version 2 stores it.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
    pub struct MoneyV2 {
        /// Minor units.
        pub minor: i64,
        /// Three-letter code.
        pub currency: String,
    }

    impl From<V1> for V2 {
        fn from(v1: V1) -> Self {
            let money = |minor| MoneyV2 {
                minor,
                currency: v1.currency.clone(),
            };
            V2 {
                order_id: v1.order_id,
                buyer_id: v1.buyer_id,
                seller_id: v1.seller_id,
                lines: v1
                    .lines
                    .iter()
                    .map(|l| LineV2 {
                        listing_id: l.listing_id,
                        seller_id: l.seller_id,
                        kind: l.kind.clone(),
                        quantity: l.quantity,
                        unit_price: money(l.unit_price_minor),
                    })
                    .collect(),
                total: money(v1.total_minor),
                placed_at: v1.placed_at,
            }
        }
    }

    /// The registered step: v1 document → v2 document.
    pub fn v1_to_v2(data: serde_json::Value) -> Result<serde_json::Value, String> {
        let v1: V1 = serde_json::from_value(data).map_err(|e| e.to_string())?;
        serde_json::to_value(V2::from(v1)).map_err(|e| e.to_string())
    }
}

/// `account.registered`: v1 stored the email, display name and password
/// hash in the clear; v2 stores them sealed under the account's data key
/// (see [`crate::personal`]). Upcasting runs after the store opened the
/// sealed fields, so both versions read the same here: the step only
/// carries the fields over. A field is `null` when its owner was erased
/// (an erased v1 document is hidden the same way on read).
pub mod account_registered {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// `account.registered` as version 1 stored it (plain text).
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V1 {
        /// The account.
        pub account_id: Uuid,
        /// Its email; `null` once erased.
        pub email: Option<String>,
        /// Its public name; `null` once erased.
        pub display_name: Option<String>,
        /// Its argon2 hash; `null` once erased.
        pub password_hash: Option<String>,
        /// Its roles.
        pub roles: Vec<String>,
        /// When.
        pub registered_at: DateTime<Utc>,
    }

    /// `account.registered` as version 2 reads once its sealed fields are
    /// opened.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V2 {
        /// The account.
        pub account_id: Uuid,
        /// Its email; `null` once erased.
        pub email: Option<String>,
        /// Its public name; `null` once erased.
        pub display_name: Option<String>,
        /// Its argon2 hash; `null` once erased.
        pub password_hash: Option<String>,
        /// Its roles.
        pub roles: Vec<String>,
        /// When.
        pub registered_at: DateTime<Utc>,
    }

    impl From<V1> for V2 {
        fn from(v1: V1) -> Self {
            V2 {
                account_id: v1.account_id,
                email: v1.email,
                display_name: v1.display_name,
                password_hash: v1.password_hash,
                roles: v1.roles,
                registered_at: v1.registered_at,
            }
        }
    }

    /// The registered step: v1 document → v2 document.
    pub fn v1_to_v2(data: serde_json::Value) -> Result<serde_json::Value, String> {
        let v1: V1 = serde_json::from_value(data).map_err(|e| e.to_string())?;
        serde_json::to_value(V2::from(v1)).map_err(|e| e.to_string())
    }
}

/// `email.claimed`: v1 stored the email in the clear; v2 stores no email
/// at all (the claim's stream name, a keyed hash of the email, is the
/// claim). The step drops the field.
pub mod email_claimed {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// `email.claimed` as version 1 stored it.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V1 {
        /// The email; `null` once its owner was erased.
        pub email: Option<String>,
        /// The account holding it.
        pub account_id: Uuid,
        /// When.
        pub claimed_at: DateTime<Utc>,
    }

    /// `email.claimed` as version 2 stores it.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V2 {
        /// The account holding it.
        pub account_id: Uuid,
        /// When.
        pub claimed_at: DateTime<Utc>,
    }

    impl From<V1> for V2 {
        fn from(v1: V1) -> Self {
            V2 {
                account_id: v1.account_id,
                claimed_at: v1.claimed_at,
            }
        }
    }

    /// The registered step: v1 document → v2 document.
    pub fn v1_to_v2(data: serde_json::Value) -> Result<serde_json::Value, String> {
        let v1: V1 = serde_json::from_value(data).map_err(|e| e.to_string())?;
        serde_json::to_value(V2::from(v1)).map_err(|e| e.to_string())
    }
}

/// `review.submitted`: v1 stored the comment in the clear; v2 stores it
/// sealed under its author's data key (free text can identify the person;
/// see [`crate::personal`]). As for `account.registered`, the store has
/// opened it before upcasting, so the step only carries the fields over;
/// the comment is `null` once its author was erased.
pub mod review_submitted {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};
    use uuid::Uuid;

    /// `review.submitted` as version 1 stored it (plain text).
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V1 {
        /// The review.
        pub review_id: Uuid,
        /// The listing.
        pub listing_id: Uuid,
        /// The order.
        pub order_id: Uuid,
        /// The author.
        pub author_id: Uuid,
        /// Stars.
        pub rating: u8,
        /// The text; `null` once its author was erased.
        pub comment: Option<String>,
        /// When.
        pub submitted_at: DateTime<Utc>,
    }

    /// `review.submitted` as version 2 reads once its comment is opened.
    #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
    pub struct V2 {
        /// The review.
        pub review_id: Uuid,
        /// The listing.
        pub listing_id: Uuid,
        /// The order.
        pub order_id: Uuid,
        /// The author.
        pub author_id: Uuid,
        /// Stars.
        pub rating: u8,
        /// The text; `null` once its author was erased.
        pub comment: Option<String>,
        /// When.
        pub submitted_at: DateTime<Utc>,
    }

    impl From<V1> for V2 {
        fn from(v1: V1) -> Self {
            V2 {
                review_id: v1.review_id,
                listing_id: v1.listing_id,
                order_id: v1.order_id,
                author_id: v1.author_id,
                rating: v1.rating,
                comment: v1.comment,
                submitted_at: v1.submitted_at,
            }
        }
    }

    /// The registered step: v1 document → v2 document.
    pub fn v1_to_v2(data: serde_json::Value) -> Result<serde_json::Value, String> {
        let v1: V1 = serde_json::from_value(data).map_err(|e| e.to_string())?;
        serde_json::to_value(V2::from(v1)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketplace_domain::order::{OrderEvent, OrderPlaced};
    use marketplace_domain::{DomainEvent, EventSet};
    use serde_json::json;

    #[test]
    fn each_stored_name_has_one_current_version_taken_from_the_domain() {
        let mut types: Vec<&str> = CURRENT_VERSIONS.iter().map(|(t, _)| *t).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(
            types.len(),
            CURRENT_VERSIONS.len(),
            "a stored name is declared twice"
        );
        assert_eq!(
            current_version(OrderPlaced::NAME),
            Some(OrderPlaced::VERSION)
        );
        for t in OrderEvent::TYPES {
            assert!(current_version(t).is_some(), "{t}");
        }
        assert_eq!(current_version("order.unheard_of"), None);
    }

    #[test]
    fn every_old_version_has_a_complete_chain_of_steps() {
        for (t, current) in CURRENT_VERSIONS.iter() {
            for from in 1..*current {
                assert!(step_for(t, from).is_some(), "{t}: no upcaster v{from}");
            }
        }
        for (t, from, _) in UPCASTERS {
            let current = current_version(t).expect("upcaster for a known type");
            assert!(*from >= 1 && *from < current, "{t}: stray upcaster v{from}");
        }
    }

    fn v1_order() -> serde_json::Value {
        json!({
            "order_id": "0193a4f2-7c1e-7b3a-9d2e-5f6a7b8c9d01",
            "buyer_id": "0193a4f0-1111-7a00-8000-00000000b001",
            "seller_id": "0193a4f0-2222-7a00-8000-000000005e11",
            "lines": [
                {
                    "listing_id": "0193a4f1-aaaa-7a00-8000-0000000011a1",
                    "seller_id": "0193a4f0-2222-7a00-8000-000000005e11",
                    "kind": "PHYSICAL",
                    "quantity": 2,
                    "unit_price_minor": 1999
                },
                {
                    "listing_id": "0193a4f1-bbbb-7a00-8000-0000000011a2",
                    "seller_id": "0193a4f0-2222-7a00-8000-000000005e11",
                    "kind": "DIGITAL",
                    "quantity": 1,
                    "unit_price_minor": 500
                }
            ],
            "currency": "EUR",
            "total_minor": 4498,
            "placed_at": "2024-11-05T14:03:27.512Z"
        })
    }

    #[test]
    fn upcasts_order_placed_v1_to_v2() {
        let v2 = to_current("order.placed", 1, v1_order()).expect("upcast");
        assert_eq!(v2["total"], json!({ "minor": 4498, "currency": "EUR" }));
        assert_eq!(
            v2["lines"][0]["unit_price"],
            json!({ "minor": 1999, "currency": "EUR" })
        );
        assert_eq!(
            v2["lines"][1]["unit_price"],
            json!({ "minor": 500, "currency": "EUR" })
        );
        assert!(v2.get("currency").is_none());
        assert!(v2.get("total_minor").is_none());
        assert!(v2["lines"][0].get("unit_price_minor").is_none());

        let placed: OrderPlaced = serde_json::from_value(v2).expect("current type");
        assert_eq!(placed.lines.len(), 2);
        assert_eq!(placed.total.minor, 4498);
        assert_eq!(placed.total.currency.as_str(), "EUR");
        assert_eq!(placed.lines[1].quantity, 1);
    }

    #[test]
    fn a_current_document_passes_through_untouched() {
        let doc = json!({ "anything": true });
        assert_eq!(
            to_current("order.placed", 2, doc.clone()).expect("current"),
            doc
        );
    }

    #[test]
    fn a_v1_order_without_currency_is_a_clear_error() {
        let mut doc = v1_order();
        doc.as_object_mut().expect("object").remove("currency");
        let err = to_current("order.placed", 1, doc).expect_err("must fail");
        match &err {
            CodecError::Upcast {
                event_type,
                from,
                reason,
            } => {
                assert_eq!(event_type, "order.placed");
                assert_eq!(*from, 1);
                assert!(reason.contains("currency"), "{reason}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains("order.placed v1"), "{shown}");
        assert!(shown.contains("currency"), "{shown}");
    }

    #[test]
    fn a_v1_line_without_its_price_is_a_clear_error() {
        let mut doc = v1_order();
        doc["lines"][1]
            .as_object_mut()
            .expect("object")
            .remove("unit_price_minor");
        let err = to_current("order.placed", 1, doc).expect_err("must fail");
        assert!(matches!(err, CodecError::Upcast { from: 1, .. }));
        assert!(err.to_string().contains("unit_price_minor"), "{err}");
    }

    #[test]
    fn refuses_version_zero_and_future_versions() {
        for v in [0, 3, 99] {
            assert!(matches!(
                to_current("order.placed", v, v1_order()),
                Err(CodecError::UnsupportedVersion { current: 2, .. })
            ));
        }
        assert!(matches!(
            to_current("listing.published", 0, json!({})),
            Err(CodecError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn a_plain_v1_registration_reads_as_version_2() {
        let v1 = json!({
            "account_id": "01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f",
            "email": "ada@example.org",
            "display_name": "Ada",
            "password_hash": "$argon2id$v=19$x",
            "roles": ["BUYER"],
            "registered_at": "2024-10-01T08:15:42.311Z"
        });
        let v2 = to_current("account.registered", 1, v1.clone()).expect("upcast");
        assert_eq!(v2, v1);
        let mut broken = v1;
        broken.as_object_mut().expect("object").remove("roles");
        let err = to_current("account.registered", 1, broken).expect_err("must fail");
        assert!(err.to_string().contains("roles"), "{err}");
    }

    #[test]
    fn a_v1_claim_loses_its_email_on_the_way_to_version_2() {
        let v1 = json!({
            "email": "ada@example.org",
            "account_id": "01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f",
            "claimed_at": "2024-10-01T08:15:42.311Z"
        });
        let v2 = to_current("email.claimed", 1, v1).expect("upcast");
        assert_eq!(v2.get("email"), None);
        assert_eq!(v2["account_id"], "01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f");
        let err =
            to_current("email.claimed", 1, json!({ "email": "a@b.c" })).expect_err("must fail");
        assert!(err.to_string().contains("account_id"), "{err}");
    }
}
