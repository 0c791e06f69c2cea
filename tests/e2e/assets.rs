//! Digital assets over real HTTP on a real Postgres, stored on the local
//! file system: a several-MiB upload streamed and hashed, deduplicated,
//! limited by size and media type; DIGITAL listings naming stored hashes
//! only; downloads for the seller and a confirmed buyer, with byte ranges,
//! 404 for everyone else; a tampered file refused.

use std::path::{Path, PathBuf};

use marketplace_api::assets::AssetsSettings;
use marketplace_e2e::{spawn_app_with, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::commerce::{auth, buyer_with, place_input, PLACE};

const CREATE: &str = "mutation($input: CreateListingInput!) {
    createListing(input: $input) { listing { id contentHash assetSize assetContentType } }
}";
const PUBLISH: &str = "mutation($id: ID!) { publishListing(id: $id) { consistencyToken } }";

const MIB: usize = 1 << 20;

/// Deterministic, incompressible-looking bytes.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn app_with_assets(max_bytes: u64) -> (TestApp, PathBuf) {
    let dir = std::env::temp_dir().join(format!("e2e-assets-{}", uuid::Uuid::now_v7()));
    let settings = {
        let mut s = AssetsSettings::local(dir.clone());
        s.max_bytes = max_bytes;
        s
    };
    let app = spawn_app_with(|s| s.assets = settings).await;
    (app, dir)
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                1
            }
        })
        .sum()
}

async fn download(
    app: &TestApp,
    token: Option<&str>,
    hash: &str,
    range: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}/assets/{hash}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.expect("download")
}

