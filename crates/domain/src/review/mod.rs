//! The review aggregate: a buyer's rating of a listing from a delivered
//! order, moderated by an ADMIN.
//!
//! A review's id is derived from its (order, listing) pair, and its stream
//! is created with `NoStream`, so each order line is reviewed at most once
//! without any lookup table. Reviews start PENDING; only APPROVED ones count
//! toward a listing's rating (in the read models).

mod command;
mod error;
mod event;
mod state;

pub use command::{Decision, ModerateReview, OrderFacts, ReviewCommand, SubmitReview};
pub use error::ReviewError;
pub use event::{ReviewApproved, ReviewEvent, ReviewRejected, ReviewSubmitted};
pub use state::{Review, ReviewStatus};

use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::order::OrderStatus;
use crate::values::{ListingId, OrderId, ReviewId, Role};

/// Namespace of review ids derived from (order, listing).
const REVIEW_NS: Uuid = Uuid::from_u128(0x7265_7669_6577_5000_8000_0000_0000_0000);

impl ReviewId {
    /// The one review an order line may have.
    pub fn for_line(order: OrderId, listing: ListingId) -> ReviewId {
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(order.0.as_bytes());
        name[16..].copy_from_slice(listing.0.as_bytes());
        ReviewId(Uuid::new_v5(&REVIEW_NS, &name))
    }
}

impl Aggregate for Review {
    const CATEGORY: &'static str = "review";
    type Command = ReviewCommand;
    type Event = ReviewEvent;
    type Error = ReviewError;

    fn decide(&self, command: &ReviewCommand) -> Result<Vec<ReviewEvent>, ReviewError> {
        match command {
            ReviewCommand::Submit(c) => {
                if self.status != ReviewStatus::Absent {
                    return Err(ReviewError::AlreadyReviewed);
                }
                let order = c.order.as_ref().ok_or(ReviewError::OrderNotFound)?;
                if order.buyer_id != c.author.account_id {
                    return Err(ReviewError::NotTheBuyer);
                }
                if order.status != OrderStatus::Delivered {
                    return Err(ReviewError::NotDelivered);
                }
                if !order.listing_ids.contains(&c.listing_id) {
                    return Err(ReviewError::ListingNotInOrder);
                }
                Ok(vec![ReviewSubmitted {
                    review_id: ReviewId::for_line(order.order_id, c.listing_id),
                    listing_id: c.listing_id,
                    order_id: order.order_id,
                    author_id: c.author.account_id,
                    rating: c.rating,
                    comment: c.comment.clone().into(),
                    submitted_at: c.at,
                }
                .into()])
            }
            ReviewCommand::Moderate(c) => {
                let (Some(id), Some(listing_id), Some(rating)) =
                    (self.id, self.listing_id, self.rating)
                else {
                    return Err(ReviewError::NotFound);
                };
                if !c.moderator.has(Role::Admin) {
                    return Err(ReviewError::NotAnAdmin);
                }
                if self.status != ReviewStatus::Pending {
                    return Err(ReviewError::AlreadyModerated);
                }
                Ok(vec![match &c.decision {
                    Decision::Approve => ReviewApproved {
                        review_id: id,
                        listing_id,
                        rating,
                        moderator_id: c.moderator.account_id,
                        approved_at: c.at,
                    }
                    .into(),
                    Decision::Reject(reason) => ReviewRejected {
                        review_id: id,
                        listing_id,
                        moderator_id: c.moderator.account_id,
                        reason: reason.clone().ok_or(ReviewError::ReasonRequired)?,
                        rejected_at: c.at,
                    }
                    .into(),
                }])
            }
        }
    }

