//! Signed head anchors: what closes the last hole in the tamper evidence.
//!
//! Hash chains catch an edited event and a deleted one inside a stream or
//! the log, but not the newest events cut from the end: the log that is
//! left is a consistent, shorter log. An [`Anchor`] is a signed statement
//! "at time T the log reached position P, whose event hashed H", signed
//! with Ed25519 (`ed25519-dalek`) under the anchor key from configuration
//! (`MARKETPLACE_ANCHOR_KEY`, 64 hex characters: the secret seed).
//! Anchors are kept outside the database (a file, or posted to a URL),
//! one JSON object a line. [`check`] proves the log still holds, at each
//! anchored position, the very event that was anchored.
//!
//! Known difference: on KurrentDB (sparse positions) finding the head
//! event and an anchored event scans the log from the start.

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use marketplace_store::{EventStore, Position, RecordedEvent, StoreError};
use serde::{Deserialize, Serialize};

/// The Ed25519 key that signs anchors. Its `Debug` shows only the public
/// half.
#[derive(Clone)]
pub struct AnchorKey(SigningKey);

impl std::fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnchorKey(public {})", self.public_hex())
    }
}

/// Why an anchor key or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// Not 64 hex characters.
    #[error("an anchor key must be 64 hex characters (32 bytes), e.g. `openssl rand -hex 32`")]
    BadKey,
    /// A line of an anchor file is not an anchor.
    #[error("line {line} of the anchor file is not an anchor: {reason}")]
    BadLine {
        /// 1-based.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log is empty: there is no head to anchor.
    #[error("the log is empty: nothing to anchor")]
    EmptyLog,
}

impl AnchorKey {
    /// Parses the 32-byte secret seed from 64 hex characters.
    pub fn from_hex(seed: &str) -> Result<Self, AnchorError> {
        let bytes = hex::decode(seed.trim()).map_err(|_| AnchorError::BadKey)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| AnchorError::BadKey)?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The public key, in hex, to verify with.
    pub fn public_hex(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }
}

/// Parses a public anchor key from 64 hex characters.
pub fn verifying_key_from_hex(public: &str) -> Result<VerifyingKey, AnchorError> {
    let bytes = hex::decode(public.trim()).map_err(|_| AnchorError::BadKey)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| AnchorError::BadKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AnchorError::BadKey)
}

/// A signed checkpoint of the log's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The head's position.
    pub position: u64,
    /// The head event's chain hash (`metadata.hash`).
    pub hash: String,
    /// When it was signed.
    pub at: DateTime<Utc>,
    /// The signer's public key, hex (informative: verification uses the
    /// configured key, never this one).
    pub public_key: String,
    /// Ed25519 signature over [`Anchor::message`], hex.
    pub signature: String,
}

impl Anchor {
    /// What is signed: a label, the position, the hash and the time.
    pub fn message(position: u64, hash: &str, at: DateTime<Utc>) -> String {
        format!(
            "marketplace-anchor-v1|{position}|{hash}|{}",
            at.to_rfc3339_opts(SecondsFormat::Micros, true)
        )
    }

    /// Signs the head `(position, hash)` at `at`.
    pub fn sign(position: u64, hash: &str, at: DateTime<Utc>, key: &AnchorKey) -> Self {
        let signature = key.0.sign(Self::message(position, hash, at).as_bytes());
        Self {
            position,
            hash: hash.to_owned(),
            at,
            public_key: key.public_hex(),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Whether its signature holds under `key`.
    pub fn is_signed_by(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let message = Self::message(self.position, &self.hash, self.at);
        key.verify(message.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// One line of an anchor file.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Parses an anchor file: one JSON anchor a line, blank lines skipped.
pub fn parse_file(text: &str) -> Result<Vec<Anchor>, AnchorError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AnchorError::BadLine {
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The event at `position`, if the log holds one there.
async fn event_at(
    store: &dyn EventStore,
    position: u64,
) -> Result<Option<RecordedEvent>, StoreError> {
    if position == 0 {
        return Ok(None);
    }
    if store.dense_positions() {
        let page = store.read_all(Position(position - 1), 1).await?;
        return Ok(page.into_iter().find(|e| e.position.0 == position));
    }
    let mut from = Position::START;
    loop {
        let page = store.read_all(from, 1_000).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(None);
        };
        if let Some(e) = page.into_iter().find(|e| e.position.0 >= position) {
            return Ok((e.position.0 == position).then_some(e));
        }
        from = last;
    }
}

/// Signs the log's current head (read from the stored, sealed events).
pub async fn anchor_head(
    store: &dyn EventStore,
    key: &AnchorKey,
    now: DateTime<Utc>,
) -> Result<Anchor, AnchorError> {
    let head = store.head().await?;
    let event = event_at(store, head.0)
        .await?
        .ok_or(AnchorError::EmptyLog)?;
    let hash = event.metadata.hash.unwrap_or_default();
    Ok(Anchor::sign(head.0, &hash, now, key))
}

/// What checking the log against anchors found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnchorReport {
    /// Anchors whose event is still in the log, unchanged.
    pub held: usize,
    /// Every way the log fails an anchor (an empty list: it holds them all).
    pub breaks: Vec<String>,
    /// The newest anchored position that holds.
    pub anchored_up_to: u64,
    /// The log's head.
    pub head: u64,
}

impl AnchorReport {
    /// Events after the newest anchor, which no anchor covers yet.
    pub fn unanchored(&self) -> u64 {
        self.head.saturating_sub(self.anchored_up_to)
    }
}

/// Checks the log against `anchors` signed by `key`: each must be signed
/// by it, and its position must still hold the event with its hash.
pub async fn check(
    store: &dyn EventStore,
    anchors: &[Anchor],
    key: &VerifyingKey,
) -> Result<AnchorReport, AnchorError> {
    let mut report = AnchorReport {
        head: store.head().await?.0,
        ..AnchorReport::default()
    };
    for a in anchors {
        let when = a.at.to_rfc3339_opts(SecondsFormat::Secs, true);
        if !a.is_signed_by(key) {
            report.breaks.push(format!(
                "the anchor of position {} ({when}) is not signed by the configured anchor key",
                a.position
            ));
            continue;
        }
        match event_at(store, a.position).await? {
            None => report.breaks.push(format!(
                "position {} was anchored at {when} but the log no longer holds it (head is {}): events were cut from the log",
                a.position, report.head
            )),
            Some(e) if e.metadata.hash.as_deref() != Some(a.hash.as_str()) => {
                report.breaks.push(format!(
                    "the event at position {} is not the one anchored at {when} (its hash differs)",
                    a.position
                ));
            }
            Some(_) => {
                report.held += 1;
                report.anchored_up_to = report.anchored_up_to.max(a.position);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AnchorKey {
        AnchorKey::from_hex(&"07".repeat(32)).expect("key")
    }

    #[test]
    fn an_anchor_verifies_under_its_key_only_and_not_once_changed() {
        let a = Anchor::sign(42, "abc", Utc::now(), &key());
        assert!(a.is_signed_by(&key().verifying_key()));
        let other = AnchorKey::from_hex(&"08".repeat(32)).expect("key");
        assert!(!a.is_signed_by(&other.verifying_key()));
        let mut moved = a.clone();
        moved.position = 41;
        assert!(!moved.is_signed_by(&key().verifying_key()));
        let back = parse_file(&format!("{}\n\n{}\n", a.to_line(), a.to_line())).expect("parse");
        assert_eq!(back, vec![a.clone(), a]);
        assert!(parse_file("{nope").is_err());
    }
}
