//! A payment provider for tests only: it serves, over real HTTP, the JSON
//! protocol the marketplace's HTTP gateway speaks (documented once, in
//! `marketplace_api::payments`), and lets a test inject the faults a real
//! provider shows: latency, errors, answers that come after the client
//! gave up, pending answers settled by callback, and duplicate callbacks.
//!
//! Layout: this file holds [`spawn`]/[`Simulator`] (bind, serve, and the
//! test controls), the charge handler and the callback sender; `main.rs`
//! is the `payments-simulator --listen 127.0.0.1:8099` binary.
//!
//! # What it implements
//! - `POST /v1/charges` with `Idempotency-Key`: the first request for a key
//!   decides the charge (captured, or declined for the token
//!   [`DECLINED_TOKEN`]) and records it *before* any injected delay, as a
//!   real provider commits before its answer reaches the client; every later
//!   request with that key answers the same charge and charges nothing more.
//!   [`Simulator::charges`] counts the charges actually made.
//! - Answers `200` captured (`last4`: the last four digits of a
//!   `tok_…_NNNN` token, else `4242`), `402` declined, or in pending mode
//!   `202` then the result by callback.
//! - Callbacks to the request's `callbackUrl` (else the
//!   [`Simulator::set_callback_target`]) with `Authorization: Bearer
//!   <callback secret>`, after [`Simulator::set_callback_delay`], each sent
//!   [`Simulator::set_callback_copies`] times at once (duplicates).
//! - Faults: [`Simulator::fail_next`] (the next N requests answer `503`
//!   without charging), [`Simulator::set_failing`] (every request does,
//!   until turned off), [`Simulator::delay_next`] (the next N answers are
//!   held back — the charge is made at once — so a client with a shorter
//!   timeout gives up on a charge that succeeded), and
//!   [`Simulator::set_latency`] for every answer.
//!
//! # Known differences from a real provider
//! This is the one place they are written down.
//! - **State**: in memory; nothing survives the process. One merchant; no
//!   customers, payment methods, refunds, disputes, partial captures,
//!   authorisation-then-capture as two steps, or currency conversion.
//! - **Security**: plain HTTP; the API key is not checked; callbacks are
//!   authenticated by a bearer secret, where real providers sign the body
//!   (an HMAC header with a timestamp) and the receiver verifies the
//!   signature and rejects replays.
//! - **Idempotency**: keys never expire (real providers keep them for about
//!   a day), and a repeated key with a *different* body is answered with the
//!   first charge instead of being refused with a 4xx.
//! - **Callbacks**: sent once per copy, never retried on a failed delivery
//!   (real providers retry with backoff for days), never out of order
//!   across different charges by design, and not signed.
//! - **Declines**: only [`DECLINED_TOKEN`] declines; no 3-D Secure or other
//!   customer action, no fraud checks, no rate limiting of its own (`429`).
//! - **Faults**: an injected error is a clean `503`; a real outage may also
//!   reset connections, hang without answering, or answer HTML error pages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The payment token the simulator declines.
pub const DECLINED_TOKEN: &str = "tok_declined";

/// A charge request as the protocol sends it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody {
    intent_id: Uuid,
    customer: Uuid,
    amount: Amount,
    payment_token: Option<String>,
    callback_url: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
struct Amount {
    minor: i64,
    currency: String,
}

/// A charge's result, as answered and as called back.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct ChargeResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    intent_id: Option<Uuid>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    charge_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// One charge the simulator made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The provider's charge id.
    pub charge_id: String,
    /// The customer reference sent (the marketplace account).
    pub customer: Uuid,
    /// Captured (`true`) or declined.
    pub captured: bool,
    /// Minor units.
    pub minor: i64,
    /// Currency code.
    pub currency: String,
}

#[derive(Debug, Default)]
struct Controls {
    fail_next: AtomicUsize,
    failing: AtomicBool,
    delay_next: AtomicUsize,
    delay_ms: AtomicU64,
    latency_ms: AtomicU64,
    pending: AtomicBool,
    callback_delay_ms: AtomicU64,
    callback_copies: AtomicUsize,
}

#[derive(Debug)]
struct Inner {
    controls: Controls,
    charges: Mutex<HashMap<Uuid, (Charge, ChargeResult)>>,
    requests: AtomicUsize,
    callbacks_sent: AtomicUsize,
    callback_secret: String,
    callback_target: Mutex<Option<String>>,
    http: reqwest::Client,
}

/// A running simulator and its controls. Dropping it stops the server.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1 on a free port and serves; callbacks carry
/// `callback_secret`.
pub async fn spawn(callback_secret: &str) -> std::io::Result<Simulator> {
    serve(TcpListener::bind(("127.0.0.1", 0)).await?, callback_secret)
}

/// Serves on `listener` in the background.
pub fn serve(listener: TcpListener, callback_secret: &str) -> std::io::Result<Simulator> {
    let addr = listener.local_addr()?;
    let inner = Arc::new(Inner {
        controls: Controls {
            callback_copies: AtomicUsize::new(1),
            ..Controls::default()
        },
        charges: Mutex::default(),
        requests: AtomicUsize::new(0),
        callbacks_sent: AtomicUsize::new(0),
        callback_secret: callback_secret.to_owned(),
        callback_target: Mutex::new(None),
        http: reqwest::Client::new(),
    });
    let app = Router::new()
        .route("/v1/charges", post(charge))
        .with_state(inner.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "payments simulator stopped");
        }
    });
    Ok(Simulator { addr, inner, task })
}

