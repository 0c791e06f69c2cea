//! A gateway behind a circuit breaker, with retries.
//!
//! The state machine is `failsafe`'s ([`failsafe::StateMachine`]), not ours:
//! it opens when the success rate over a window falls below a floor (with a
//! minimum of calls) or after a run of consecutive failures, rejects every
//! call while open, lets one probe through after the cool-down (half-open)
//! and closes on its success. This module only chooses the policy, counts,
//! and remembers when it opened so that a fast-fail can say when to retry.
//!
//! Declines are answers, not failures: only timeouts, provider errors and
//! protocol breaks count against the provider.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use failsafe::failure_policy::{self, ConsecutiveFailures, OrElse, SuccessRateOverTimeWindow};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{backoff, FailurePolicy as _, Instrument, StateMachine};
use marketplace_consumers::retry::Backoff;

use super::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};

/// When the breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Opens when fewer than this share of calls succeed over `window`…
    pub required_success_rate: f64,
    /// …once at least this many calls were made in it.
    pub min_calls: u32,
    /// The window of the success rate (whole seconds, at least one).
    pub window: Duration,
    /// Also opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// How long it stays open before letting a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            required_success_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(30),
            consecutive_failures: 5,
            cool_down: Duration::from_secs(15),
        }
    }
}

/// How one charge is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Each attempt's timeout.
    pub attempt_timeout: Duration,
    /// The backoff between attempts (exponential, equal jitter).
    pub backoff: Backoff,
    /// No new attempt starts after this long since the first.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            deadline: Duration::from_secs(20),
        }
    }
}

/// The breaker's state, as `/metrics` and `/readyz` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// The cool-down is over: the next call probes the provider.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug, Default)]
struct Counters {
    state: AtomicU8,
    opened_at: Mutex<Option<Instant>>,
    cool_down_ms: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    opened: AtomicU64,
    retries: AtomicU64,
}

/// The breaker's state and counters, shared with the metrics page. Cheap
/// to clone.
#[derive(Clone, Debug, Default)]
pub struct BreakerStats(Arc<Counters>);

impl BreakerStats {
    /// The state now. An open breaker whose cool-down is over reads as
    /// half-open: `failsafe` moves it there on the next call, which probes.
    pub fn state(&self) -> BreakerState {
        match self.0.state.load(Ordering::Acquire) {
            OPEN => match self.retry_after() {
                Some(_) => BreakerState::Open,
                None => BreakerState::HalfOpen,
            },
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// While open: how long until a call is let through again.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.0.state.load(Ordering::Acquire) != OPEN {
            return None;
        }
        let opened_at = (*self.0.opened_at.lock().unwrap_or_else(|p| p.into_inner()))?;
        let cool_down = Duration::from_millis(self.0.cool_down_ms.load(Ordering::Relaxed));
        cool_down
            .checked_sub(opened_at.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Calls the provider answered (captures, declines, pending).
    pub fn successes(&self) -> u64 {
        self.0.successes.load(Ordering::Relaxed)
    }

    /// Calls that failed (timeouts, provider errors).
    pub fn failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// Calls refused without calling, while open.
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::Relaxed)
    }

    /// How many times it opened.
    pub fn opened(&self) -> u64 {
        self.0.opened.load(Ordering::Relaxed)
    }

    /// Attempts after the first of a charge.
    pub fn retries(&self) -> u64 {
        self.0.retries.load(Ordering::Relaxed)
    }
}

impl Instrument for BreakerStats {
    fn on_call_rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn on_open(&self) {
        *self.0.opened_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.0.opened.fetch_add(1, Ordering::Relaxed);
        self.0.state.store(OPEN, Ordering::Release);
        tracing::warn!("payment gateway circuit opened");
    }

    fn on_half_open(&self) {
        self.0.state.store(HALF_OPEN, Ordering::Release);
        tracing::info!("payment gateway circuit half-open: probing");
    }

    fn on_closed(&self) {
        self.0.state.store(CLOSED, Ordering::Release);
        tracing::info!("payment gateway circuit closed");
    }
}

type Policy =
    OrElse<SuccessRateOverTimeWindow<backoff::Constant>, ConsecutiveFailures<backoff::Constant>>;

/// A gateway behind a circuit breaker, retried with backoff until a
/// deadline. Clones share the breaker.
#[derive(Clone)]
pub struct ProtectedGateway {
    inner: Arc<dyn PaymentGateway>,
    breaker: StateMachine<Policy, BreakerStats>,
    stats: BreakerStats,
    retry: RetryPolicy,
}

impl std::fmt::Debug for ProtectedGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtectedGateway")
            .field("state", &self.stats.state())
            .field("retry", &self.retry)
            .finish()
    }
}

