//! Hot streams: commands for one stream that arrive while another command
//! on it is being appended wait in process, and are then decided one after
//! another against the latest state and appended together, in one append
//! with one expected revision (DESIGN.md §4b, "hot aggregates").
//!
//! The first command on a stream runs at once and leads; commands arriving
//! meanwhile queue behind it. When the leader is done (or dropped: a
//! client that went away), whatever queued is taken as one batch by a task
//! of its own, and so on until the queue is empty. Each queued command keeps
//! its own outcome: its own refusal, its own events (with its own ids), and
//! a consistency token that covers its events (the batch's last position).
//! A batch that cannot be appended as a whole (a store failure, or steps
//! the store already holds) runs its commands one by one, so each gets its
//! own error. Across processes the expected revision keeps it correct: a
//! conflict re-decides the batch on the reloaded state.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use marketplace_domain::Aggregate;
use marketplace_store::StreamId;
use tokio::sync::oneshot;

use crate::handler::{CommandContext, CommandError, Executed};

/// A command waiting for its stream, and where its outcome goes.
pub(crate) struct Waiting<A: Aggregate> {
    pub(crate) ctx: CommandContext,
    pub(crate) command: A::Command,
    pub(crate) reply: oneshot::Sender<Result<Executed<A>, CommandError<A::Error>>>,
}

/// The streams with a command in flight, and what waits for each.
#[derive(Default)]
pub(crate) struct HotStreams {
    /// Stream → `Vec<Waiting<A>>` of its aggregate `A`.
    busy: Mutex<HashMap<StreamId, Box<dyn Any + Send>>>,
}

/// What [`HotStreams::enter`] says to do.
pub(crate) enum Entry<A: Aggregate> {
    /// The stream was idle: run the command now, then hand the stream over
    /// with [`HotStreams::take`] until it returns nothing.
    Lead,
    /// Another command is in flight: the outcome arrives here.
    Queued(oneshot::Receiver<Result<Executed<A>, CommandError<A::Error>>>),
}

impl HotStreams {
    /// Marks `stream` busy and leads, or queues the command behind the
    /// command in flight.
    pub(crate) fn enter<A: Aggregate>(
        &self,
        stream: &StreamId,
        ctx: &CommandContext,
        command: &A::Command,
    ) -> Entry<A> {
        let (reply, outcome) = oneshot::channel();
        let queued = self.join(stream, || Waiting::<A> {
            ctx: ctx.clone(),
            command: command.clone(),
            reply,
        });
        if queued {
            Entry::Queued(outcome)
        } else {
            Entry::Lead
        }
    }

    /// Queues what `waiting` makes behind the work in flight on `stream`
    /// (true), or marks `stream` busy for the caller to lead (false). Each
    /// instance queues one type of work per stream: work of another type
    /// on a busy stream is not queued, it leads (and runs beside it).
    pub(crate) fn join<W: Send + 'static>(
        &self,
        stream: &StreamId,
        waiting: impl FnOnce() -> W,
    ) -> bool {
        let Ok(mut busy) = self.busy.lock() else {
            return false;
        };
        match busy.get_mut(stream) {
            Some(queue) => match queue.downcast_mut::<Vec<W>>() {
                Some(queue) => {
                    queue.push(waiting());
                    true
                }
                // Stream ids carry their category, so this cannot be
                // another aggregate's; run it alone rather than guess.
                None => false,
            },
            None => {
                busy.insert(stream.clone(), Box::new(Vec::<W>::new()));
                false
            }
        }
    }

    /// What queued on `stream` since the last call, to run as one batch;
    /// empty when nothing did, and then the stream is idle again.
    pub(crate) fn take<W: Send + 'static>(&self, stream: &StreamId) -> Vec<W> {
        let Ok(mut busy) = self.busy.lock() else {
            return Vec::new();
        };
        let queued = busy
            .get_mut(stream)
            .and_then(|q| q.downcast_mut::<Vec<W>>())
            .map(std::mem::take)
            .unwrap_or_default();
        if queued.is_empty() {
            busy.remove(stream);
        }
        queued
    }

    /// Streams with a command in flight.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> usize {
        self.busy.lock().map(|b| b.len()).unwrap_or(0)
    }
}