async fn count_events(app: &TestApp, event_type: &str) -> i64 {
    let pool = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    let n = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

/// Announces a `len`-byte upload and reads the answer without sending the
/// body: the server refuses by `Content-Length` before reading any of it.
async fn declared_too_large(app: &TestApp, token: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /assets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/pdf\r\nContent-Length: {len}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = socket.read(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn digital(hash: &str) -> Value {
    json!({ "kind": "DIGITAL", "title": "Field guide", "description": "A PDF",
            "category": "books", "price": { "amount": "9.00", "currencyCode": "EUR" },
            "contentHash": hash })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_several_mib_asset_uploads_once_lists_and_downloads_only_for_those_allowed() {
    let (app, dir) = app_with_assets(8 * MIB as u64).await;
    let (seller, _, _) = app.register("author@example.com", &["SELLER"]).await;
    let file = content(5 * MIB + 123, 7);
    let hash = sha256_hex(&file);

    // Refusals: anonymous, a buyer, a media type off the list (small
    // bodies: these are answered before the body is read), too large.
    let small = b"%PDF-1.7".to_vec();
    let (status, _) = app
        .upload_asset(None, small.clone(), "application/pdf")
        .await;
    assert_eq!(status, 401);
    let (buyer_only, _, _) = app.register("reader@example.com", &[]).await;
    let (status, _) = app
        .upload_asset(Some(&buyer_only), small.clone(), "application/pdf")
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.upload_asset(Some(&seller), small, "text/html").await;
    assert_eq!(status, 415);
    assert_eq!(declared_too_large(&app, &seller, 9 * MIB).await, 413);
    assert_eq!(files_under(&dir), 0, "refused uploads leave nothing");

    // Upload, then the identical upload: stored once.
    let (status, answer) = app
        .upload_asset(
            Some(&seller),
            file.clone(),
            "application/pdf; charset=binary",
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["contentHash"], hash);
    assert_eq!(answer["size"], file.len());
    let (status, again) = app
        .upload_asset(Some(&seller), file.clone(), "application/pdf")
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["contentHash"], hash);
    assert_eq!(files_under(&dir), 1, "one object, no leftovers");
    assert_eq!(count_events(&app, "asset.uploaded").await, 1);

    // Listing: an unknown hash is refused; the stored one is listed.
    let unknown = app
        .gql(
            CREATE,
            json!({ "input": digital(&"0f".repeat(32)) }),
            auth(&seller),
        )
        .await;
    assert_eq!(unknown.error_code(), "BAD_USER_INPUT", "{}", unknown.body);
    let created = app
        .gql(CREATE, json!({ "input": digital(&hash) }), auth(&seller))
        .await;
    let listing = created.data("createListing.listing").clone();
    assert_eq!(listing["contentHash"], hash);
    assert_eq!(listing["assetSize"], file.len());
    assert_eq!(listing["assetContentType"], "application/pdf");
    let id = listing["id"].as_str().expect("id").to_owned();
    app.gql(PUBLISH, json!({ "id": id }), auth(&seller))
        .await
        .data("publishListing.consistencyToken");

    // Not allowed: 404, exactly like an unknown hash.
    let buyer = buyer_with(&app, "buyer@example.com", "50.00").await;
    for (who, token) in [
        ("anonymous", None),
        ("a buyer before buying", Some(buyer.as_str())),
    ] {
        let r = download(&app, token, &hash, None).await;
        assert_eq!(r.status().as_u16(), 404, "{who}");
    }
    let unknown = download(&app, Some(&seller), &"0f".repeat(32), None).await;
    assert_eq!(unknown.status().as_u16(), 404);
    let not_a_hash = download(&app, Some(&seller), "lamp.pdf", None).await;
    assert_eq!(not_a_hash.status().as_u16(), 404);

    // The seller downloads it whole; the bytes match the hash.
    let r = download(&app, Some(&seller), &hash, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let body = r.bytes().await.expect("body");
    assert_eq!(sha256_hex(&body), hash);

    // A buyer with a confirmed order downloads it, and ranges of it.
    let placed = app
        .gql(PLACE, json!({ "input": place_input(&id, 1) }), auth(&buyer))
        .await;
    let order = placed
        .data("placeOrder.order.id")
        .as_str()
        .expect("id")
        .to_owned();
    app.wait_order(&buyer, &order, |s| s != "PENDING").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = download(&app, Some(&buyer), &hash, None).await;
        if r.status().as_u16() == 200 {
            break r;
        }
        assert_eq!(r.status().as_u16(), 404);
        assert!(
            std::time::Instant::now() < deadline,
            "the buyer never got access"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), file.len());
    assert_eq!(sha256_hex(&body), hash);

    let r = download(&app, Some(&buyer), &hash, Some("bytes=1000-1999")).await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", file.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &file[1000..2000]);
    let r = download(&app, Some(&buyer), &hash, Some("bytes=-16")).await;
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(
        &r.bytes().await.expect("body")[..],
        &file[file.len() - 16..]
    );
    let r = download(&app, Some(&buyer), &hash, Some("bytes=99999999-")).await;
    assert_eq!(r.status().as_u16(), 416);

    // A stranger still gets 404.
    let (stranger, _, _) = app.register("stranger@example.com", &[]).await;
    assert_eq!(
        download(&app, Some(&stranger), &hash, None)
            .await
            .status()
            .as_u16(),
        404
    );

    // The audit trail: who was let in, and why.
    let pool = sqlx::PgPool::connect(&app.db.url).await.expect("connect");
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT data->'reason'->>'kind' FROM events WHERE event_type = 'asset.access_granted' ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .expect("grants");
    pool.close().await;
    // The 416 served nothing, so it granted nothing.
    assert_eq!(reasons, ["SELLER", "BUYER", "BUYER", "BUYER"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_file_on_disk_is_refused_at_download() {
    let (app, dir) = app_with_assets(8 * MIB as u64).await;
    let (seller, _, _) = app.register("author@example.com", &["SELLER"]).await;
    let file = content(2 * MIB, 11);
    let hash = app.stored_asset(&seller, &file).await;
    assert_eq!(
        download(&app, Some(&seller), &hash, None)
            .await
            .status()
            .as_u16(),
        200
    );

    let on_disk = dir.join("sha256").join(&hash[..2]).join(&hash);
    let mut tampered = std::fs::read(&on_disk).expect("read");
    tampered[MIB] ^= 0xff;
    std::fs::write(&on_disk, &tampered).expect("tamper");

    let r = download(&app, Some(&seller), &hash, None).await;
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match")),
        "{body}"
    );
    let ranged = download(&app, Some(&seller), &hash, Some("bytes=0-9")).await;
    assert_eq!(ranged.status().as_u16(), 500, "not even a range of it");
    let page = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("marketplace_assets_corrupted_total 2"),
        "{page}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
