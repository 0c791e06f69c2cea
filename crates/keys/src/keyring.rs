//! The key table: one data key per person, wrapped under the master key,
//! and the marketplace's own email index key (all SQL on `data_keys` and
//! `keyring_secrets` is here).
//!
//! Wrapping is XChaCha20-Poly1305 under the master key with the subject
//! (or the secret's name) as associated data, so a wrapped key cannot be
//! moved to another row. Rows record the fingerprint of the master key
//! that wraps them ([`MasterKey::id`]), so a rotation that was cut short
//! can be run again and finishes what is left.

use std::collections::HashMap;

use marketplace_event_schemas::personal::{DataKey, EmailIndexKey, SealError, SecretKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The name of the email index key in `keyring_secrets`.
const EMAIL_INDEX: &str = "email-index";

/// The master key from configuration (`MARKETPLACE_MASTER_KEY`: 64 hex
/// characters). Its `Debug` is redacted.
#[derive(Clone)]
pub struct MasterKey(SecretKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// Parses 64 hex characters (32 bytes).
    pub fn from_hex(hex_key: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| KeyError::BadMasterKey)?;
        SecretKey::from_slice(&bytes)
            .map(Self)
            .ok_or(KeyError::BadMasterKey)
    }

    /// A fresh random master key.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// The key as 64 hex characters, to persist it (development only).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Its fingerprint, stored beside every key it wraps: the first 8
    /// bytes of SHA-256 over a label and the key, in hex.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"marketplace master key id|");
        h.update(self.0.as_bytes());
        hex::encode(&h.finalize()[..8])
    }

    fn wrap(&self, key: &SecretKey, label: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0
            .encrypt(key.as_bytes(), label)
            .map_err(KeyError::from)
    }

    fn unwrap_key(&self, wrapped: &[u8], label: &[u8]) -> Result<SecretKey, KeyError> {
        let bytes = self.0.decrypt(wrapped, label)?;
        SecretKey::from_slice(&bytes).ok_or(KeyError::WrongMasterKey)
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The database failed.
    #[error("key table: {0}")]
    Database(#[from] sqlx::Error),
    /// The configured master key is not 64 hex characters.
    #[error("the master key must be 64 hex characters (32 bytes), e.g. `openssl rand -hex 32`")]
    BadMasterKey,
    /// A wrapped key does not open under the configured master key.
    #[error("a data key does not unwrap under the configured master key (wrong MARKETPLACE_MASTER_KEY?)")]
    WrongMasterKey,
    /// Personal data cannot be written for an erased person.
    #[error("the account {0} was erased: no personal data can be stored for it")]
    Erased(Uuid),
}

impl From<SealError> for KeyError {
    fn from(_: SealError) -> Self {
        KeyError::WrongMasterKey
    }
}

/// What the key table holds for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// A live data key.
    Live(DataKey),
    /// Erased: the key was destroyed.
    Erased,
    /// No key was ever made (the person has no sealed data).
    Absent,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rotation {
    /// Keys re-wrapped under the new master key.
    pub rewrapped: u64,
    /// Keys already under the new master key (an earlier, cut-short run).
    pub already: u64,
}

/// The key table, read and written with the configured master key.
#[derive(Debug, Clone)]
pub struct Keyring {
    pool: PgPool,
    master: MasterKey,
}

/// Applies the key table's migrations (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    // Other crates keep their own migrations in the same database.
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

impl Keyring {
    /// The key table on `pool`, under `master`.
    pub fn new(pool: PgPool, master: MasterKey) -> Self {
        Self { pool, master }
    }

    /// The master key's fingerprint.
    pub fn master_id(&self) -> String {
        self.master.id()
    }

    /// What the table holds for each of `subjects` (one query).
    pub async fn keys_for(&self, subjects: &[Uuid]) -> Result<HashMap<Uuid, KeyState>, KeyError> {
        let rows: Vec<(Uuid, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT subject, wrapped FROM data_keys WHERE subject = ANY($1)")
                .bind(subjects)
                .fetch_all(&self.pool)
                .await?;
        let mut out: HashMap<Uuid, KeyState> =
            subjects.iter().map(|s| (*s, KeyState::Absent)).collect();
        for (subject, wrapped) in rows {
            let state = match wrapped {
                Some(w) => KeyState::Live(self.master.unwrap_key(&w, subject.as_bytes())?),
                None => KeyState::Erased,
            };
            out.insert(subject, state);
        }
        Ok(out)
    }

    /// The data key to seal `subject`'s personal data with, made on first
    /// use; refused for an erased person.
    pub async fn key_for_sealing(&self, subject: Uuid) -> Result<DataKey, KeyError> {
        let fresh = SecretKey::generate();
        let wrapped = self.master.wrap(&fresh, subject.as_bytes())?;
        sqlx::query(
            "INSERT INTO data_keys (subject, wrapped, master_key_id) VALUES ($1, $2, $3)
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(&wrapped)
        .bind(self.master.id())
        .execute(&self.pool)
        .await?;
        match self.keys_for(&[subject]).await?.remove(&subject) {
            Some(KeyState::Live(key)) => Ok(key),
            Some(KeyState::Erased | KeyState::Absent) | None => Err(KeyError::Erased(subject)),
        }
    }

    /// Destroys `subject`'s data key (keeping a tombstone, so none is made
    /// again). Returns whether a live key was destroyed now.
    pub async fn erase(&self, subject: Uuid) -> Result<bool, KeyError> {
        let mut tx = self.pool.begin().await?;
        let live: Option<(bool,)> = sqlx::query_as(
            "SELECT wrapped IS NOT NULL FROM data_keys WHERE subject = $1 FOR UPDATE",
        )
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO data_keys (subject, wrapped, master_key_id, erased_at)
             VALUES ($1, NULL, NULL, now())
             ON CONFLICT (subject) DO UPDATE
               SET wrapped = NULL, master_key_id = NULL,
                   erased_at = COALESCE(data_keys.erased_at, now())",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The old row version (the wrapped key) stays in the table's heap
        // until vacuumed; vacuum now, so it does not wait for autovacuum.
        // Best effort: a failure leaves it to autovacuum.
        if let Err(e) = sqlx::query("VACUUM data_keys").execute(&self.pool).await {
            tracing::warn!(error = %e, "could not vacuum data_keys after an erasure");
        }
        Ok(live.is_some_and(|(l,)| l))
    }

    /// Whether `subject`'s key was destroyed.
    pub async fn is_erased(&self, subject: Uuid) -> Result<bool, KeyError> {
        Ok(matches!(
            self.keys_for(&[subject]).await?.get(&subject),
            Some(KeyState::Erased)
        ))
    }

    /// The email index key (the HMAC key naming claim streams), made on
    /// first use. It must never change: claims are found by it.
    pub async fn email_index_key(&self) -> Result<EmailIndexKey, KeyError> {
        let fresh = SecretKey::generate();
        let wrapped = self.master.wrap(&fresh, EMAIL_INDEX.as_bytes())?;
        sqlx::query(
            "INSERT INTO keyring_secrets (name, wrapped, master_key_id) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(EMAIL_INDEX)
        .bind(&wrapped)
        .bind(self.master.id())
        .execute(&self.pool)
        .await?;
        let (stored,): (Vec<u8>,) =
            sqlx::query_as("SELECT wrapped FROM keyring_secrets WHERE name = $1")
                .bind(EMAIL_INDEX)
                .fetch_one(&self.pool)
                .await?;
        Ok(EmailIndexKey(
            self.master.unwrap_key(&stored, EMAIL_INDEX.as_bytes())?,
        ))
    }

    /// Re-wraps every key under `new` in one transaction (events are never
    /// touched: they are sealed under the data keys, which do not change).
    /// Rows already under `new` are left alone, so a run that was cut
    /// short (or repeated) is safe. Afterwards configure `new` as the
    /// master key; this keyring keeps the old one.
    pub async fn rotate(&self, new: &MasterKey) -> Result<Rotation, KeyError> {
        let mut tx = self.pool.begin().await?;
        let mut report = Rotation::default();
        let keys: Vec<(Uuid, Vec<u8>, String)> = sqlx::query_as(
            "SELECT subject, wrapped, master_key_id FROM data_keys
             WHERE wrapped IS NOT NULL ORDER BY subject FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (subject, wrapped, id) in keys {
            if id == new.id() {
                report.already += 1;
                continue;
            }
            let key = self.master.unwrap_key(&wrapped, subject.as_bytes())?;
            sqlx::query("UPDATE data_keys SET wrapped = $2, master_key_id = $3 WHERE subject = $1")
                .bind(subject)
                .bind(new.wrap(&key, subject.as_bytes())?)
                .bind(new.id())
                .execute(&mut *tx)
                .await?;
            report.rewrapped += 1;
        }
        let secrets: Vec<(String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT name, wrapped, master_key_id FROM keyring_secrets ORDER BY name FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (name, wrapped, id) in secrets {
            if id == new.id() {
                report.already += 1;
                continue;
            }
            let key = self.master.unwrap_key(&wrapped, name.as_bytes())?;
            sqlx::query(
                "UPDATE keyring_secrets SET wrapped = $2, master_key_id = $3 WHERE name = $1",
            )
            .bind(&name)
            .bind(new.wrap(&key, name.as_bytes())?)
            .bind(new.id())
            .execute(&mut *tx)
            .await?;
            report.rewrapped += 1;
        }
        tx.commit().await?;
        Ok(report)
    }
}
