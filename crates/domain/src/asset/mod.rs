//! The asset aggregate: a digital asset's file, by its content hash, and
//! the audit trail of who uploaded it and who was given access to it.
//!
//! The file itself lives in object storage, keyed by its SHA-256; only this
//! metadata is in the log (the stream is `asset-<uuid>`, the uuid derived
//! from the hash by [`asset_id`]). Uploading the same content again decides
//! nothing (the file is stored once); every download that is allowed
//! records who was granted access, and why, with the moment. The state
//! keeps the metadata and a count, never the list of grants, so it does not
//! grow with downloads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::event::DomainEvent;
use crate::values::{AccountId, ContentHash, ContentType, OrderId};

/// Namespace of asset ids derived from content hashes.
const ASSET_NS: Uuid = Uuid::from_u128(0x6173_7365_745f_4000_8000_7368_6132_3536);

/// The id of the asset whose content has `hash`.
pub fn asset_id(hash: &ContentHash) -> Uuid {
    Uuid::new_v5(&ASSET_NS, hash.as_str().as_bytes())
}

/// Why someone may download an asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", tag = "kind")]
pub enum AccessReason {
    /// They uploaded it, or sell a listing of it.
    Seller,
    /// An ADMIN.
    Admin,
    /// They bought a listing of it (the order is CONFIRMED or later).
    Buyer {
        /// The order.
        order_id: OrderId,
    },
}

/// Every command the asset aggregate decides.
#[derive(Clone, Debug, PartialEq)]
pub enum AssetCommand {
    /// See [`RecordUpload`].
    RecordUpload(RecordUpload),
    /// See [`GrantAccess`].
    GrantAccess(GrantAccess),
}

/// Records that a file with this content was stored. Again for the same
/// content: nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordUpload {
    /// Its SHA-256.
    pub content_hash: ContentHash,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type, from the allow-list.
    pub content_type: ContentType,
    /// The SELLER who uploaded it.
    pub uploaded_by: AccountId,
    /// When.
    pub at: DateTime<Utc>,
}

/// Records that `account_id` was let download the asset.
#[derive(Clone, Debug, PartialEq)]
pub struct GrantAccess {
    /// Who.
    pub account_id: AccountId,
    /// Why.
    pub reason: AccessReason,
    /// When.
    pub at: DateTime<Utc>,
}

/// A file was stored under its content hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetUploaded {
    /// Its SHA-256.
    pub content_hash: ContentHash,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub content_type: ContentType,
    /// Who uploaded it.
    pub uploaded_by: AccountId,
    /// When.
    pub uploaded_at: DateTime<Utc>,
}

impl DomainEvent for AssetUploaded {
    const NAME: &'static str = "asset.uploaded";
    const VERSION: u32 = 1;
}

/// Someone was let download the asset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssetAccessGranted {
    /// Its SHA-256.
    pub content_hash: ContentHash,
    /// Who.
    pub account_id: AccountId,
    /// Why.
    pub reason: AccessReason,
    /// When.
    pub granted_at: DateTime<Utc>,
}

impl DomainEvent for AssetAccessGranted {
    const NAME: &'static str = "asset.access_granted";
    const VERSION: u32 = 1;
}

crate::event_set! {
    /// Every event of the asset aggregate.
    pub enum AssetEvent {
        Uploaded(AssetUploaded),
        AccessGranted(AssetAccessGranted),
    }
}

/// Refusals of asset commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    /// Access to an asset that was never uploaded.
    #[error("asset not found")]
    NotFound,
}

/// An asset as its events leave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    /// Its SHA-256, once uploaded.
    pub content_hash: Option<ContentHash>,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub content_type: Option<ContentType>,
    /// Who uploaded it.
    pub uploaded_by: Option<AccountId>,
    /// When.
    pub uploaded_at: Option<DateTime<Utc>>,
    /// How many downloads were allowed.
    pub grants: u64,
}

impl Asset {
    /// Whether the file was stored.
    pub fn is_stored(&self) -> bool {
        self.content_hash.is_some()
    }
}

impl Aggregate for Asset {
    const CATEGORY: &'static str = "asset";
    type Command = AssetCommand;
    type Event = AssetEvent;
    type Error = AssetError;

