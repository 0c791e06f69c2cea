//! The server's in-memory transaction log: streams, revisions and `$all`
//! positions, with KurrentDB's write rules (expected revision, idempotent
//! retries) and its single-writer commit order.
//!
//! Depends on nothing but std/tokio: the gRPC layer translates to and from
//! the wire types.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// One event record of the log. KurrentDB writes every event of a gRPC
/// append as an implicitly committed prepare, so its `$all` position is
/// `(commit, prepare) = (p, p)` with `p` the record's log position.
#[derive(Debug)]
pub struct Record {
    /// The stream name (raw bytes on the wire; UTF-8 here).
    pub stream: String,
    /// Its event number in the stream.
    pub revision: u64,
    /// Its log position: both the commit and the prepare position.
    pub position: u64,
    /// The client-chosen event id.
    pub id: Uuid,
    /// The `type` system metadata.
    pub event_type: String,
    /// The `content-type` system metadata.
    pub content_type: String,
    /// When it was written, in .NET ticks (100 ns) since the Unix epoch, as the
    /// `created` system metadata carries it.
    pub created_ticks: i64,
    /// The user metadata bytes.
    pub custom_metadata: Vec<u8>,
    /// The payload bytes.
    pub data: Vec<u8>,
}

impl Record {
    /// Bytes this record would take in the transaction file, roughly: what
    /// the next position advances by, so positions are sparse as on a real
    /// server and nothing above can assume they are dense.
    fn size_on_disk(&self) -> u64 {
        (80 + self.stream.len()
            + self.event_type.len()
            + self.content_type.len()
            + self.custom_metadata.len()
            + self.data.len()) as u64
    }
}

/// An event proposed by an append.
#[derive(Debug, Clone)]
pub struct Proposed {
    /// Event id.
    pub id: Uuid,
    /// `type` metadata.
    pub event_type: String,
    /// `content-type` metadata.
    pub content_type: String,
    /// User metadata.
    pub custom_metadata: Vec<u8>,
    /// Payload.
    pub data: Vec<u8>,
}

/// The expected state of a stream for an append (KurrentDB's `StreamState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last event number.
    Revision(u64),
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// Written: the stream's last revision, and the `$all` position reported
    /// as the real server does (commit = last record, prepare = first).
    Written {
        revision: u64,
        commit: u64,
        prepare: u64,
    },
    /// An idempotent retry of events already written: nothing written; the
    /// revision of the retried events' last one, and no position (the real
    /// server reports `-1`, i.e. `no_position`).
    Idempotent { revision: u64 },
    /// The stream is not in the expected state (also what a partially
    /// matching retry gets: KurrentDB's "corrupted idempotency").
    WrongExpectedVersion { current: Option<u64> },
}

#[derive(Default)]
struct Committed {
    records: Vec<Arc<Record>>,
    streams: HashMap<String, Vec<usize>>,
}

