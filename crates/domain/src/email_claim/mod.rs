//! Email uniqueness, the event-sourced way: one stream per normalised email
//! (`email-<uuid of a keyed hash of the email>`), claimed before the account
//! is registered. Two registrations racing for one email collide on that
//! stream's expected revision, so exactly one wins.
//!
//! The stream id is an HMAC of the normalised email under the marketplace's
//! email index key ([`EmailDigest`], computed outside the domain, which
//! holds no keys), so neither the log nor the stream names reveal an email,
//! and nobody without the key can test whether an email is registered.
//! Streams of claims written before that were named by an unkeyed uuid v5
//! of the email ([`legacy_claim_id`]); the flows still consult them. A claim
//! whose account was erased is free at once.

mod command;
mod error;
mod event;
mod state;

pub use command::{ClaimEmail, EmailClaimCommand};
pub use error::EmailClaimError;
pub use event::{EmailClaimEvent, EmailClaimed};
pub use state::EmailClaim;

use chrono::Duration;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::values::Email;

/// How long an unfinished claim is protected before another account may take
/// it over.
pub const STALE_CLAIM_AFTER: Duration = Duration::minutes(5);

/// Namespace for the uuid v5 of claim streams.
const NAMESPACE: Uuid = Uuid::from_u128(0x5d0c_3a51_8f0e_4e3c_9a49_6d61_696c_0001);

/// A keyed hash (HMAC-SHA-256 under the email index key) of a normalised
/// email: what names its claim stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EmailDigest(pub [u8; 32]);

impl std::fmt::Debug for EmailDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailDigest(..)")
    }
}

/// The stream id (uuid part) that holds the claim on the email `digest`
/// is the hash of (a version 8 uuid of its first 16 bytes).
pub fn claim_id(digest: &EmailDigest) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.0[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The stream id claims were stored under before the keyed hash (an
/// unkeyed uuid v5 of the email); read only, to keep older claims unique.
pub fn legacy_claim_id(email: &Email) -> Uuid {
    Uuid::new_v5(&NAMESPACE, email.as_str().as_bytes())
}

impl Aggregate for EmailClaim {
    const CATEGORY: &'static str = "email";
    type Command = EmailClaimCommand;
    type Event = EmailClaimEvent;
    type Error = EmailClaimError;

    fn decide(&self, command: &EmailClaimCommand) -> Result<Vec<EmailClaimEvent>, EmailClaimError> {
        match command {
            EmailClaimCommand::Claim(c) => {
                match (self.claimant, self.claimed_at) {
                    (Some(holder), _) if holder == c.account_id => return Ok(vec![]),
                    (Some(_), _) if c.current_claimant_erased => {}
                    (Some(_), Some(since)) => {
                        let stale = c.at - since >= STALE_CLAIM_AFTER;
                        if c.current_claimant_registered || !stale {
                            return Err(EmailClaimError::EmailTaken);
                        }
                    }
                    (Some(_), None) => return Err(EmailClaimError::EmailTaken),
                    (None, _) => {}
                }
                Ok(vec![EmailClaimed {
                    account_id: c.account_id,
                    claimed_at: c.at,
                }
                .into()])
            }
        }
    }

    fn evolve(mut self, event: &EmailClaimEvent) -> Self {
        match event {
            EmailClaimEvent::Claimed(e) => {
                self.claimant = Some(e.account_id);
                self.claimed_at = Some(e.claimed_at);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::aggregate::given;
    use crate::values::AccountId;

    fn at(minute: u32) -> chrono::DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, minute, 0)
            .single()
            .expect("date")
    }

    fn claim(account: u128, minute: u32, registered: bool) -> EmailClaimCommand {
        EmailClaimCommand::Claim(ClaimEmail {
            account_id: AccountId(Uuid::from_u128(account)),
            current_claimant_registered: registered,
            current_claimant_erased: false,
            at: at(minute),
        })
    }

    fn claimed(account: u128, minute: u32) -> EmailClaimEvent {
        EmailClaimed {
            account_id: AccountId(Uuid::from_u128(account)),
            claimed_at: at(minute),
        }
        .into()
    }

    #[test]
    fn claims_a_free_email() {
        given::<EmailClaim>([])
            .when(claim(1, 0, false))
            .then_events([claimed(1, 0)]);
    }

    #[test]
    fn refuses_an_email_held_by_a_registered_account() {
        given::<EmailClaim>([claimed(1, 0)])
            .when(claim(2, 30, true))
            .then_error(EmailClaimError::EmailTaken);
    }

    #[test]
    fn refuses_a_fresh_unfinished_claim_of_another_account() {
        given::<EmailClaim>([claimed(1, 0)])
            .when(claim(2, 1, false))
            .then_error(EmailClaimError::EmailTaken);
    }

    #[test]
    fn takes_over_a_stale_claim_whose_account_never_registered() {
        given::<EmailClaim>([claimed(1, 0)])
            .when(claim(2, 10, false))
            .then_events([claimed(2, 10)]);
    }

    #[test]
    fn claiming_again_for_the_same_account_is_a_no_op() {
        given::<EmailClaim>([claimed(1, 0)])
            .when(claim(1, 0, false))
            .then_events([]);
    }

    #[test]
    fn an_erased_claimants_email_is_free_at_once() {
        let mut command = claim(2, 1, true);
        let EmailClaimCommand::Claim(c) = &mut command;
        c.current_claimant_erased = true;
        given::<EmailClaim>([claimed(1, 0)])
            .when(command)
            .then_events([claimed(2, 1)]);
    }

    #[test]
    fn names_the_claim_stream_by_the_digest() {
        let a = EmailDigest([7; 32]);
        assert_eq!(claim_id(&a), claim_id(&EmailDigest([7; 32])));
        assert_ne!(claim_id(&a), claim_id(&EmailDigest([8; 32])));
    }

    #[test]
    fn derives_one_legacy_stream_per_normalised_email() {
        let a = Email::parse("Ada@Example.com").expect("valid");
        let b = Email::parse("ada@example.com").expect("valid");
        assert_eq!(legacy_claim_id(&a), legacy_claim_id(&b));
        assert_ne!(
            legacy_claim_id(&a),
            legacy_claim_id(&Email::parse("bob@example.com").expect("valid"))
        );
    }
}