    fn decide(&self, command: &AssetCommand) -> Result<Vec<AssetEvent>, AssetError> {
        match command {
            AssetCommand::RecordUpload(c) => {
                if self.is_stored() {
                    return Ok(vec![]);
                }
                Ok(vec![AssetUploaded {
                    content_hash: c.content_hash.clone(),
                    size: c.size,
                    content_type: c.content_type.clone(),
                    uploaded_by: c.uploaded_by,
                    uploaded_at: c.at,
                }
                .into()])
            }
            AssetCommand::GrantAccess(c) => {
                let hash = self.content_hash.clone().ok_or(AssetError::NotFound)?;
                Ok(vec![AssetAccessGranted {
                    content_hash: hash,
                    account_id: c.account_id,
                    reason: c.reason,
                    granted_at: c.at,
                }
                .into()])
            }
        }
    }

    fn evolve(mut self, event: &AssetEvent) -> Self {
        match event {
            AssetEvent::Uploaded(e) => {
                self.content_hash = Some(e.content_hash.clone());
                self.size = e.size;
                self.content_type = Some(e.content_type.clone());
                self.uploaded_by = Some(e.uploaded_by);
                self.uploaded_at = Some(e.uploaded_at);
            }
            AssetEvent::AccessGranted(_) => self.grants += 1,
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::aggregate::given;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
            .single()
            .expect("date")
    }

    fn hash() -> ContentHash {
        ContentHash::parse(&"ab".repeat(32)).expect("valid")
    }

    fn upload() -> RecordUpload {
        RecordUpload {
            content_hash: hash(),
            size: 3 << 20,
            content_type: ContentType::parse("application/pdf").expect("valid"),
            uploaded_by: AccountId(Uuid::from_u128(2)),
            at: at(),
        }
    }

    fn uploaded() -> AssetUploaded {
        AssetUploaded {
            content_hash: hash(),
            size: 3 << 20,
            content_type: ContentType::parse("application/pdf").expect("valid"),
            uploaded_by: AccountId(Uuid::from_u128(2)),
            uploaded_at: at(),
        }
    }

    #[test]
    fn records_the_first_upload_of_a_content() {
        let state = given::<Asset>([])
            .when(AssetCommand::RecordUpload(upload()))
            .then_events([uploaded().into()]);
        assert!(state.is_stored());
        assert_eq!(state.size, 3 << 20);
    }

    #[test]
    fn an_identical_upload_records_nothing() {
        given::<Asset>([uploaded().into()])
            .when(AssetCommand::RecordUpload(upload()))
            .then_events([]);
    }

    #[test]
    fn grants_access_to_a_stored_asset_and_counts_without_keeping_the_list() {
        let grant = GrantAccess {
            account_id: AccountId(Uuid::from_u128(3)),
            reason: AccessReason::Buyer {
                order_id: OrderId(Uuid::from_u128(4)),
            },
            at: at(),
        };
        let state = given::<Asset>([uploaded().into()])
            .when(AssetCommand::GrantAccess(grant.clone()))
            .then_events([AssetAccessGranted {
                content_hash: hash(),
                account_id: grant.account_id,
                reason: grant.reason,
                granted_at: at(),
            }
            .into()]);
        assert_eq!(state.grants, 1);
    }

    #[test]
    fn refuses_access_to_an_asset_never_uploaded() {
        given::<Asset>([])
            .when(AssetCommand::GrantAccess(GrantAccess {
                account_id: AccountId(Uuid::from_u128(3)),
                reason: AccessReason::Admin,
                at: at(),
            }))
            .then_error(AssetError::NotFound);
    }

    #[test]
    fn the_asset_id_derives_from_the_hash_alone() {
        assert_eq!(asset_id(&hash()), asset_id(&hash()));
        let other = ContentHash::parse(&"cd".repeat(32)).expect("valid");
        assert_ne!(asset_id(&hash()), asset_id(&other));
    }

    #[test]
    fn pins_the_stored_event_names() {
        assert_eq!(AssetUploaded::NAME, "asset.uploaded");
        assert_eq!(AssetAccessGranted::NAME, "asset.access_granted");
    }
}
