//! Personal data in stored events (DESIGN.md §6b): which fields are
//! personal, and sealing them under their owner's data key.
//!
//! [`PERSONAL`] is the one list of personal fields, per event type and
//! version, with the field naming the person they belong to (the
//! *subject*, whose data key seals them). The current schemas mark the
//! same fields with `"x-personal": true`; a contract test keeps the two in
//! step. Version 1 of `account.registered`, of `email.claimed` and of
//! `review.submitted` (whose free-text comment can identify its author)
//! held personal fields in the clear: they are listed (unsealed) so that a
//! read after an erasure hides them too.
//!
//! A sealed field is stored as `{"sealed": "<base64>"}`: a random 24-byte
//! XChaCha20-Poly1305 nonce, then the ciphertext of the field's JSON
//! value, authenticated with `"<event type>|<field>|<subject>"` as
//! associated data, so a sealed value cannot be moved to another field or
//! another person's event. [`seal`] turns the plain document the codec
//! encodes into the stored one; [`open`] turns a stored one back, with
//! every personal field `null` (hence [`Personal::Erased`]) when the key is
//! gone. Keys themselves live outside the log (`marketplace-keys`).
//!
//! The email index key ([`EmailIndexKey`]) is the HMAC-SHA-256 key that
//! names email claim streams ([`EmailIndexKey::digest`]).
//!
//! [`Personal::Erased`]: marketplace_domain::values::Personal::Erased

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, Mac};
use marketplace_domain::email_claim::EmailDigest;
use marketplace_domain::values::Email;
use serde_json::Value;
use uuid::Uuid;

/// The personal fields of one event type at one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonalFields {
    /// Stored name.
    pub event_type: &'static str,
    /// Schema version.
    pub version: u32,
    /// The field holding the id of the person the fields belong to.
    pub subject: &'static str,
    /// The personal fields.
    pub fields: &'static [&'static str],
    /// Whether this version stores them sealed (else in the clear).
    pub sealed: bool,
}

/// Every event type and version with personal fields.
pub const PERSONAL: &[PersonalFields] = &[
    PersonalFields {
        event_type: "account.registered",
        version: 1,
        subject: "account_id",
        fields: &["email", "display_name", "password_hash"],
        sealed: false,
    },
    PersonalFields {
        event_type: "account.registered",
        version: 2,
        subject: "account_id",
        fields: &["email", "display_name", "password_hash"],
        sealed: true,
    },
    PersonalFields {
        event_type: "email.claimed",
        version: 1,
        subject: "account_id",
        fields: &["email"],
        sealed: false,
    },
    PersonalFields {
        event_type: "review.submitted",
        version: 1,
        subject: "author_id",
        fields: &["comment"],
        sealed: false,
    },
    PersonalFields {
        event_type: "review.submitted",
        version: 2,
        subject: "author_id",
        fields: &["comment"],
        sealed: true,
    },
];

/// The personal fields of `event_type` at `version`, if it has any.
pub fn personal_fields(event_type: &str, version: u32) -> Option<&'static PersonalFields> {
    PERSONAL
        .iter()
        .find(|p| p.event_type == event_type && p.version == version)
}

/// The person whose data `data` (of `event_type` at `version`) holds, if
/// it holds any.
pub fn subject(event_type: &str, version: u32, data: &Value) -> Option<Uuid> {
    let spec = personal_fields(event_type, version)?;
    data.get(spec.subject)?.as_str()?.parse().ok()
}

/// A 256-bit key: a person's data key, or the email index key. Its `Debug`
/// is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

/// A person's data key: their personal fields are sealed under it.
pub type DataKey = SecretKey;

impl SecretKey {
    /// A fresh random key (from the operating system's generator).
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key);
        Self(bytes)
    }

    /// The key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key of a slice, if it is 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Its bytes, for wrapping.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// Encrypts `plaintext` with `aad` as associated data: nonce, then
    /// ciphertext and tag.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Crypto)?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        Ok(out)
    }

    /// Decrypts what [`SecretKey::encrypt`] produced with the same `aad`.
    pub fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 24 {
            return Err(SealError::Crypto);
        }
        let (nonce, ct) = sealed.split_at(24);
        self.cipher()
            .decrypt(nonce.into(), Payload { msg: ct, aad })
            .map_err(|_| SealError::Crypto)
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// The HMAC-SHA-256 key that names email claim streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailIndexKey(pub SecretKey);

impl EmailIndexKey {
    /// The keyed hash of a normalised email.
    pub fn digest(&self, email: &Email) -> EmailDigest {
        let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.0.as_bytes()) else {
            unreachable!("HMAC accepts keys of any length")
        };
        mac.update(email.as_str().as_bytes());
        EmailDigest(mac.finalize().into_bytes().into())
    }
}

/// Why personal fields could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The document has no (valid) subject id field.
    #[error("{event_type}: no valid `{field}` to name whose data this is")]
    NoSubject {
        /// Stored name.
        event_type: String,
        /// The subject field.
        field: &'static str,
    },
    /// A sealed value is malformed, or does not authenticate under the key
    /// (edited, moved, or sealed under another key).
    #[error("a sealed personal field does not open under its owner's key")]
    Crypto,
}

