//! Where signed head anchors go: appended to a file, or posted to a URL
//! (`marketplace audit anchor`, `serve --anchor-every`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use marketplace_keys::Anchor;

/// Appends `anchor` as one line to `path` (created if missing) and syncs it.
pub fn append_to_file(path: &Path, anchor: &Anchor) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    writeln!(f, "{}", anchor.to_line())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("could not write {}", path.display()))
}

/// POSTs `anchor` as JSON to `url` (`http://` or `https://`, verified
/// against the system's and the Mozilla roots); anything but a 2xx answer
/// is an error.
pub async fn post_to_url(url: &str, anchor: &Anchor) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "{url}: anchors are posted over http:// or https:// only"
    );
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("HTTP client")?
        .post(parsed)
        .json(anchor)
        .send()
        .await
        .with_context(|| format!("could not post the anchor to {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} refused the anchor: HTTP {}",
        response.status()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn anchor() -> Anchor {
        let key = marketplace_keys::AnchorKey::from_hex(&"11".repeat(32)).expect("key");
        Anchor::sign(7, &"ab".repeat(32), chrono::Utc::now(), &key)
    }

    #[tokio::test]
    async fn an_https_url_is_posted_over_tls() {
        // A listener that only records the first byte the client sends: a
        // TLS handshake record (0x16) starts a ClientHello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let first_byte = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.expect("read");
            byte[0]
        });
        let err = post_to_url(&format!("https://{addr}/anchors"), &anchor())
            .await
            .expect_err("no TLS server there");
        assert!(err.to_string().contains("could not post"), "{err:#}");
        assert_eq!(
            first_byte.await.expect("listener"),
            0x16,
            "a TLS ClientHello"
        );
    }

    #[tokio::test]
    async fn other_schemes_are_refused_before_anything_is_sent() {
        let err = post_to_url("ftp://example.org/anchors", &anchor())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("http:// or https://"), "{err}");
    }
}
