//! How a replica stops under load without failing a request.
//!
//! On Ctrl-C or SIGTERM, [`crate::Application::run_until_stopped`] goes
//! through three phases:
//!
//! 1. **Drain** (`--shutdown-drain`, 0 s by default, a few seconds behind a
//!    load balancer). The replica keeps serving, but `/readyz` answers 503
//!    (`"draining": true`) so the load balancer takes it out of rotation;
//!    every response carries `Connection: close`, so no client keeps a
//!    connection to it; new WebSocket upgrades are refused with 503 and
//!    `UNAVAILABLE`; and every open WebSocket is closed with 1012 (Service
//!    Restart), which tells `graphql-transport-ws` clients to reconnect
//!    (to another replica).
//! 2. **Finish** (`--shutdown-grace`, 30 s by default). The listener stops
//!    accepting; requests in flight finish. Whatever is still running when
//!    the grace period ends is cut (answered `UNAVAILABLE`), and that is
//!    logged.
//! 3. **Stop** the projectors and process managers. A leader marks its
//!    consumers STOPPED and releases their locks, so a standby in another
//!    process takes over at once rather than after a lease expires.
//!
//! [`Stopping`] holds the flags the phases raise; it lives in the
//! [`crate::state::AppState`]. A request still running when the grace
//! period ends is answered `UNAVAILABLE` (503, `Retry-After`), which a
//! client may retry elsewhere, rather than left without an answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The WebSocket close code sent to subscribers when the server stops
/// (RFC 6455 §7.4.1 as registered by IANA: Service Restart).
pub const WS_CLOSE_SERVICE_RESTART: u16 = 1012;

/// How `serve` stops (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// How long the replica keeps serving, unready, before it stops
    /// accepting connections.
    pub drain: Duration,
    /// The longest wait for in-flight requests once it stops accepting.
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain: Duration::ZERO,
            grace: Duration::from_secs(30),
        }
    }
}

/// How far the process is in stopping: draining (phase 1), then cutting
/// what outlived the grace period (the end of phase 2). Each flag is raised
/// once. Cheap to clone; every clone sees the same flags.
/// It also counts the HTTP requests in flight (`/metrics`:
/// `marketplace_http_requests_in_flight`).
#[derive(Clone, Debug)]
pub struct Stopping {
    draining: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    in_flight: Arc<AtomicU64>,
}

impl Default for Stopping {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            cut: watch::channel(false).0,
            in_flight: Arc::default(),
        }
    }
}

/// One request in flight, counted until it is dropped (answered, or
/// abandoned by its connection).
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stopping {
    /// Counts a request in flight until the guard is dropped.
    pub fn request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// HTTP requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Starts draining (idempotent).
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    /// Whether it drains (or has gone further).
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes once it drains (at once if it already does).
    pub async fn drained(&self) {
        raised(&self.draining).await;
    }

    /// The grace period is over: requests still running are answered
    /// `UNAVAILABLE` (idempotent).
    pub fn cut(&self) {
        self.begin_drain();
        self.cut.send_replace(true);
    }

    /// Completes once requests are cut.
    pub async fn was_cut(&self) {
        raised(&self.cut).await;
    }
}

async fn raised(flag: &watch::Sender<bool>) {
    let mut rx = flag.subscribe();
    // The sender outlives the wait, so the channel cannot close first.
    let _ = rx.wait_for(|raised| *raised).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_flags_and_waiters_wake_when_they_are_raised() {
        let stopping = Stopping::default();
        let clone = stopping.clone();
        assert!(!clone.is_draining());
        let drain_waiter = {
            let clone = clone.clone();
            tokio::spawn(async move { clone.drained().await })
        };
        let cut_waiter = tokio::spawn(async move { clone.was_cut().await });
        stopping.begin_drain();
        drain_waiter.await.expect("the drain waiter wakes");
        assert!(stopping.is_draining());
        assert!(!cut_waiter.is_finished(), "draining does not cut");
        stopping.cut();
        cut_waiter.await.expect("the cut waiter wakes");
        // Raised already: waiting returns at once.
        stopping.drained().await;
        stopping.was_cut().await;
    }

    #[test]
    fn a_request_counts_in_flight_until_its_guard_is_dropped() {
        let stopping = Stopping::default();
        let one = stopping.request();
        let two = stopping.clone().request();
        assert_eq!(stopping.in_flight(), 2);
        drop(one);
        assert_eq!(stopping.in_flight(), 1);
        drop(two);
        assert_eq!(stopping.in_flight(), 0);
    }
}