    fn evolve(mut self, event: &ReviewEvent) -> Self {
        match event {
            ReviewEvent::Submitted(e) => {
                self.id = Some(e.review_id);
                self.listing_id = Some(e.listing_id);
                self.order_id = Some(e.order_id);
                self.author_id = Some(e.author_id);
                self.rating = Some(e.rating);
                self.comment = e.comment.known().cloned();
                self.status = ReviewStatus::Pending;
                self.submitted_at = Some(e.submitted_at);
            }
            ReviewEvent::Approved(_) => self.status = ReviewStatus::Approved,
            ReviewEvent::Rejected(e) => {
                self.status = ReviewStatus::Rejected;
                self.rejection_reason = Some(e.reason.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::aggregate::given;
    use crate::values::{AccountId, Actor, Rating, Reason, ReviewComment};

    const ORDER: OrderId = OrderId(Uuid::from_u128(900));
    const LISTING: ListingId = ListingId(Uuid::from_u128(42));

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0)
            .single()
            .expect("date")
    }

    fn buyer() -> Actor {
        Actor {
            account_id: AccountId(Uuid::from_u128(1)),
            roles: vec![Role::Buyer],
        }
    }

    fn admin() -> Actor {
        Actor {
            account_id: AccountId(Uuid::from_u128(3)),
            roles: vec![Role::Admin],
        }
    }

    fn facts(status: OrderStatus) -> OrderFacts {
        OrderFacts {
            order_id: ORDER,
            buyer_id: buyer().account_id,
            status,
            listing_ids: vec![LISTING],
        }
    }

    fn submit(author: Actor, listing: ListingId, order: Option<OrderFacts>) -> ReviewCommand {
        ReviewCommand::Submit(SubmitReview {
            author,
            listing_id: listing,
            order,
            rating: Rating::parse(4).expect("valid"),
            comment: ReviewComment::parse("Solid lamp.").expect("valid"),
            at: at(),
        })
    }

    fn submitted() -> ReviewEvent {
        ReviewSubmitted {
            review_id: ReviewId::for_line(ORDER, LISTING),
            listing_id: LISTING,
            order_id: ORDER,
            author_id: buyer().account_id,
            rating: Rating::parse(4).expect("valid"),
            comment: ReviewComment::parse("Solid lamp.").expect("valid").into(),
            submitted_at: at(),
        }
        .into()
    }

    fn moderate(moderator: Actor, decision: Decision) -> ReviewCommand {
        ReviewCommand::Moderate(ModerateReview {
            moderator,
            decision,
            at: at(),
        })
    }

    #[test]
    fn the_buyer_of_a_delivered_order_reviews_its_listing_pending_moderation() {
        let state = given::<Review>([])
            .when(submit(
                buyer(),
                LISTING,
                Some(facts(OrderStatus::Delivered)),
            ))
            .then_events([submitted()]);
        assert_eq!(state.status, ReviewStatus::Pending);
    }

    #[test]
    fn refuses_reviews_that_break_the_rules() {
        let stranger = Actor {
            account_id: AccountId(Uuid::from_u128(9)),
            roles: vec![Role::Buyer],
        };
        let cases = [
            (
                submit(stranger, LISTING, Some(facts(OrderStatus::Delivered))),
                ReviewError::NotTheBuyer,
            ),
            (
                submit(buyer(), LISTING, Some(facts(OrderStatus::Shipped))),
                ReviewError::NotDelivered,
            ),
            (
                submit(
                    buyer(),
                    ListingId(Uuid::from_u128(43)),
                    Some(facts(OrderStatus::Delivered)),
                ),
                ReviewError::ListingNotInOrder,
            ),
            (submit(buyer(), LISTING, None), ReviewError::OrderNotFound),
        ];
        for (command, error) in cases {
            given::<Review>([]).when(command).then_error(error);
        }
    }

    #[test]
    fn each_order_line_is_reviewed_once() {
        given::<Review>([submitted()])
            .when(submit(
                buyer(),
                LISTING,
                Some(facts(OrderStatus::Delivered)),
            ))
            .then_error(ReviewError::AlreadyReviewed);
        assert_ne!(
            ReviewId::for_line(ORDER, LISTING),
            ReviewId::for_line(ORDER, ListingId(Uuid::from_u128(43)))
        );
    }

    #[test]
    fn an_admin_approves_a_pending_review_once() {
        let state = given::<Review>([submitted()])
            .when(moderate(admin(), Decision::Approve))
            .then_events([ReviewApproved {
                review_id: ReviewId::for_line(ORDER, LISTING),
                listing_id: LISTING,
                rating: Rating::parse(4).expect("valid"),
                moderator_id: admin().account_id,
                approved_at: at(),
            }
            .into()]);
        assert_eq!(state.status, ReviewStatus::Approved);
        let approved = ReviewApproved {
            review_id: ReviewId::for_line(ORDER, LISTING),
            listing_id: LISTING,
            rating: Rating::parse(4).expect("valid"),
            moderator_id: admin().account_id,
            approved_at: at(),
        };
        given::<Review>([submitted(), approved.into()])
            .when(moderate(admin(), Decision::Approve))
            .then_error(ReviewError::AlreadyModerated);
    }

    #[test]
    fn an_admin_rejects_with_a_reason_only() {
        let reason = Reason::parse("off-topic").expect("valid");
        let state = given::<Review>([submitted()])
            .when(moderate(admin(), Decision::Reject(Some(reason.clone()))))
            .then_events([ReviewRejected {
                review_id: ReviewId::for_line(ORDER, LISTING),
                listing_id: LISTING,
                moderator_id: admin().account_id,
                reason: reason.clone(),
                rejected_at: at(),
            }
            .into()]);
        assert_eq!(state.rejection_reason, Some(reason));
        given::<Review>([submitted()])
            .when(moderate(admin(), Decision::Reject(None)))
            .then_error(ReviewError::ReasonRequired);
    }

    #[test]
    fn only_admins_moderate_existing_reviews() {
        given::<Review>([submitted()])
            .when(moderate(buyer(), Decision::Approve))
            .then_error(ReviewError::NotAnAdmin);
        given::<Review>([])
            .when(moderate(admin(), Decision::Approve))
            .then_error(ReviewError::NotFound);
    }
}