/// A test hook: the next append to `stream` stops after taking its positions
/// and before becoming visible, until `release` fires.
struct Hold {
    stream: String,
    at_gate: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// The log. Writers are serialised (KurrentDB has one writer thread), and a
/// write becomes visible to readers all at once, in position order.
pub struct Log {
    writer: tokio::sync::Mutex<u64>,
    committed: RwLock<Committed>,
    commits: watch::Sender<usize>,
    holds: Mutex<Vec<Hold>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("records", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

/// .NET ticks since the Unix epoch, now.
fn now_ticks() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_nanos() / 100) as i64
}

impl Log {
    /// A log holding what a fresh node writes before any user event: a few
    /// system events (`$`-prefixed streams and types), so readers of `$all`
    /// must filter them out as on a real server.
    pub fn new() -> Self {
        let system = [
            ("$users", "$UserCreated", r#""admin""#),
            ("$user-admin", "$user", r#"{"loginName":"admin"}"#),
            ("$settings", "$settings", r#"{"$userStreamAcl":{}}"#),
        ];
        let mut committed = Committed::default();
        let mut next = 0;
        for (stream, ty, data) in system {
            let record = Record {
                stream: stream.into(),
                revision: 0,
                position: next,
                id: Uuid::new_v4(),
                event_type: ty.into(),
                content_type: "application/json".into(),
                created_ticks: now_ticks(),
                custom_metadata: Vec::new(),
                data: data.as_bytes().to_vec(),
            };
            next += record.size_on_disk();
            let idx = committed.records.len();
            committed
                .streams
                .entry(stream.into())
                .or_default()
                .push(idx);
            committed.records.push(Arc::new(record));
        }
        let (commits, _) = watch::channel(committed.records.len());
        Self {
            writer: tokio::sync::Mutex::new(next),
            committed: RwLock::new(committed),
            commits,
            holds: Mutex::new(Vec::new()),
        }
    }

    /// Number of committed records.
    pub fn len(&self) -> usize {
        self.read(|c| c.records.len())
    }

    /// Whether the log holds no record at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&Committed) -> T) -> T {
        f(&self.committed.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Announces the committed record count after each write.
    pub fn commits(&self) -> watch::Receiver<usize> {
        self.commits.subscribe()
    }

    /// Holds the next append to `stream` after it has taken its positions and
    /// before it is visible (see [`crate::TestServer::hold_next_append`]).
    pub fn hold_next_append(
        &self,
        stream: &str,
        at_gate: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    ) {
        self.holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Hold {
                stream: stream.into(),
                at_gate,
                release,
            });
    }

    fn take_hold(&self, stream: &str) -> Option<Hold> {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let i = holds.iter().position(|h| h.stream == stream)?;
        Some(holds.remove(i))
    }

    /// Appends following KurrentDB's commit check:
    /// - expected `Revision(e)`/`NoStream` (`e = -1`): writes if the stream's
    ///   last event number is `e`; if it is past `e` and the events after `e`
    ///   carry exactly the proposed ids, it is an idempotent retry; otherwise
    ///   wrong expected version;
    /// - `Any`: if the first proposed id is already in the stream and the
    ///   following ones match it in order, an idempotent retry (a partial
    ///   match is refused); otherwise writes;
    /// - `StreamExists`: writes if the stream has an event.
    pub async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<Proposed>,
    ) -> AppendResult {
        let mut next_position = self.writer.lock().await;
        let check = self.read(|c| check_commit(c, stream, expected, &events));
        let first_revision = match check {
            Check::Write { first_revision } => first_revision,
            Check::Done(result) => return result,
        };
        if events.is_empty() {
            return AppendResult::Idempotent {
                revision: first_revision.saturating_sub(1),
            };
        }
        let created_ticks = now_ticks();
        let mut records = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let record = Record {
                stream: stream.to_owned(),
                revision: first_revision + i as u64,
                position: *next_position,
                id: e.id,
                event_type: e.event_type,
                content_type: e.content_type,
                created_ticks,
                custom_metadata: e.custom_metadata,
                data: e.data,
            };
            *next_position += record.size_on_disk();
            records.push(Arc::new(record));
        }
        if let Some(hold) = self.take_hold(stream) {
            let _ = hold.at_gate.send(());
            let _ = hold.release.await;
        }
        let (first, last) = (records[0].position, records[records.len() - 1].position);
        let revision = records[records.len() - 1].revision;
        let count = {
            let mut c = self.committed.write().unwrap_or_else(|e| e.into_inner());
            for r in records {
                let idx = c.records.len();
                c.streams.entry(stream.to_owned()).or_default().push(idx);
                c.records.push(r);
            }
            c.records.len()
        };
        self.commits.send_replace(count);
        AppendResult::Written {
            revision,
            commit: last,
            prepare: first,
        }
    }

    /// The stream's records from `from` (inclusive) forwards, at most `count`;
    /// `None` if the stream does not exist.
    pub fn stream_forward(
        &self,
        stream: &str,
        from: u64,
        count: usize,
    ) -> Option<Vec<Arc<Record>>> {
        self.read(|c| {
            let idx = c.streams.get(stream)?;
            Some(
                idx.iter()
                    .skip(usize::try_from(from).unwrap_or(usize::MAX))
                    .take(count)
                    .map(|&i| c.records[i].clone())
                    .collect(),
            )
        })
    }

    /// The stream's records from `from` (inclusive; `None` for the end)
    /// backwards, at most `count`; `None` if the stream does not exist.
    pub fn stream_backward(
        &self,
        stream: &str,
        from: Option<u64>,
        count: usize,
    ) -> Option<Vec<Arc<Record>>> {
        self.read(|c| {
            let idx = c.streams.get(stream)?;
            let end = match from {
                Some(r) => idx
                    .len()
                    .min(usize::try_from(r).unwrap_or(usize::MAX).saturating_add(1)),
                None => idx.len(),
            };
            Some(
                idx[..end]
                    .iter()
                    .rev()
                    .take(count)
                    .map(|&i| c.records[i].clone())
                    .collect(),
            )
        })
    }

    /// The stream's last revision, `None` if it does not exist.
    pub fn last_revision(&self, stream: &str) -> Option<u64> {
        self.read(|c| c.streams.get(stream).map(|idx| idx.len() as u64 - 1))
    }

    /// Index of the first record at or after `$all` position `(commit,
    /// prepare)` (records are in position order).
    pub fn index_at_or_after(&self, commit: u64, prepare: u64) -> usize {
        self.read(|c| {
            c.records
                .partition_point(|r| (r.position, r.position) < (commit, prepare))
        })
    }

    /// Index of the first record strictly after `$all` position `(commit,
    /// prepare)`.
    pub fn index_after(&self, commit: u64, prepare: u64) -> usize {
        self.read(|c| {
            c.records
                .partition_point(|r| (r.position, r.position) <= (commit, prepare))
        })
    }

    /// Committed records from index `from`, at most `count`.
    pub fn records_from(&self, from: usize, count: usize) -> Vec<Arc<Record>> {
        self.read(|c| c.records.iter().skip(from).take(count).cloned().collect())
    }

    /// Committed records before index `before`, newest first, at most `count`.
    pub fn records_before(&self, before: usize, count: usize) -> Vec<Arc<Record>> {
        self.read(|c| {
            c.records[..before.min(c.records.len())]
                .iter()
                .rev()
                .take(count)
                .cloned()
                .collect()
        })
    }

    /// Replaces the payload of a stored event in place, as an edit made on
    /// the node's disk would (tamper-evidence tests); `false` if there is no
    /// such event.
    pub fn overwrite_data(&self, stream: &str, revision: u64, data: Vec<u8>) -> bool {
        let mut c = self.committed.write().unwrap_or_else(|e| e.into_inner());
        let Some(&i) = c
            .streams
            .get(stream)
            .and_then(|idx| idx.get(usize::try_from(revision).unwrap_or(usize::MAX)))
        else {
            return false;
        };
        let old = &c.records[i];
        let edited = Record {
            stream: old.stream.clone(),
            revision: old.revision,
            position: old.position,
            id: old.id,
            event_type: old.event_type.clone(),
            content_type: old.content_type.clone(),
            created_ticks: old.created_ticks,
            custom_metadata: old.custom_metadata.clone(),
            data,
        };
        c.records[i] = Arc::new(edited);
        true
    }

    /// Removes the newest record, as a cut made on the node's disk would
    /// (tamper-evidence tests: no hash chain can notice it); `false` if the
    /// log is empty. The writer's next position stays where it was.
    pub fn cut_last(&self) -> bool {
        let mut c = self.committed.write().unwrap_or_else(|e| e.into_inner());
        let Some(last) = c.records.pop() else {
            return false;
        };
        let i = c.records.len();
        if let Some(index) = c.streams.get_mut(&last.stream) {
            index.retain(|&j| j != i);
            if index.is_empty() {
                c.streams.remove(&last.stream);
            }
        }
        true
    }

    /// The `$all` position of the last record (`(0, 0)` if none).
    pub fn last_position(&self) -> u64 {
        self.read(|c| c.records.last().map_or(0, |r| r.position))
    }
}

enum Check {
    Write { first_revision: u64 },
    Done(AppendResult),
}

fn check_commit(c: &Committed, stream: &str, expected: Expected, events: &[Proposed]) -> Check {
    let ids = c.streams.get(stream);
    let current = ids.map(|idx| idx.len() as u64 - 1);
    let next = current.map_or(0, |r| r + 1);
    let wrong = Check::Done(AppendResult::WrongExpectedVersion { current });
    // The events after revision `from - 1` carry exactly the proposed ids, in
    // order: an idempotent retry. A first mismatch is a plain conflict, a
    // later one "corrupted idempotency", which is refused the same way.
    let retry_at = |from: u64| -> Check {
        let Some(idx) = ids else {
            return wrong_of(current);
        };
        for (i, e) in events.iter().enumerate() {
            let stored = idx
                .get(
                    usize::try_from(from)
                        .unwrap_or(usize::MAX)
                        .saturating_add(i),
                )
                .map(|&j| c.records[j].id);
            if stored != Some(e.id) {
                return wrong_of(current);
            }
        }
        Check::Done(AppendResult::Idempotent {
            revision: from + events.len() as u64 - 1,
        })
    };
    match expected {
        Expected::Any => {
            let Some(first) = events.first() else {
                return Check::Write {
                    first_revision: next,
                };
            };
            let found = ids.and_then(|idx| idx.iter().position(|&j| c.records[j].id == first.id));
            match found {
                Some(r) => retry_at(r as u64),
                None => Check::Write {
                    first_revision: next,
                },
            }
        }
        Expected::StreamExists if current.is_some() => Check::Write {
            first_revision: next,
        },
        Expected::StreamExists => wrong,
        Expected::NoStream if current.is_none() => Check::Write { first_revision: 0 },
        Expected::NoStream if events.is_empty() => wrong,
        Expected::NoStream => retry_at(0),
        Expected::Revision(e) if current == Some(e) => Check::Write {
            first_revision: e + 1,
        },
        Expected::Revision(e) if current.is_some_and(|c| e < c) && !events.is_empty() => {
            retry_at(e + 1)
        }
        Expected::Revision(_) => wrong,
    }
}

fn wrong_of(current: Option<u64>) -> Check {
    Check::Done(AppendResult::WrongExpectedVersion { current })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposed(id: Uuid) -> Proposed {
        Proposed {
            id,
            event_type: "t".into(),
            content_type: "application/json".into(),
            custom_metadata: vec![],
            data: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn an_exact_retry_is_idempotent_and_a_partial_one_is_refused() {
        let log = Log::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = log
            .append("s", Expected::NoStream, vec![proposed(a), proposed(b)])
            .await;
        assert!(matches!(first, AppendResult::Written { revision: 1, .. }));
        assert_eq!(
            log.append("s", Expected::NoStream, vec![proposed(a), proposed(b)])
                .await,
            AppendResult::Idempotent { revision: 1 }
        );
        assert_eq!(
            log.append("s", Expected::Any, vec![proposed(a), proposed(b)])
                .await,
            AppendResult::Idempotent { revision: 1 }
        );
        assert_eq!(
            log.append(
                "s",
                Expected::Any,
                vec![proposed(a), proposed(Uuid::new_v4())]
            )
            .await,
            AppendResult::WrongExpectedVersion { current: Some(1) }
        );
        assert_eq!(
            log.append("s", Expected::Revision(5), vec![proposed(Uuid::new_v4())])
                .await,
            AppendResult::WrongExpectedVersion { current: Some(1) }
        );
        assert_eq!(log.last_revision("s"), Some(1));
    }

    #[tokio::test]
    async fn positions_grow_with_every_record_and_readers_start_where_asked() {
        let log = Log::new();
        let system = log.len();
        let AppendResult::Written {
            commit, prepare, ..
        } = log
            .append(
                "s",
                Expected::Any,
                vec![proposed(Uuid::new_v4()), proposed(Uuid::new_v4())],
            )
            .await
        else {
            panic!("written")
        };
        assert!(
            prepare < commit,
            "prepare is the first record, commit the last"
        );
        let all = log.records_from(0, 100);
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(log.index_at_or_after(commit, commit), system + 1);
        assert_eq!(log.index_after(commit, commit), system + 2);
        assert_eq!(log.index_after(prepare, prepare), system + 1);
    }
}
