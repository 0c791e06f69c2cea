//! Digital assets' files in object storage, keyed by their SHA-256, and
//! the two routes that move them: `PUT /assets` and `GET /assets/{hash}`.
//!
//! Storage is the `object_store` crate's: a directory on the local file
//! system by default (`<data dir>/assets`), or S3-compatible storage
//! (`--assets-url s3://bucket/prefix`, credentials and endpoint from the
//! usual `AWS_*` environment). Objects live at `sha256/<first two hex
//! digits>/<hash>`. Only metadata enters the log: the asset aggregate's
//! `asset.uploaded` (hash, size, media type, who, when) and an
//! `asset.access_granted` per allowed download (who, why, when).
//!
//! **Upload** (`PUT /assets`, raw body, a signed-in SELLER): the body is
//! streamed to a temporary object (a multipart upload) while it is hashed
//! and counted, so no file is ever held in memory; past the size limit the
//! upload is aborted (413); a media type outside the allow-list is refused
//! (415). The finished object is then copied to its content address
//! (unless one is there already) and the temporary one deleted. Answers
//! `201 {"contentHash", "size", "contentType"}` for new content and `200`
//! with the same body for content already stored (nothing new is written).
//!
//! **Download** (`GET /assets/{hash}`): for the seller (the uploader, or a
//! seller with a listing of it), an ADMIN, or a buyer whose order with a
//! listing of it is CONFIRMED or later. Everyone else — anonymous callers
//! included — gets 404, exactly as for an unknown hash, so an asset's
//! existence does not leak. The object is first re-hashed as a stream; a
//! mismatch is reported (logged, counted in `/metrics`, answered 500) and
//! nothing is served. Then the file (or one `Range: bytes=…` of it, 206)
//! streams out.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use marketplace_domain::values::{ContentHash, ContentType};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

/// Where asset files are stored.
#[derive(Clone, Debug)]
pub enum AssetLocation {
    /// A directory on this machine (created if missing).
    Local(PathBuf),
    /// An S3-compatible bucket, `s3://bucket[/prefix]`; the rest of the
    /// configuration (region, endpoint, credentials) comes from `AWS_*`.
    S3(String),
}

/// How assets are stored and what is accepted.
#[derive(Clone, Debug)]
pub struct AssetsSettings {
    /// Where.
    pub location: AssetLocation,
    /// The largest upload, in bytes.
    pub max_bytes: u64,
    /// The media types accepted.
    pub content_types: Vec<String>,
}

/// Largest upload by default: 512 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// Media types accepted by default.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "application/pdf",
    "application/epub+zip",
    "application/zip",
    "application/octet-stream",
    "audio/mpeg",
    "audio/flac",
    "video/mp4",
    "image/png",
    "image/jpeg",
    "text/plain",
];

impl AssetsSettings {
    /// The defaults, with files under `dir`.
    pub fn local(dir: PathBuf) -> Self {
        Self {
            location: AssetLocation::Local(dir),
            max_bytes: DEFAULT_MAX_BYTES,
            content_types: DEFAULT_CONTENT_TYPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body is larger than the limit (413).
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// No body (400).
    #[error("the body is empty")]
    Empty,
    /// The client's body broke off (400).
    #[error("the upload was interrupted: {0}")]
    Body(String),
    /// The object store failed (500).
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

/// What an upload stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The content's SHA-256.
    pub content_hash: ContentHash,
    /// Bytes.
    pub size: u64,
}

/// What re-hashing a stored object found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The content matches its hash; this many bytes.
    Intact(u64),
    /// No object under that hash.
    Missing,
    /// The content no longer matches its hash.
    Corrupted,
}

/// The asset store. Cheap to clone.
#[derive(Clone)]
pub struct Assets {
    store: Arc<dyn ObjectStore>,
    max_bytes: u64,
    content_types: Arc<[ContentType]>,
    corrupted: Arc<AtomicU64>,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assets")
            .field("store", &self.store.to_string())
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Assets {
    /// Opens the store `settings` name.
    pub fn open(settings: &AssetsSettings) -> Result<Self, String> {
        let store: Arc<dyn ObjectStore> = match &settings.location {
            AssetLocation::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| e.to_string())?
                        .with_automatic_cleanup(true),
                )
            }
            AssetLocation::S3(url) => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        };
        let content_types = settings
            .content_types
            .iter()
            .map(|t| ContentType::parse(t).map_err(|e| format!("{t:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            store,
            max_bytes: settings.max_bytes,
            content_types: content_types.into(),
            corrupted: Arc::default(),
        })
    }

