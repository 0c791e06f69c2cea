//! A wire-compatible, in-memory KurrentDB server, for tests only.
//!
//! No KurrentDB server can run on the CI machines, so the store's KurrentDB
//! backend is proven against this: it serves, over a real socket, the gRPC
//! services the official `kurrentdb` client calls, generated (by `build.rs`)
//! from the `.proto` files shipped inside that client crate. Tests drive it
//! only through the real client; nothing on the read/write path is mocked.
//!
//! Layout:
//! - `log`: the in-memory transaction log and KurrentDB's write rules
//!   (expected revision, idempotent retries, single-writer commit order,
//!   `$all` positions);
//! - `service`: the gRPC services (`Streams.Append`, `Streams.Read` for
//!   streams and `$all`, bounded and as catch-up subscriptions with server-
//!   side filters, `ServerFeatures.GetSupportedMethods`);
//! - this file: [`spawn`]/[`TestServer`] (bind, serve, and the test controls:
//!   hold an append before it commits, drop every connection, refuse new
//!   ones), and the generated protobuf modules in [`proto`];
//! - `main.rs`: the `kurrentdb-testserver --listen 127.0.0.1:2113` binary.
//!
//! # What it implements, from KurrentDB's documented semantics
//! - Appends with `StreamState` `Any`, `NoStream`, `StreamExists` or a
//!   revision; a mismatch is the `WrongExpectedVersion` response carrying the
//!   current revision (or no stream), as the real `Streams.Append` does.
//! - Idempotent retries as the server's commit check decides them: with an
//!   expected revision, the events after it carrying exactly the proposed ids
//!   are a retry (success, `no_position`); with `Any`, the first id found in
//!   the stream followed by the rest in order is a retry; a partial match is
//!   refused ("corrupted idempotency", reported as a wrong expected version).
//! - Required `type` and `content-type` metadata; `created` is returned.
//! - `$all` positions: every gRPC-appended event is an implicitly committed
//!   prepare, so its position is `(commit, prepare) = (p, p)` with `p` its
//!   log position; positions advance by a record's size (sparse, not dense).
//!   An append reports `commit` = its last event, `prepare` = its first.
//! - Reads: a stream read returns `stream_not_found` for an absent stream and
//!   carries `$all` positions (KurrentDB ≥ 22.6); a forward `$all` read
//!   includes the event at its start position, a backward one starts before
//!   it; server-side filters on stream name or event type, by prefixes or by
//!   regex.
//! - Catch-up subscriptions (`$all` and streams): confirmation, the stored
//!   events strictly after the start, a checkpoint (when filtered), then
//!   `caught_up`, then live events in commit order.
//! - A fresh log holds a few system events (`$`-prefixed streams and types),
//!   so readers of `$all` must filter them out as on a real node.
//!
//! # Known differences from a real KurrentDB
//! This is the one place they are written down.
//! - **Storage and cluster**: in memory only (nothing survives a restart of
//!   the process); a single node; no gossip, elections, leader redirects
//!   (`not-leader`), read-only replicas or `requiresLeader` handling.
//! - **Security**: plaintext HTTP/2 only (connect with `?tls=false`); no
//!   authentication or ACLs: credentials are ignored, every call is allowed,
//!   including writes to `$` streams.
//! - **Not served**: `Streams.Delete`, `Streams.Tombstone` and
//!   `Streams.BatchAppend` answer `UNIMPLEMENTED` (BatchAppend is not
//!   advertised by `ServerFeatures`, so the client reports it unsupported);
//!   no persistent subscriptions, projections, users, operations, gossip,
//!   monitoring, the v2 multi-stream append, stream metadata (`$$` streams
//!   are ordinary streams: no `$maxAge`/`$maxCount`/truncation/ACL), link
//!   events or `resolve_links`, soft deletes, scavenging.
//! - **Idempotency window**: the real server remembers event ids for `Any`
//!   appends in a bounded cache (`--stream-info-cache-capacity` and the
//!   idempotency cache), so a very old retry with `Any` can be written
//!   twice there; here every event of the stream is searched, forever.
//! - **Limits**: no maximum append size (`--max-append-size`), event size,
//!   or deadline enforcement; no `fell_behind` messages (subscriptions never
//!   fall behind: they read the log directly); checkpoints are sent once, at
//!   the catch-up hand-over, not every `checkpointIntervalMultiplier` window.
//! - **Positions**: the initial system events, record sizes (and so the exact
//!   position numbers), subscription ids and the `created` precision (here
//!   100 ns ticks from the wall clock) differ; ordering and the
//!   `(p, p)` shape follow the real server.
//! - **Server features**: reports version `25.0.0` and only the methods above.
//! - **Faults**: [`TestServer::drop_connections`] resets connections at the
//!   transport; a real outage may also surface as timeouts or `Unavailable`
//!   statuses the server sends itself (e.g. while electing a leader).