fn aad(event_type: &str, field: &str, subject: Uuid) -> Vec<u8> {
    format!("{event_type}|{field}|{subject}").into_bytes()
}

fn subject_of(spec: &PersonalFields, data: &Value) -> Result<Uuid, SealError> {
    data.get(spec.subject)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SealError::NoSubject {
            event_type: spec.event_type.to_owned(),
            field: spec.subject,
        })
}

/// Seals the personal fields of a plain document of `event_type` at
/// `version` (as the codec encodes it) under `key`; a document of a type
/// without sealed personal fields is returned as it is. A field that is
/// `null` (erased already) stays `null`.
pub fn seal(
    event_type: &str,
    version: u32,
    mut data: Value,
    key: &DataKey,
) -> Result<Value, SealError> {
    let Some(spec) = personal_fields(event_type, version).filter(|s| s.sealed) else {
        return Ok(data);
    };
    let subject = subject_of(spec, &data)?;
    let engine = base64::engine::general_purpose::STANDARD;
    for field in spec.fields {
        let Some(value) = data.get_mut(*field) else {
            continue;
        };
        if value.is_null() || is_sealed(value) {
            continue;
        }
        let plain = value.to_string();
        let sealed = key.encrypt(plain.as_bytes(), &aad(event_type, field, subject))?;
        *value = serde_json::json!({ "sealed": engine.encode(sealed) });
    }
    Ok(data)
}

/// Whether `value` is a sealed field.
pub fn is_sealed(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.get("sealed").is_some_and(Value::is_string))
}

/// Opens the personal fields of a stored document of `event_type` at
/// `version` with its subject's key; with `None` (the key was destroyed),
/// every personal field, sealed or historic plain text, becomes `null`.
/// A document of a type without personal fields is returned as it is.
pub fn open(
    event_type: &str,
    version: u32,
    mut data: Value,
    key: Option<&DataKey>,
) -> Result<Value, SealError> {
    let Some(spec) = personal_fields(event_type, version) else {
        return Ok(data);
    };
    let subject = subject_of(spec, &data)?;
    let engine = base64::engine::general_purpose::STANDARD;
    for field in spec.fields {
        let Some(value) = data.get_mut(*field) else {
            continue;
        };
        let Some(key) = key else {
            *value = Value::Null;
            continue;
        };
        if !is_sealed(value) {
            continue;
        }
        let encoded = value["sealed"].as_str().unwrap_or_default();
        let sealed = engine.decode(encoded).map_err(|_| SealError::Crypto)?;
        let plain = key.decrypt(&sealed, &aad(event_type, field, subject))?;
        *value = serde_json::from_slice(&plain).map_err(|_| SealError::Crypto)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn registered() -> Value {
        json!({
            "account_id": "01932c4e-8a5b-7c3d-9e1f-2a3b4c5d6e7f",
            "email": "ada@example.org",
            "display_name": "Ada Lovelace",
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "roles": ["BUYER"],
            "registered_at": "2024-10-01T08:15:42.311Z"
        })
    }

    #[test]
    fn seals_every_personal_field_and_opens_them_with_the_key() {
        let key = SecretKey::generate();
        let sealed = seal("account.registered", 2, registered(), &key).expect("seal");
        let text = sealed.to_string();
        assert!(!text.contains("ada@example.org") && !text.contains("Lovelace"));
        assert!(!text.contains("argon2"));
        assert!(is_sealed(&sealed["email"]));
        assert_eq!(sealed["roles"], json!(["BUYER"]));
        let opened = open("account.registered", 2, sealed, Some(&key)).expect("open");
        assert_eq!(opened, registered());
    }

    #[test]
    fn without_the_key_every_personal_field_reads_as_erased() {
        let key = SecretKey::generate();
        let sealed = seal("account.registered", 2, registered(), &key).expect("seal");
        let opened = open("account.registered", 2, sealed, None).expect("open");
        assert_eq!(opened["email"], Value::Null);
        assert_eq!(opened["password_hash"], Value::Null);
        assert_eq!(opened["roles"], json!(["BUYER"]));
        let legacy = open("account.registered", 1, registered(), None).expect("open v1");
        assert_eq!(legacy["display_name"], Value::Null);
    }

    #[test]
    fn a_sealed_field_does_not_open_under_another_key_or_in_another_field() {
        let key = SecretKey::generate();
        let mut sealed = seal("account.registered", 2, registered(), &key).expect("seal");
        assert_eq!(
            open(
                "account.registered",
                2,
                sealed.clone(),
                Some(&SecretKey::generate())
            ),
            Err(SealError::Crypto)
        );
        sealed["display_name"] = sealed["email"].clone();
        assert_eq!(
            open("account.registered", 2, sealed, Some(&key)),
            Err(SealError::Crypto)
        );
    }

    #[test]
    fn the_email_digest_depends_on_the_key() {
        let email = Email::parse("ada@example.org").expect("email");
        let a = EmailIndexKey(SecretKey::from_bytes([1; 32]));
        let b = EmailIndexKey(SecretKey::from_bytes([2; 32]));
        assert_eq!(a.digest(&email), a.digest(&email));
        assert_ne!(a.digest(&email), b.digest(&email));
    }
}