impl ProtectedGateway {
    /// `inner` behind a breaker configured by `breaker`, retried by `retry`.
    pub fn new(inner: Arc<dyn PaymentGateway>, breaker: BreakerConfig, retry: RetryPolicy) -> Self {
        let cool_down = backoff::constant(breaker.cool_down);
        let policy = failure_policy::success_rate_over_time_window(
            breaker.required_success_rate.clamp(0.0, 1.0),
            breaker.min_calls,
            breaker.window.max(Duration::from_secs(1)),
            cool_down.clone(),
        )
        .or_else(failure_policy::consecutive_failures(
            breaker.consecutive_failures.max(1),
            cool_down,
        ));
        let stats = BreakerStats::default();
        stats.0.cool_down_ms.store(
            u64::try_from(breaker.cool_down.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let machine = failsafe::Config::new()
            .failure_policy(policy)
            .instrument(stats.clone())
            .build();
        Self {
            inner,
            breaker: machine,
            stats,
            retry,
        }
    }

    /// Its state and counters.
    pub fn stats(&self) -> &BreakerStats {
        &self.stats
    }

    /// Whether a call would be let through now; if not, how long until one
    /// is. For callers that fast-fail before recording anything.
    pub fn refuses(&self) -> Option<Duration> {
        match self.stats.state() {
            BreakerState::Open => self.stats.retry_after(),
            BreakerState::Closed | BreakerState::HalfOpen => None,
        }
    }

    async fn attempt(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let timeout = self.retry.attempt_timeout;
        let inner = self.inner.clone();
        let call = async move {
            match tokio::time::timeout(timeout, inner.charge(request)).await {
                Ok(result) => result,
                Err(_) => Err(GatewayError::Timeout),
            }
        };
        match self.breaker.call(call).await {
            Ok(outcome) => {
                self.stats.0.successes.fetch_add(1, Ordering::Relaxed);
                Ok(outcome)
            }
            Err(failsafe::Error::Inner(e)) => {
                self.stats.0.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(failsafe::Error::Rejected) => Err(GatewayError::CircuitOpen {
                retry_after: self.stats.retry_after().unwrap_or(Duration::from_secs(1)),
            }),
        }
    }
}

#[async_trait]
impl PaymentGateway for ProtectedGateway {
    /// Attempts the charge until an answer, the deadline, or the breaker
    /// refusing: the last error is returned — [`GatewayError::CircuitOpen`]
    /// only when no attempt was made at all. Retrying is safe because the
    /// provider deduplicates by intent.
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut last: Option<GatewayError> = None;
        loop {
            if attempt > 0 {
                self.stats.0.retries.fetch_add(1, Ordering::Relaxed);
            }
            attempt += 1;
            let error = match (self.attempt(request).await, last) {
                (Ok(outcome), _) => return Ok(outcome),
                // Refused before anything was sent: the caller knows
                // nothing was charged.
                (Err(e @ GatewayError::CircuitOpen { .. }), None) => return Err(e),
                // Refused after attempts that may have reached the
                // provider: what those left is what the caller must know.
                (Err(GatewayError::CircuitOpen { .. }), Some(previous)) => return Err(previous),
                (Err(e), _) => e,
            };
            last = Some(error.clone());
            let pause = self.retry.backoff.delay(attempt);
            if started.elapsed() + pause >= self.retry.deadline {
                tracing::warn!(intent = %request.intent_id, attempt, %error, "charge gave up at its deadline");
                return Err(error);
            }
            tracing::debug!(intent = %request.intent_id, attempt, %error, "charge failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use marketplace_domain::values::{AccountId, Currency, Money, PaymentIntentId, ProviderRef};
    use uuid::Uuid;

    /// Fails its first `fail` calls, then captures.
    struct Flaky {
        fail: usize,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl PaymentGateway for Flaky {
        async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail {
                return Err(GatewayError::Unavailable("503".into()));
            }
            Ok(ChargeOutcome::Captured {
                charge_ref: ProviderRef::parse("ch_1").expect("valid"),
                last4: None,
            })
        }
    }

    fn request() -> ChargeRequest {
        ChargeRequest {
            intent_id: PaymentIntentId(Uuid::from_u128(1)),
            account_id: AccountId(Uuid::from_u128(2)),
            amount: Money {
                minor: 100,
                currency: Currency::parse("EUR").expect("valid"),
            },
            payment_token: None,
        }
    }

    fn quick_retry(deadline_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(500),
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    #[tokio::test]
    async fn retries_through_transient_errors_until_the_provider_answers() {
        let flaky = Arc::new(Flaky {
            fail: 2,
            calls: AtomicUsize::new(0),
        });
        let gateway =
            ProtectedGateway::new(flaky.clone(), BreakerConfig::default(), quick_retry(5_000));
        let outcome = gateway.charge(&request()).await.expect("captured");
        assert!(matches!(outcome, ChargeOutcome::Captured { .. }));
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        assert_eq!(gateway.stats().retries(), 2);
        assert_eq!(gateway.stats().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_then_fast_fails_without_calling() {
        let flaky = Arc::new(Flaky {
            fail: usize::MAX,
            calls: AtomicUsize::new(0),
        });
        let config = BreakerConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(60),
            ..BreakerConfig::default()
        };
        let gateway = ProtectedGateway::new(flaky.clone(), config, quick_retry(5_000));
        let error = gateway.charge(&request()).await.expect_err("open");
        assert_eq!(
            error,
            GatewayError::Unavailable("503".into()),
            "attempts were made: their error, not the breaker's"
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        assert_eq!(gateway.stats().state(), BreakerState::Open);
        assert!(gateway
            .refuses()
            .is_some_and(|d| d <= Duration::from_secs(60)));
        let again = gateway.charge(&request()).await.expect_err("still open");
        assert!(matches!(again, GatewayError::CircuitOpen { .. }));
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            3,
            "not called while open"
        );
        assert!(gateway.stats().rejected() >= 1);
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let flaky = Arc::new(Flaky {
            fail: usize::MAX,
            calls: AtomicUsize::new(0),
        });
        let config = BreakerConfig {
            consecutive_failures: 1_000,
            ..BreakerConfig::default()
        };
        let gateway = ProtectedGateway::new(flaky, config, quick_retry(30));
        let error = gateway.charge(&request()).await.expect_err("deadline");
        assert_eq!(error, GatewayError::Unavailable("503".into()));
    }
}
