//! The typed envelope: a stored event decoded once, through the codec and
//! its upcasters, into [`Event`] plus where it sits in the log.
//!
//! A consumer says which aggregates it reads (a `reads(AggregateKind)`
//! predicate). An event that cannot be decoded stops a consumer that reads
//! its aggregate, at that event, and is passed over by the others, as is an
//! event of a stream no aggregate owns: [`decode_for`] and
//! [`DecodeFailure::concerns`].

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use marketplace_domain::{AggregateKind, Event};
use marketplace_event_schemas::CodecError;
use marketplace_store::{EventMetadata, Position, RecordedEvent, StreamId};
use uuid::Uuid;

/// A decoded event with its place in the log and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its place in the stream.
    pub revision: u64,
    /// Its place in the global log.
    pub position: Position,
    /// Unique id.
    pub event_id: Uuid,
    /// Correlation, causation, actor, time and hash chain.
    pub metadata: EventMetadata,
    /// The event, at its current schema version.
    pub event: Event,
}

/// Why a stored event could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not decode {event_type} at position {position}: {source}")]
pub struct DecodeFailure {
    /// Stored name.
    pub event_type: String,
    /// The aggregate of its stream; `None` for a stream no aggregate owns.
    pub aggregate: Option<AggregateKind>,
    /// Where in the log.
    pub position: Position,
    /// What the codec said.
    #[source]
    pub source: CodecError,
}

impl DecodeFailure {
    /// Whether a consumer that reads the aggregates `reads` holds for must
    /// stop here: the event is of one of them. An event of another
    /// aggregate, or of a stream no aggregate owns, is passed over.
    pub fn concerns(&self, reads: impl FnOnce(AggregateKind) -> bool) -> bool {
        self.aggregate.is_some_and(reads)
    }
}

/// Decodes a batch, in log order, for a consumer that reads the aggregates
/// `reads` holds for (see [`Envelope::decode_for`]): the first event it
/// reads and cannot decode fails the batch.
/// The batch may hold the events or share them (`Arc`s from a
/// subscription).
pub fn decode_for<R: Borrow<RecordedEvent>>(
    batch: &[R],
    reads: impl Fn(AggregateKind) -> bool,
) -> Result<Vec<Envelope>, DecodeFailure> {
    let mut out = Vec::with_capacity(batch.len());
    for recorded in batch {
        out.extend(Envelope::decode_for(recorded.borrow(), &reads)?);
    }
    Ok(out)
}

impl Envelope {
    /// Decodes `recorded` (upcasting old schema versions).
    pub fn decode(recorded: &RecordedEvent) -> Result<Envelope, DecodeFailure> {
        let event = marketplace_event_schemas::decode_any(
            recorded.stream_id.category(),
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        )
        .map_err(|source| DecodeFailure {
            event_type: recorded.event_type.clone(),
            aggregate: AggregateKind::of_category(recorded.stream_id.category()),
            position: recorded.position,
            source,
        })?;
        Ok(Envelope {
            stream_id: recorded.stream_id.clone(),
            revision: recorded.revision,
            position: recorded.position,
            event_id: recorded.event_id,
            metadata: recorded.metadata.clone(),
            event,
        })
    }

    /// Decodes `recorded` for a consumer that reads the aggregates `reads`
    /// holds for: `Ok(None)`, without decoding it at all, for an event of
    /// an aggregate it does not read (or of a stream no aggregate owns); an
    /// event it reads that cannot be decoded is an error.
    pub fn decode_for(
        recorded: &RecordedEvent,
        reads: impl FnOnce(AggregateKind) -> bool,
    ) -> Result<Option<Envelope>, DecodeFailure> {
        match AggregateKind::of_category(recorded.stream_id.category()) {
            Some(aggregate) if reads(aggregate) => Envelope::decode(recorded).map(Some),
            Some(_) | None => Ok(None),
        }
    }

    /// When the store recorded it (the epoch if a backend lost it).
    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.metadata.recorded_at.unwrap_or_default()
    }

    /// Its stream's entity id (the uuid after the category).
    pub fn entity_id(&self) -> Uuid {
        self.stream_id.id()
    }
}

#[cfg(test)]
mod tests {
    use marketplace_domain::email_claim::{EmailClaim, EmailClaimEvent, EmailClaimed};
    use marketplace_domain::review::Review;
    use marketplace_domain::values::AccountId;
    use marketplace_domain::Aggregate;
    use serde_json::json;

    use super::*;

    fn recorded(category: &str, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            stream_id: StreamId::new(category, Uuid::now_v7()).expect("stream"),
            revision: 0,
            position: Position(7),
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            schema_version: 1,
            data,
            metadata: EventMetadata::default(),
        }
    }

    fn claimed() -> RecordedEvent {
        let e = EmailClaimed {
            account_id: AccountId(Uuid::now_v7()),
            claimed_at: Utc::now(),
        };
        let data = serde_json::to_value(&e).expect("encode");
        RecordedEvent {
            schema_version: 2,
            ..recorded(EmailClaim::CATEGORY, "email.claimed", data)
        }
    }

    fn poison_review() -> RecordedEvent {
        recorded(
            Review::CATEGORY,
            "review.submitted",
            json!({ "not": "a review" }),
        )
    }

    #[test]
    fn decodes_a_stored_event_into_its_aggregates_variant() {
        let stored = claimed();
        let envelope = Envelope::decode(&stored).expect("decodes");
        assert!(matches!(
            envelope.event,
            Event::EmailClaim(EmailClaimEvent::Claimed(_))
        ));
        assert_eq!(envelope.entity_id(), stored.stream_id.id());
        assert_eq!(envelope.position, stored.position);
    }

    #[test]
    fn an_undecodable_event_stops_only_the_consumers_that_read_its_aggregate() {
        let failure = Envelope::decode(&poison_review()).expect_err("poison");
        assert_eq!(failure.aggregate, Some(AggregateKind::Review));
        assert!(failure.concerns(|a| a == AggregateKind::Review));
        assert!(!failure.concerns(|a| a == AggregateKind::Order));

        let batch = [claimed(), poison_review(), claimed()];
        let passed = decode_for(&batch, |a| a == AggregateKind::EmailClaim).expect("passes over");
        assert_eq!(passed.len(), 2);
        let stopped = decode_for(&batch, |_| true).expect_err("stops");
        assert_eq!(stopped.event_type, "review.submitted");
    }

    #[test]
    fn an_event_of_a_stream_no_aggregate_owns_is_passed_over_by_everyone() {
        let foreign = recorded("tick", "test.ticked", json!({ "n": 1 }));
        let failure = Envelope::decode(&foreign).expect_err("not an aggregate's");
        assert_eq!(failure.aggregate, None);
        assert!(!failure.concerns(|_| true));
        assert_eq!(Envelope::decode_for(&foreign, |_| true), Ok(None));
    }
}
