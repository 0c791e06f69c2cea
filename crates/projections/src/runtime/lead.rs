//! One leader's term: the live batch loop. It subscribes from the
//! checkpoint, gathers batches by count or time, commits each one fenced
//! (see `commit`), checks on idle ticks that it still leads its build, and,
//! leading a build that is not live, bulk loads it first and tries the
//! switch whenever it has caught up (see `rebuild`). A [`Term`] says how
//! the term ended.

use std::sync::Arc;

use marketplace_consumers::leader::LockConnection;
use marketplace_consumers::subscription::{Batching, Next, Subscription};
use marketplace_consumers::trace;
use marketplace_store::{Position, RecordedEvent};
use tokio::sync::watch;

use super::commit::Halt;
use super::{Generation, Projection, ProjectionError, ProjectorRuntime};
use crate::builds::{self, Build};
use crate::progress::{ProjectionState, RunnerStatus};

/// How a leader's term ended.
pub(super) enum Term {
    /// Shutdown was asked for.
    Stopped,
    /// Fenced, lost its lock, or the log could not be read: stand by again.
    SteppedDown,
    /// The handler kept failing on the event at `position`.
    Failed { position: Position, error: String },
    /// [`Mode::UntilLive`]: the build is live and caught up.
    Switched {
        replaced: Option<String>,
        position: Position,
    },
}

/// How long a leader leads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Until shutdown (a rebuild switches in, then goes on live).
    Serve,
    /// Until its build is live and caught up (`projections rebuild`).
    UntilLive,
}

/// The spans of a live build's folding of `batch`: one per recent event
/// that carries a trace context (at most
/// [`trace::SPANS_PER_BATCH`]), each a child of the span that wrote its
/// event, open while the batch commits. A rebuild is not traced.
fn apply_spans(name: &'static str, batch: &[Arc<RecordedEvent>]) -> Vec<tracing::Span> {
    batch
        .iter()
        .filter(|e| e.metadata.traceparent.is_some() && trace::is_recent(e.recorded_at()))
        .take(trace::SPANS_PER_BATCH)
        .map(|e| {
            let span = tracing::info_span!(
                "projection.apply",
                projection = name,
                event_type = %e.event_type,
                stream = %e.stream_id,
                position = e.position.0,
                batch = batch.len(),
            );
            trace::follow(&span, e.metadata.traceparent.as_deref());
            span
        })
        .collect()
}

impl ProjectorRuntime {
    /// Leads `build` of `projection` from `position` under `generation`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lead(
        &self,
        projection: &dyn Projection,
        lock: &mut LockConnection,
        build: &Build,
        generation: Generation,
        mut position: Position,
        shutdown: &mut watch::Receiver<bool>,
        mode: Mode,
    ) -> Term {
        let name = projection.name();
        let schema = build.schema.as_str();
        let mut live = build.live;
        self.progress.set_runner(
            name,
            RunnerStatus {
                generation: Some(generation.0),
                ..RunnerStatus::new(ProjectionState::Running)
            },
        );
        let mut follower = None;
        if live {
            self.progress.advance(name, position);
        } else {
            follower = Some(self.follow_live(name));
            self.publish_rebuild(name, build, position, !build.indexed)
                .await;
        }
        if !build.indexed {
            if let Err(term) = self
                .bulk_load(projection, lock, build, generation, &mut position, shutdown)
                .await
            {
                return term;
            }
            match self
                .commit_indexes(projection, schema, generation, position)
                .await
            {
                Ok(()) => {
                    tracing::info!(projection = name, schema, %position, "bulk load done; indexes built")
                }
                Err(ProjectionError::Fenced { .. }) => return Term::SteppedDown,
                Err(e) if e.is_unavailable() => return Term::SteppedDown,
                Err(e) => {
                    return Term::Failed {
                        position: Position(position.0 + 1),
                        error: format!("could not build the indexes: {e}"),
                    }
                }
            }
            if live {
                self.progress.advance(name, position);
            } else {
                self.publish_rebuild(name, build, position, false).await;
            }
        }
        let mut events = Subscription::new(name, self.store.clone(), position, self.config.retry);
        let batching = Batching {
            max_events: self.config.max_batch,
            idle_wait: self.config.max_wait,
            busy_wait: self.config.busy_wait,
        };
        // Whether the last batch left the subscription drained (caught up).
        let mut caught_up;
        // A rebuild fresh from its bulk load (or taken over) has caught up
        // as far as it knows: try to switch before waiting for events.
        let mut try_first = !live;
        loop {
            let next = if std::mem::take(&mut try_first) {
                Next::Idle
            } else {
                events
                    .next_batch(batching, Some(self.config.leader_check), shutdown)
                    .await
            };
            match next {
                Next::Stopped => return Term::Stopped,
                Next::Idle => {
                    if lock
                        .still_leading(builds::BUILD_LEADING_SQL, schema, generation.0)
                        .await
                        == Some(false)
                    {
                        tracing::warn!(projection = name, schema, "no longer leads this build");
                        return Term::SteppedDown;
                    }
                    // Idle: nothing came for a while.
                    caught_up = true;
                }
                Next::Batch(mut batch) => {
                    caught_up = batch.len() < self.config.max_batch;
                    // Events a switch already folded come round again.
                    batch.retain(|e| e.position > position);
                    if !batch.is_empty() {
                        // Open until the batch is committed and published.
                        let _applying = if live {
                            apply_spans(name, &batch)
                        } else {
                            Vec::new()
                        };
                        match self
                            .commit_with_retry(projection, generation, position, &batch, shutdown)
                            .await
                        {
                            Ok(p) => position = p,
                            Err(Halt::Fenced) => {
                                tracing::warn!(projection = name, %generation, "fenced by a newer leader or a switch");
                                return Term::SteppedDown;
                            }
                            Err(Halt::Unavailable) => return Term::SteppedDown,
                            Err(Halt::Shutdown) => return Term::Stopped,
                            Err(Halt::Failed { position, error }) => {
                                return Term::Failed { position, error }
                            }
                        }
                        if live {
                            self.progress.advance(name, position);
                        } else {
                            self.publish_rebuild(name, build, position, false).await;
                        }
                    }
                }
            }
            if !caught_up {
                continue;
            }
            if live {
                if mode == Mode::UntilLive {
                    return Term::Switched {
                        replaced: None,
                        position,
                    };
                }
                continue;
            }
            match self.switch(projection, build, generation, position).await {
                Ok(Some(switched)) => {
                    live = true;
                    follower.take();
                    position = position.max(switched.position);
                    self.progress.advance(name, position);
                    self.progress.update_runner(name, |r| r.rebuild = None);
                    tracing::info!(
                        projection = name,
                        schema,
                        %position,
                        replaced = ?switched.replaced,
                        "switched the new build in"
                    );
                    if mode == Mode::UntilLive {
                        return Term::Switched {
                            replaced: switched.replaced,
                            position,
                        };
                    }
                    self.drop_retired_later(name);
                }
                Ok(None) => {}
                Err(ProjectionError::Fenced { .. }) => return Term::SteppedDown,
                Err(e) if e.is_unavailable() => return Term::SteppedDown,
                Err(e) => {
                    tracing::warn!(projection = name, error = %e, "could not switch the new build in yet")
                }
            }
        }
    }
}