    /// The largest upload.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether uploads of `content_type` are accepted.
    pub fn accepts(&self, content_type: &ContentType) -> bool {
        self.content_types.contains(content_type)
    }

    /// Downloads refused because the stored file no longer matched its hash.
    pub fn corrupted(&self) -> u64 {
        self.corrupted.load(Ordering::Relaxed)
    }

    /// Where the object of `hash` lives.
    pub fn path_of(hash: &ContentHash) -> Path {
        let h = hash.as_str();
        Path::from(format!("sha256/{}/{h}", &h[..2]))
    }

    /// Whether a file with content `hash` is stored.
    pub async fn exists(&self, hash: &ContentHash) -> Result<bool, object_store::Error> {
        match self.store.head(&Self::path_of(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Streams `body` into the store, hashing and counting as it goes;
    /// the object ends at its content address.
    pub async fn upload<S, E>(&self, body: S) -> Result<Stored, UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temporary = Path::from(format!("uploads/{}", uuid::Uuid::now_v7()));
        let upload = self.store.put_multipart(&temporary).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(UploadError::Body(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > self.max_bytes {
                let _ = writer.abort().await;
                return Err(UploadError::TooLarge(self.max_bytes));
            }
            hasher.update(&chunk);
            // Bounded memory: at most a few parts in flight.
            writer.wait_for_capacity(4).await?;
            writer.put(chunk);
        }
        if size == 0 {
            let _ = writer.abort().await;
            return Err(UploadError::Empty);
        }
        writer.finish().await?;
        let hex = hex::encode(hasher.finalize());
        let content_hash =
            ContentHash::parse(&hex).map_err(|e| UploadError::Body(e.to_string()))?;
        let destination = Self::path_of(&content_hash);
        let placed = if self.exists(&content_hash).await? {
            Ok(())
        } else {
            match self
                .store
                .copy_if_not_exists(&temporary, &destination)
                .await
            {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                // Backends without an atomic copy-if-absent: identical
                // content at the same address, so a plain copy is safe.
                Err(object_store::Error::NotSupported { .. })
                | Err(object_store::Error::NotImplemented { .. }) => {
                    self.store.copy(&temporary, &destination).await
                }
                Err(e) => Err(e),
            }
        };
        let cleaned = self.store.delete(&temporary).await;
        placed?;
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, path = %temporary, "could not delete a finished upload's temporary object");
        }
        Ok(Stored { content_hash, size })
    }

    /// Re-hashes the stored object of `hash`, as a stream. A corruption is
    /// logged and counted here.
    pub async fn verify(&self, hash: &ContentHash) -> Result<Integrity, object_store::Error> {
        let mut stream = match self.store.get(&Self::path_of(hash)).await {
            Ok(result) => result.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Ok(Integrity::Missing),
            Err(e) => return Err(e),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if hex::encode(hasher.finalize()) == hash.as_str() {
            Ok(Integrity::Intact(size))
        } else {
            self.corrupted.fetch_add(1, Ordering::Relaxed);
            tracing::error!(content_hash = %hash, "a stored asset no longer matches its hash; refusing to serve it");
            Ok(Integrity::Corrupted)
        }
    }

    /// Whether `range_header` asks for a range outside a `size`-byte file
    /// (answered 416, and not counted as an access).
    pub fn unsatisfiable(range_header: Option<&HeaderValue>, size: u64) -> bool {
        range_header
            .and_then(|v| v.to_str().ok())
            .is_some_and(|spec| parse_range(spec, size) == RangeRequest::Unsatisfiable)
    }

    /// A response streaming the object of `hash` (`size` bytes), or the
    /// one range `range_header` asks for.
    pub async fn serve(
        &self,
        hash: &ContentHash,
        size: u64,
        content_type: &str,
        range_header: Option<&HeaderValue>,
    ) -> Response {
        let range = match range_header.and_then(|v| v.to_str().ok()) {
            None => None,
            Some(spec) => match parse_range(spec, size) {
                RangeRequest::One(r) => Some(r),
                RangeRequest::Ignored => None,
                RangeRequest::Unsatisfiable => {
                    let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                        response.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return response;
                }
            },
        };
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let stream = match self.store.get_opts(&Self::path_of(hash), options).await {
            Ok(result) => result.into_stream(),
            Err(e) => {
                tracing::error!(error = %e, content_hash = %hash, "could not read a stored asset");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let body = Body::from_stream(stream.map_err(std::io::Error::other));
        let mut headers = HeaderMap::new();
        let insert = |headers: &mut HeaderMap, name, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        insert(&mut headers, header::CONTENT_TYPE, content_type.to_owned());
        insert(&mut headers, header::ACCEPT_RANGES, "bytes".into());
        insert(&mut headers, header::ETAG, format!("\"{hash}\""));
        insert(
            &mut headers,
            header::CACHE_CONTROL,
            "private, max-age=0, must-revalidate".into(),
        );
        match range {
            Some(r) => {
                insert(
                    &mut headers,
                    header::CONTENT_LENGTH,
                    (r.end - r.start).to_string(),
                );
                insert(
                    &mut headers,
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{size}", r.start, r.end - 1),
                );
                (StatusCode::PARTIAL_CONTENT, headers, body).into_response()
            }
            None => {
                insert(&mut headers, header::CONTENT_LENGTH, size.to_string());
                (StatusCode::OK, headers, body).into_response()
            }
        }
    }
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// One satisfiable range (end exclusive).
    One(Range<u64>),
    /// Not a single byte range this server serves (several ranges, another
    /// unit, malformed): the whole file is served, as RFC 9110 allows.
    Ignored,
    /// Outside the file: 416.
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeRequest {
    let Some(ranges) = spec.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignored;
    };
    if ranges.contains(',') {
        return RangeRequest::Ignored;
    }
    let Some((first, last)) = ranges.trim().split_once('-') else {
        return RangeRequest::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        // `bytes=-N`: the last N bytes.
        _ if first.is_empty() => match last.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
            Err(_) => return RangeRequest::Ignored,
        },
        (Ok(a), _) if last.is_empty() => a..size,
        (Ok(a), Ok(b)) if a <= b => a..(b.saturating_add(1)).min(size),
        (Ok(_), Ok(_)) => return RangeRequest::Ignored,
        (Err(_), _) | (Ok(_), Err(_)) => return RangeRequest::Ignored,
    };
    if range.start >= size || range.is_empty() {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::One(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_forms_of_a_byte_range() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeRequest::One(0..100));
        assert_eq!(
            parse_range("bytes=900-", 1000),
            RangeRequest::One(900..1000)
        );
        assert_eq!(parse_range("bytes=-10", 1000), RangeRequest::One(990..1000));
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            RangeRequest::One(990..1000)
        );
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable_and_odd_ones_are_ignored() {
        assert_eq!(
            parse_range("bytes=1000-", 1000),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range("bytes=-0", 1000), RangeRequest::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeRequest::Ignored);
        assert_eq!(parse_range("items=0-1", 1000), RangeRequest::Ignored);
        assert_eq!(parse_range("bytes=9-1", 1000), RangeRequest::Ignored);
    }

    #[tokio::test]
    async fn an_upload_lands_at_its_content_address_once_and_a_tampered_file_is_caught() {
        let dir = std::env::temp_dir().join(format!("assets-test-{}", uuid::Uuid::now_v7()));
        let assets = Assets::open(&AssetsSettings::local(dir.clone())).expect("open");
        let chunks = || {
            futures::stream::iter(
                [b"hello ".to_vec(), b"world".to_vec()]
                    .into_iter()
                    .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
            )
        };
        let stored = assets.upload(chunks()).await.expect("upload");
        assert_eq!(
            stored.content_hash.as_str(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(stored.size, 11);
        assert!(assets.exists(&stored.content_hash).await.expect("head"));
        let again = assets.upload(chunks()).await.expect("upload again");
        assert_eq!(again, stored);
        assert_eq!(
            assets.verify(&stored.content_hash).await.expect("verify"),
            Integrity::Intact(11)
        );
        let h = stored.content_hash.as_str();
        let file = dir.join("sha256").join(&h[..2]).join(h);
        std::fs::write(&file, b"hello w0rld").expect("tamper");
        assert_eq!(
            assets.verify(&stored.content_hash).await.expect("verify"),
            Integrity::Corrupted
        );
        assert_eq!(assets.corrupted(), 1);
        let leftovers = std::fs::read_dir(dir.join("uploads"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leftovers, 0, "temporary uploads are deleted");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_upload_past_the_limit_is_refused_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("assets-test-{}", uuid::Uuid::now_v7()));
        let mut settings = AssetsSettings::local(dir.clone());
        settings.max_bytes = 8;
        let assets = Assets::open(&settings).expect("open");
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
            b"more than eight bytes",
        ))]);
        assert!(matches!(
            assets.upload(body).await,
            Err(UploadError::TooLarge(8))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