impl Simulator {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as `--payments-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` charge requests answer `503` and charge nothing.
    pub fn fail_next(&self, n: usize) {
        self.inner.controls.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every charge request answers `503` (an outage) while `on`.
    pub fn set_failing(&self, on: bool) {
        self.inner.controls.failing.store(on, Ordering::SeqCst);
    }

    /// The next `n` answers are held back `delay` after the charge is made.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        self.inner
            .controls
            .delay_ms
            .store(millis(delay), Ordering::SeqCst);
        self.inner.controls.delay_next.store(n, Ordering::SeqCst);
    }

    /// Every answer takes at least `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.inner
            .controls
            .latency_ms
            .store(millis(latency), Ordering::SeqCst);
    }

    /// While `on`, new charges answer `202 pending` and settle by callback.
    pub fn set_pending(&self, on: bool) {
        self.inner.controls.pending.store(on, Ordering::SeqCst);
    }

    /// Callbacks leave `delay` after the charge is made.
    pub fn set_callback_delay(&self, delay: Duration) {
        self.inner
            .controls
            .callback_delay_ms
            .store(millis(delay), Ordering::SeqCst);
    }

    /// Each callback is sent `copies` times at once (1: no duplicates; 0:
    /// no callbacks).
    pub fn set_callback_copies(&self, copies: usize) {
        self.inner
            .controls
            .callback_copies
            .store(copies, Ordering::SeqCst);
    }

    /// Where callbacks go for charges whose request names no `callbackUrl`
    /// (a test learns the marketplace's address only after starting it).
    pub fn set_callback_target(&self, url: &str) {
        *self
            .inner
            .callback_target
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(url.to_owned());
    }

    /// Charge requests received (retries and refused ones included).
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Callbacks delivered (answered 2xx).
    pub fn callbacks_sent(&self) -> usize {
        self.inner.callbacks_sent.load(Ordering::SeqCst)
    }

    /// The charges made, by intent: one per intent however often it was
    /// requested.
    pub fn charges(&self) -> HashMap<Uuid, Charge> {
        self.inner
            .charges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, (c, _))| (*k, c.clone()))
            .collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn last4(token: Option<&str>) -> String {
    let digits: String = token
        .and_then(|t| t.rsplit('_').next())
        .filter(|d| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("4242")
        .to_owned();
    digits
}

async fn charge(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<ChargeBody>,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let c = &inner.controls;
    if c.failing.load(Ordering::SeqCst) || take(&c.fail_next) {
        return (StatusCode::SERVICE_UNAVAILABLE, "injected outage").into_response();
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or(body.intent_id);
    let (result, fresh) = {
        let mut charges = inner.charges.lock().unwrap_or_else(|p| p.into_inner());
        match charges.get(&key) {
            Some((_, result)) => (result.clone(), false),
            None => {
                let n = charges.len() + 1;
                let captured = body.payment_token.as_deref() != Some(DECLINED_TOKEN);
                let charge_id = format!("ch_sim_{n}");
                let result = if captured {
                    ChargeResult {
                        intent_id: None,
                        status: "captured",
                        charge_id: Some(charge_id.clone()),
                        last4: Some(last4(body.payment_token.as_deref())),
                        reason: None,
                    }
                } else {
                    ChargeResult {
                        intent_id: None,
                        status: "declined",
                        charge_id: None,
                        last4: None,
                        reason: Some("card_declined: the issuer refused the charge".into()),
                    }
                };
                let charge = Charge {
                    charge_id,
                    customer: body.customer,
                    captured,
                    minor: body.amount.minor,
                    currency: body.amount.currency.clone(),
                };
                charges.insert(key, (charge, result.clone()));
                (result, true)
            }
        }
    };
    let pending = c.pending.load(Ordering::SeqCst);
    if fresh {
        let target = body.callback_url.clone().or_else(|| {
            inner
                .callback_target
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        if let Some(url) = target {
            let mut callback = result.clone();
            callback.intent_id = Some(body.intent_id);
            tokio::spawn(send_callbacks(inner.clone(), url, callback));
        }
    }
    let mut delay = Duration::from_millis(c.latency_ms.load(Ordering::SeqCst));
    if take(&c.delay_next) {
        delay += Duration::from_millis(c.delay_ms.load(Ordering::SeqCst));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if pending && fresh {
        let answer = ChargeResult {
            intent_id: None,
            status: "pending",
            charge_id: result.charge_id.clone(),
            last4: None,
            reason: None,
        };
        return (StatusCode::ACCEPTED, Json(answer)).into_response();
    }
    let status = if result.status == "declined" {
        StatusCode::PAYMENT_REQUIRED
    } else {
        StatusCode::OK
    };
    (status, Json(result)).into_response()
}

async fn send_callbacks(inner: Arc<Inner>, url: String, result: ChargeResult) {
    let c = &inner.controls;
    let delay = Duration::from_millis(c.callback_delay_ms.load(Ordering::SeqCst));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let copies = c.callback_copies.load(Ordering::SeqCst);
    let sends = (0..copies).map(|_| {
        let (inner, url, result) = (inner.clone(), url.clone(), result.clone());
        tokio::spawn(async move {
            let sent = inner
                .http
                .post(&url)
                .bearer_auth(&inner.callback_secret)
                .json(&result)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    inner.callbacks_sent.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => tracing::warn!(status = %r.status(), "callback refused"),
                Err(e) => tracing::warn!(error = %e, "callback failed"),
            }
        })
    });
    for send in sends.collect::<Vec<_>>() {
        let _ = send.await;
    }
}
