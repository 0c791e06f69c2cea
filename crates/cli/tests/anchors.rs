//! Signed head anchors and key rotation, as an operator runs them: a plain
//! `audit verify` says the head is unanchored; `audit anchor --file` signs
//! it; after the last event of the log is deleted behind the store's back
//! (which no hash chain can notice), `audit verify --anchor` catches it.
//! `keys rotate` re-wraps the data keys under a new master key and leaves
//! every event as it was, and the personal data stays readable.

use std::process::{Command, Output};

use marketplace_embedded_postgres::testdb::TestDatabase;
use marketplace_keys::MasterKey;
use marketplace_store::{EventStore, StreamId};

const MASTER: &str = "1f2e3d4c5b6a79880f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778";
const NEW_MASTER: &str = "aa11bb22cc33dd44ee55ff6600778899aa11bb22cc33dd44ee55ff6600778899";
const ANCHOR: &str = "5e5e5e5e0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425";

fn marketplace(args: &[&str], database_url: &str, master: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(args)
        .args(["--database-url", database_url])
        .env("MARKETPLACE_MASTER_KEY", master)
        .env("MARKETPLACE_ANCHOR_KEY", ANCHOR)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the binary")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn admin(db: &TestDatabase, master: &MasterKey, email: &str) -> uuid::Uuid {
    marketplace_api::admin::create_admin(&db.url, master, email, "admin password 1", "Ada Admin")
        .await
        .expect("create an admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_catches_the_deletion_of_the_last_event_that_chains_cannot_see() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let master = MasterKey::from_hex(MASTER).expect("key");
    admin(&db, &master, "first@example.com").await;
    admin(&db, &master, "second@example.com").await;

    let plain = marketplace(&["audit", "verify"], &db.url, MASTER);
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("unanchored"),
        "{}",
        text(&plain)
    );

    let dir = std::env::temp_dir().join(format!("anchors-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("anchors.jsonl");
    let file_arg = file.to_str().expect("utf-8 path");
    let anchored = marketplace(&["audit", "anchor", "--file", file_arg], &db.url, MASTER);
    assert!(anchored.status.success(), "{}", text(&anchored));
    let line: serde_json::Value =
        serde_json::from_slice(&anchored.stdout).expect("the anchor is printed as JSON");
    assert_eq!(line["position"], 4, "{line}");
    let kept = std::fs::read_to_string(&file).expect("the anchor file");
    assert_eq!(kept.lines().count(), 1);

    // `--url` posts the anchor as JSON.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/anchors", listener.local_addr().expect("addr"));
    let received = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Read, Write};
        let (mut conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let (mut request_line, mut length) = (String::new(), 0usize);
        reader.read_line(&mut request_line).expect("request line");
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).expect("header");
            if header.trim().is_empty() {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .expect("answer");
        (request_line, body)
    });
    let posted = marketplace(&["audit", "anchor", "--url", &url], &db.url, MASTER);
    assert!(posted.status.success(), "{}", text(&posted));
    let (request_line, body) = received.join().expect("the server thread");
    assert!(request_line.starts_with("POST /anchors"), "{request_line}");
    let sent: serde_json::Value = serde_json::from_slice(&body).expect("a JSON anchor");
    assert_eq!(sent["position"], 4);
    assert_eq!(sent["hash"], line["hash"]);

    let holds = marketplace(&["audit", "verify", "--anchor", file_arg], &db.url, MASTER);
    assert!(holds.status.success(), "{}", text(&holds));
    assert!(
        String::from_utf8_lossy(&holds.stdout).contains("anchors: 1 hold"),
        "{}",
        text(&holds)
    );

    // Someone with database access cuts the newest event.
    let pool = db.pool().await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("bypass the append-only guard (superuser)");
    let cut = sqlx::query("DELETE FROM events WHERE position = (SELECT max(position) FROM events)")
        .execute(&mut *tx)
        .await
        .expect("delete");
    assert_eq!(cut.rows_affected(), 1);
    tx.commit().await.expect("commit");

    // The chains cannot tell ...
    let blind = marketplace(&["audit", "verify"], &db.url, MASTER);
    assert!(blind.status.success(), "{}", text(&blind));
    assert!(
        String::from_utf8_lossy(&blind.stdout).contains("unanchored"),
        "{}",
        text(&blind)
    );
    // ... the anchor can.
    let caught = marketplace(&["audit", "verify", "--anchor", file_arg], &db.url, MASTER);
    assert!(!caught.status.success(), "{}", text(&caught));
    let out = String::from_utf8_lossy(&caught.stdout);
    assert!(
        out.contains("BROKEN") && out.contains("position 4") && out.contains("no longer holds"),
        "{}",
        text(&caught)
    );

    // An anchor signed by another key is refused.
    let forged = dir.join("forged.jsonl");
    let other = marketplace_keys::AnchorKey::from_hex(&"09".repeat(32)).expect("key");
    let fake = marketplace_keys::Anchor::sign(3, "anything", chrono::Utc::now(), &other);
    std::fs::write(&forged, format!("{}\n", fake.to_line())).expect("write");
    let refused = marketplace(
        &[
            "audit",
            "verify",
            "--anchor",
            forged.to_str().expect("utf-8"),
        ],
        &db.url,
        MASTER,
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("not signed by the configured"),
        "{}",
        text(&refused)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_rewraps_the_keys_and_touches_no_event() {
    marketplace_api::telemetry::init_for_tests();
    let db = TestDatabase::create().await;
    let master = MasterKey::from_hex(MASTER).expect("key");
    let id = admin(&db, &master, "rotate@example.com").await;
    let pool = db.pool().await;
    let events_before: Vec<String> =
        sqlx::query_scalar("SELECT data::text FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .expect("events");
    let keys_before: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE wrapped IS NOT NULL")
            .fetch_all(&pool)
            .await
            .expect("keys");
    assert_eq!(keys_before.len(), 1);

    let rotated = Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(["keys", "rotate", "--database-url", &db.url])
        .env("MARKETPLACE_MASTER_KEY", MASTER)
        .env("MARKETPLACE_NEW_MASTER_KEY", NEW_MASTER)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains("2 key(s) re-wrapped"),
        "{}",
        text(&rotated)
    );

    let events_after: Vec<String> =
        sqlx::query_scalar("SELECT data::text FROM events ORDER BY position")
            .fetch_all(&pool)
            .await
            .expect("events");
    assert_eq!(events_after, events_before, "no event is re-encrypted");
    let keys_after: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE wrapped IS NOT NULL")
            .fetch_all(&pool)
            .await
            .expect("keys");
    assert_ne!(keys_after, keys_before);

    // Readable under the new key, not under the old one.
    let stream = StreamId::new("account", id).expect("stream");
    let read = |hex: &'static str| {
        let (pool, stream) = (pool.clone(), stream.clone());
        async move {
            let store = marketplace_api::database::open_event_store(
                &pool,
                &marketplace_api::config::EventStoreChoice::Postgres,
                &MasterKey::from_hex(hex).expect("key"),
            )
            .await
            .expect("store");
            store.read_stream(&stream, 0).await
        }
    };
    let opened = read(NEW_MASTER).await.expect("read with the new key");
    assert_eq!(opened[0].data["email"], "rotate@example.com");
    assert_eq!(opened[0].data["display_name"], "Ada Admin");
    assert!(
        read(MASTER).await.is_err(),
        "the old master key opens nothing"
    );

    // The history still verifies, and the login-side lookup still works.
    let verified = marketplace(&["audit", "verify"], &db.url, NEW_MASTER);
    assert!(verified.status.success(), "{}", text(&verified));
    let history = marketplace(&["audit", "history", stream.as_str()], &db.url, NEW_MASTER);
    assert!(history.status.success(), "{}", text(&history));
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("rotate@example.com"),
        "{}",
        text(&history)
    );
}
