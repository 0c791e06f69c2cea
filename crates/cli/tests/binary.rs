//! The `marketplace` binary as a newcomer runs it: no DATABASE_URL, so it
//! starts its own PostgreSQL cluster, serves GraphQL, and stops the cluster
//! when it is told to stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tcp_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

#[tokio::test]
async fn serves_graphql_on_an_embedded_postgres_and_stops_it_on_sigterm() {
    let dir =
        std::env::temp_dir().join(format!("marketplace-bin-{}", uuid::Uuid::now_v7().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args([
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the binary");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the binary printed its URL");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    assert!(url.ends_with("/graphql"), "{url}");

    let body: serde_json::Value = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "query": "{ listings { totalCount } }" }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(body["data"]["listings"]["totalCount"], 0, "{body}");

    let port: u16 = std::fs::read_to_string(dir.join("port"))
        .expect("the cluster records its port")
        .trim()
        .parse()
        .expect("a port number");
    assert!(tcp_open(port), "the embedded cluster is up");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the binary did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
    assert!(
        !tcp_open(port),
        "the embedded cluster stopped with the binary"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_postgres_binaries_are_named_with_the_package_to_install() {
    let dir = std::env::temp_dir().join(format!(
        "marketplace-nopg-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_marketplace"))
        .args(["migrate", "--data-dir", dir.to_str().expect("utf-8 path")])
        .env_remove("DATABASE_URL")
        .env("MARKETPLACE_PG_BINDIR", "/nonexistent")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}

#[test]
fn serve_refuses_a_placeholder_or_short_jwt_secret_and_names_the_variable() {
    for secret in [
        "change-me",
        "short-but-random-9f3a",
        "change-me-change-me-change-me-change-me",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_marketplace"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("MARKETPLACE_JWT_SECRET", secret)
            .env(
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/never-reached",
            )
            .stdin(Stdio::null())
            .output()
            .expect("run the binary");
        assert!(!out.status.success(), "{secret:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("MARKETPLACE_JWT_SECRET"),
            "{secret:?}: {stderr}"
        );
        assert!(
            !stderr.contains(secret),
            "the secret is not echoed: {stderr}"
        );
    }
}