mod log;
mod service;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use log::Log;
pub use service::SERVER_VERSION;

/// The protobuf/gRPC modules generated from the client's `.proto` files.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod proto {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// Shared switches the accept loop and the connections obey.
#[derive(Debug)]
struct Control {
    /// Cancelled to reset every connection open at the time.
    connections: Mutex<CancellationToken>,
    /// While true, new connections are accepted and closed at once.
    unreachable: watch::Sender<bool>,
    /// Cancelled when the server stops.
    shutdown: CancellationToken,
}

impl Control {
    fn current(&self) -> CancellationToken {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reset_connections(&self) {
        let mut token = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }
}

/// A running test server. Dropping it stops the server and resets its
/// connections.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    log: Arc<Log>,
    control: Arc<Control>,
}

/// Binds `127.0.0.1:0` and serves a fresh log.
pub async fn spawn() -> std::io::Result<TestServer> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    serve(listener, Arc::new(Log::new()))
}

/// Serves `log` on `listener` in the background.
pub fn serve(listener: TcpListener, log: Arc<Log>) -> std::io::Result<TestServer> {
    let addr = listener.local_addr()?;
    let control = Arc::new(Control {
        connections: Mutex::new(CancellationToken::new()),
        unreachable: watch::channel(false).0,
        shutdown: CancellationToken::new(),
    });
    let (tx, rx) = mpsc::channel::<std::io::Result<Connection>>(16);
    tokio::spawn(accept_loop(listener, control.clone(), tx));
    let router = tonic::transport::Server::builder()
        .add_service(
            proto::event_store::client::streams::streams_server::StreamsServer::new(
                service::StreamsService::new(log.clone()),
            ),
        )
        .add_service(
            proto::event_store::client::server_features::server_features_server::ServerFeaturesServer::new(
                service::FeaturesService,
            ),
        );
    let shutdown = control.shutdown.clone();
    tokio::spawn(async move {
        let incoming = ReceiverStream::new(rx);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "kurrentdb test server stopped");
        }
    });
    Ok(TestServer { addr, log, control })
}

async fn accept_loop(
    listener: TcpListener,
    control: Arc<Control>,
    tx: mpsc::Sender<std::io::Result<Connection>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = control.shutdown.cancelled() => return,
        };
        let Ok((socket, _)) = accepted else { continue };
        if *control.unreachable.borrow() {
            drop(socket);
            continue;
        }
        let _ = socket.set_nodelay(true);
        let conn = Connection {
            socket,
            reset: control.current().cancelled_owned().boxed(),
            dead: false,
        };
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

impl TestServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for the `kurrentdb` client (plaintext).
    pub fn connection_string(&self) -> String {
        format!("kurrentdb://{}?tls=false", self.addr)
    }

    /// A client connected to this server.
    pub fn client(&self) -> kurrentdb::Client {
        let settings = self
            .connection_string()
            .parse()
            .expect("the test server's connection string parses");
        kurrentdb::Client::new(settings).expect("a client for the test server")
    }

    /// The log itself, for assertions that look under the wire.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Holds the next append to `stream` after it has taken its `$all`
    /// positions and before it becomes visible, as a slow commit would:
    /// `at_gate` fires once it is held, and it completes after `release`.
    /// Other appends wait behind it (KurrentDB has a single writer).
    pub fn hold_next_append(
        &self,
        stream: &str,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) {
        self.log.hold_next_append(stream, at_gate, release);
    }

    /// Resets every open connection, as a network failure would; the server
    /// keeps accepting new ones.
    pub fn drop_connections(&self) {
        self.control.reset_connections();
    }

    /// While `unreachable`, every connection is reset and new ones are closed
    /// as soon as they are accepted: the node looks down. The log is kept.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.control.unreachable.send_replace(unreachable);
        if unreachable {
            self.control.reset_connections();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.control.shutdown.cancel();
        self.control.reset_connections();
    }
}

/// A TCP connection that can be reset from outside.
struct Connection {
    socket: TcpStream,
    reset: futures::future::BoxFuture<'static, ()>,
    dead: bool,
}

impl Connection {
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.dead && self.reset.poll_unpin(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            Err(std::io::ErrorKind::ConnectionReset.into())
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.socket.connect_info()
    }
}
