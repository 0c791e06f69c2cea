//! Upcasters: old stored versions to the current one.
//!
//! Every event type is listed with its current version. A stored document
//! older than that passes through the chain of typed upcasters registered
//! for its type; one newer than that is refused rather than misread.

use crate::codec::CodecError;

/// The current schema version of every stored event type.
pub const CURRENT_VERSIONS: &[(&str, u32)] = &[
    ("account.registered", 1),
    ("email.claimed", 1),
    ("listing.created", 1),
    ("listing.published", 1),
];

/// The version this build writes for `event_type`, if it knows the type.
pub fn current_version(event_type: &str) -> Option<u32> {
    CURRENT_VERSIONS
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, v)| *v)
}

/// Brings `data` stored at `version` up to the current version.
pub fn to_current(
    event_type: &str,
    version: u32,
    data: serde_json::Value,
) -> Result<serde_json::Value, CodecError> {
    let current = current_version(event_type).unwrap_or(1);
    if version == current {
        return Ok(data);
    }
    // No type has an older version yet; the first real upcaster registers here.
    Err(CodecError::UnsupportedVersion {
        event_type: event_type.to_owned(),
        version,
        current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketplace_domain::account::AccountEvent;
    use marketplace_domain::email_claim::EmailClaimEvent;
    use marketplace_domain::listing::ListingEvent;
    use marketplace_domain::EventSet;

    #[test]
    fn every_domain_event_type_has_a_current_version() {
        for t in AccountEvent::TYPES
            .iter()
            .chain(EmailClaimEvent::TYPES)
            .chain(ListingEvent::TYPES)
        {
            assert!(
                current_version(t).is_some(),
                "{t} has no entry in CURRENT_VERSIONS"
            );
        }
        assert_eq!(
            CURRENT_VERSIONS.len(),
            AccountEvent::TYPES.len() + EmailClaimEvent::TYPES.len() + ListingEvent::TYPES.len()
        );
    }
}
