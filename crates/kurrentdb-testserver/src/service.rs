//! The gRPC services over the [`Log`]: `event_store.client.streams.Streams`
//! (Append, Read — stream and `$all`, bounded reads and catch-up
//! subscriptions) and `event_store.client.server_features.ServerFeatures`.
//!
//! Translates wire messages to [`Log`] calls and back; the semantics live in
//! `log.rs`. The list of known differences from a real KurrentDB is in the
//! crate docs.

// `tonic::Status` is what every gRPC handler returns; the helpers here feed
// it straight to the trait methods, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use regex::Regex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::log::{AppendResult, Expected, Log, Proposed, Record};
use crate::proto::event_store::client::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use crate::proto::event_store::client::streams::{
    append_req, append_resp, read_req, read_resp, streams_server::Streams, AppendReq, AppendResp,
    BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq,
    TombstoneResp,
};
use crate::proto::event_store::client::{self as shared, StreamIdentifier};

/// The version `ServerFeatures` reports (a current KurrentDB line).
pub const SERVER_VERSION: &str = "25.0.0";

/// Records a catch-up subscription fetches from the log per step.
const SUBSCRIPTION_PAGE: usize = 256;

/// The `Streams` service.
#[derive(Debug, Clone)]
pub struct StreamsService {
    log: Arc<Log>,
}

impl StreamsService {
    /// Serves `log`.
    pub fn new(log: Arc<Log>) -> Self {
        Self { log }
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;
type BatchStream = Pin<Box<dyn Stream<Item = Result<BatchAppendResp, Status>> + Send>>;

fn invalid(what: &str) -> Status {
    Status::invalid_argument(what.to_owned())
}

fn stream_name(id: Option<StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| invalid("stream_identifier is required"))?;
    String::from_utf8(id.stream_name).map_err(|_| invalid("stream names are UTF-8"))
}

fn uuid_from_wire(id: Option<shared::Uuid>) -> Result<Uuid, Status> {
    use shared::uuid::Value;
    match id.and_then(|u| u.value) {
        Some(Value::Structured(s)) => {
            let hi = (s.most_significant_bits as u64 as u128) << 64;
            let lo = s.least_significant_bits as u64 as u128;
            Ok(Uuid::from_u128(hi | lo))
        }
        Some(Value::String(s)) => Uuid::try_parse(&s).map_err(|_| invalid("malformed event id")),
        None => Err(invalid("an event id is required")),
    }
}

fn uuid_to_wire(id: Uuid, structured: bool) -> shared::Uuid {
    use shared::uuid::{Structured, Value};
    let value = if structured {
        let n = id.as_u128();
        Value::Structured(Structured {
            most_significant_bits: (n >> 64) as u64 as i64,
            least_significant_bits: n as u64 as i64,
        })
    } else {
        Value::String(id.hyphenated().to_string())
    };
    shared::Uuid { value: Some(value) }
}

fn read_event(record: &Record, structured_ids: bool) -> ReadResp {
    use read_resp::read_event::{Position, RecordedEvent};
    let metadata = [
        ("type", record.event_type.clone()),
        ("content-type", record.content_type.clone()),
        ("created", record.created_ticks.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(RecordedEvent {
                id: Some(uuid_to_wire(record.id, structured_ids)),
                stream_identifier: Some(StreamIdentifier {
                    stream_name: record.stream.as_bytes().to_vec(),
                }),
                stream_revision: record.revision,
                prepare_position: record.position,
                commit_position: record.position,
                metadata,
                custom_metadata: record.custom_metadata.clone(),
                data: record.data.clone(),
            }),
            link: None,
            // Since KurrentDB 22.6 stream reads carry the $all position too
            // (events written outside explicit transactions).
            position: Some(Position::CommitPosition(record.position)),
        })),
    }
}

fn timestamp_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

/// A server-side `$all` filter, as `read_req::options::FilterOptions`
/// describes: on the stream name or the event type, by prefixes (any
/// matches) or else by a regular expression (searched, not anchored).
#[derive(Debug, Clone)]
enum Filter {
    None,
    Stream(Matcher),
    EventType(Matcher),
}

#[derive(Debug, Clone)]
enum Matcher {
    Prefixes(Vec<String>),
    Regex(Regex),
}

impl Matcher {
    fn from_expression(e: read_req::options::filter_options::Expression) -> Result<Self, Status> {
        if e.prefix.is_empty() {
            Regex::new(&e.regex)
                .map(Matcher::Regex)
                .map_err(|err| invalid(&format!("invalid filter regex: {err}")))
        } else {
            Ok(Matcher::Prefixes(e.prefix))
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Prefixes(p) => p.iter().any(|p| s.starts_with(p.as_str())),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

impl Filter {
    fn from_options(option: Option<read_req::options::FilterOption>) -> Result<Self, Status> {
        use read_req::options::filter_options::Filter as F;
        use read_req::options::FilterOption;
        match option {
            None | Some(FilterOption::NoFilter(_)) => Ok(Filter::None),
            Some(FilterOption::Filter(f)) => match f.filter {
                Some(F::StreamIdentifier(e)) => Ok(Filter::Stream(Matcher::from_expression(e)?)),
                Some(F::EventType(e)) => Ok(Filter::EventType(Matcher::from_expression(e)?)),
                None => Err(invalid("a filter needs a stream or event type expression")),
            },
        }
    }

    fn allows(&self, r: &Record) -> bool {
        match self {
            Filter::None => true,
            Filter::Stream(m) => m.matches(&r.stream),
            Filter::EventType(m) => m.matches(&r.event_type),
        }
    }

    fn is_some(&self) -> bool {
        !matches!(self, Filter::None)
    }
}

fn bounded(messages: Vec<ReadResp>) -> ReadStream {
    Box::pin(futures::stream::iter(messages.into_iter().map(Ok)))
}

/// Where a `$all` read or subscription starts.
enum AllFrom {
    Start,
    End,
    Position(u64, u64),
}

fn all_from(options: read_req::options::AllOptions) -> Result<AllFrom, Status> {
    use read_req::options::all_options::AllOption;
    match options.all_option {
        Some(AllOption::Start(_)) => Ok(AllFrom::Start),
        Some(AllOption::End(_)) => Ok(AllFrom::End),
        Some(AllOption::Position(p)) => {
            Ok(AllFrom::Position(p.commit_position, p.prepare_position))
        }
        None => Err(invalid("all_option is required")),
    }
}

/// Where a stream read or subscription starts.
enum StreamFrom {
    Start,
    End,
    Revision(u64),
}

fn stream_from(options: &read_req::options::StreamOptions) -> Result<StreamFrom, Status> {
    use read_req::options::stream_options::RevisionOption;
    match options.revision_option {
        Some(RevisionOption::Start(_)) => Ok(StreamFrom::Start),
        Some(RevisionOption::End(_)) => Ok(StreamFrom::End),
        Some(RevisionOption::Revision(r)) => Ok(StreamFrom::Revision(r)),
        None => Err(invalid("revision_option is required")),
    }
}

impl StreamsService {
    fn read_stream(
        &self,
        options: read_req::options::StreamOptions,
        backwards: bool,
        count: usize,
        structured: bool,
    ) -> Result<ReadStream, Status> {
        let from = stream_from(&options)?;
        let name = stream_name(options.stream_identifier)?;
        let records = if backwards {
            let from = match from {
                StreamFrom::Start => Some(0),
                StreamFrom::End => None,
                StreamFrom::Revision(r) => Some(r),
            };
            self.log.stream_backward(&name, from, count)
        } else {
            let from = match from {
                StreamFrom::Start => 0,
                StreamFrom::End => u64::MAX,
                StreamFrom::Revision(r) => r,
            };
            self.log.stream_forward(&name, from, count)
        };
        let messages = match records {
            None => vec![ReadResp {
                content: Some(read_resp::Content::StreamNotFound(
                    read_resp::StreamNotFound {
                        stream_identifier: Some(StreamIdentifier {
                            stream_name: name.into_bytes(),
                        }),
                    },
                )),
            }],
            Some(records) => records.iter().map(|r| read_event(r, structured)).collect(),
        };
        Ok(bounded(messages))
    }

    fn read_all(
        &self,
        from: AllFrom,
        backwards: bool,
        count: usize,
        filter: &Filter,
        structured: bool,
    ) -> ReadStream {
        let len = self.log.len();
        let start = match from {
            AllFrom::Start => 0,
            AllFrom::End => len,
            // Forwards, a read from a position includes the event at it;
            // backwards, it starts just before it.
            AllFrom::Position(c, p) => self.log.index_at_or_after(c, p),
        };
        let mut out = Vec::new();
        if backwards {
            let mut before = start;
            while out.len() < count && before > 0 {
                let page = self.log.records_before(before, SUBSCRIPTION_PAGE);
                before -= page.len();
                out.extend(
                    page.iter()
                        .filter(|r| filter.allows(r))
                        .take(count - out.len())
                        .map(|r| read_event(r, structured)),
                );
            }
        } else {
            let mut from = start;
            loop {
                let page = self.log.records_from(from, SUBSCRIPTION_PAGE);
                if page.is_empty() || out.len() >= count {
                    break;
                }
                from += page.len();
                out.extend(
                    page.iter()
                        .filter(|r| filter.allows(r))
                        .take(count - out.len())
                        .map(|r| read_event(r, structured)),
                );
            }
        }
        bounded(out)
    }

    /// A catch-up subscription to `$all`: confirmation, the stored events
    /// strictly after `from`, a checkpoint (filtered subscriptions) and
    /// `caught_up`, then live events as they commit.
    fn subscribe_all(&self, from: AllFrom, filter: Filter, structured: bool) -> ReadStream {
        let log = self.log.clone();
        let mut cursor = match from {
            AllFrom::Start => 0,
            AllFrom::End => log.len(),
            AllFrom::Position(c, p) => log.index_after(c, p),
        };
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_PAGE);
        tokio::spawn(async move {
            let mut commits = log.commits();
            if tx.send(Ok(confirmation())).await.is_err() {
                return;
            }
            let mut caught_up = false;
            loop {
                let page = log.records_from(cursor, SUBSCRIPTION_PAGE);
                if page.is_empty() {
                    if !caught_up {
                        caught_up = true;
                        let last = log.last_position();
                        if filter.is_some() && tx.send(Ok(checkpoint(last))).await.is_err() {
                            return;
                        }
                        if tx.send(Ok(caught_up_all(last))).await.is_err() {
                            return;
                        }
                    }
                    tokio::select! {
                        changed = commits.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                cursor += page.len();
                for r in page.iter().filter(|r| filter.allows(r)) {
                    if tx.send(Ok(read_event(r, structured))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// A catch-up subscription to one stream, strictly after a revision.
    fn subscribe_stream(
        &self,
        options: read_req::options::StreamOptions,
        structured: bool,
    ) -> Result<ReadStream, Status> {
        let from = stream_from(&options)?;
        let name = stream_name(options.stream_identifier)?;
        let log = self.log.clone();
        let mut next = match from {
            StreamFrom::Start => 0,
            StreamFrom::End => log.last_revision(&name).map_or(0, |r| r + 1),
            StreamFrom::Revision(r) => r + 1,
        };
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_PAGE);
        tokio::spawn(async move {
            let mut commits = log.commits();
            if tx.send(Ok(confirmation())).await.is_err() {
                return;
            }
            let mut caught_up = false;
            loop {
                let page = log
                    .stream_forward(&name, next, SUBSCRIPTION_PAGE)
                    .unwrap_or_default();
                if page.is_empty() {
                    if !caught_up {
                        caught_up = true;
                        let msg = ReadResp {
                            content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
                                timestamp: Some(timestamp_now()),
                                stream_revision: next.checked_sub(1).map(|r| r as i64),
                                position: None,
                            })),
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    tokio::select! {
                        changed = commits.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                next += page.len() as u64;
                for r in &page {
                    if tx.send(Ok(read_event(r, structured))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

fn confirmation() -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Confirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: Uuid::new_v4().to_string(),
            },
        )),
    }
}

fn checkpoint(position: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: position,
            prepare_position: position,
            timestamp: Some(timestamp_now()),
        })),
    }
}

fn caught_up_all(position: u64) -> ReadResp {
    ReadResp {
        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(timestamp_now()),
            stream_revision: None,
            position: Some(read_resp::Position {
                commit_position: position,
                prepare_position: position,
            }),
        })),
    }
}

fn append_response(expected: Expected, result: AppendResult) -> AppendResp {
    use append_resp::{success, wrong_expected_version as wev, Result as R};
    let empty = shared::Empty {};
    let result = match result {
        AppendResult::Written {
            revision,
            commit,
            prepare,
        } => R::Success(append_resp::Success {
            current_revision_option: Some(success::CurrentRevisionOption::CurrentRevision(
                revision,
            )),
            position_option: Some(success::PositionOption::Position(append_resp::Position {
                commit_position: commit,
                prepare_position: prepare,
            })),
        }),
        AppendResult::Idempotent { revision } => R::Success(append_resp::Success {
            current_revision_option: Some(success::CurrentRevisionOption::CurrentRevision(
                revision,
            )),
            position_option: Some(success::PositionOption::NoPosition(empty)),
        }),
        AppendResult::WrongExpectedVersion { current } => {
            let (current_option, current_option_2060) = match current {
                Some(r) => (
                    wev::CurrentRevisionOption::CurrentRevision(r),
                    wev::CurrentRevisionOption2060::CurrentRevision2060(r),
                ),
                None => (
                    wev::CurrentRevisionOption::CurrentNoStream(shared::Empty {}),
                    wev::CurrentRevisionOption2060::NoStream2060(shared::Empty {}),
                ),
            };
            let (expected_option, expected_option_2060) = match expected {
                Expected::Any => (
                    wev::ExpectedRevisionOption::ExpectedAny(shared::Empty {}),
                    wev::ExpectedRevisionOption2060::Any2060(shared::Empty {}),
                ),
                Expected::StreamExists => (
                    wev::ExpectedRevisionOption::ExpectedStreamExists(shared::Empty {}),
                    wev::ExpectedRevisionOption2060::StreamExists2060(shared::Empty {}),
                ),
                Expected::NoStream => (
                    wev::ExpectedRevisionOption::ExpectedNoStream(shared::Empty {}),
                    wev::ExpectedRevisionOption2060::ExpectedRevision2060(u64::MAX),
                ),
                Expected::Revision(r) => (
                    wev::ExpectedRevisionOption::ExpectedRevision(r),
                    wev::ExpectedRevisionOption2060::ExpectedRevision2060(r),
                ),
            };
            R::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(current_option_2060),
                expected_revision_option_20_6_0: Some(expected_option_2060),
                current_revision_option: Some(current_option),
                expected_revision_option: Some(expected_option),
            })
        }
    };
    AppendResp {
        result: Some(result),
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReadStream;
    type BatchAppendStream = BatchStream;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<ReadStream>, Status> {
        use read_req::options::{uuid_option, CountOption, StreamOption};
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("options are required"))?;
        let structured = matches!(
            options
                .uuid_option
                .as_ref()
                .and_then(|u| u.content.as_ref()),
            Some(uuid_option::Content::Structured(_))
        );
        let backwards =
            options.read_direction == read_req::options::ReadDirection::Backwards as i32;
        let filter = Filter::from_options(options.filter_option)?;
        let stream = match (options.stream_option, options.count_option) {
            (Some(StreamOption::Stream(s)), Some(CountOption::Count(n))) => self.read_stream(
                s,
                backwards,
                usize::try_from(n).unwrap_or(usize::MAX),
                structured,
            )?,
            (Some(StreamOption::All(a)), Some(CountOption::Count(n))) => self.read_all(
                all_from(a)?,
                backwards,
                usize::try_from(n).unwrap_or(usize::MAX),
                &filter,
                structured,
            ),
            (Some(StreamOption::Stream(s)), Some(CountOption::Subscription(_))) => {
                self.subscribe_stream(s, structured)?
            }
            (Some(StreamOption::All(a)), Some(CountOption::Subscription(_))) => {
                self.subscribe_all(all_from(a)?, filter, structured)
            }
            _ => return Err(invalid("stream_option and count_option are required")),
        };
        Ok(Response::new(stream))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        use append_req::options::ExpectedStreamRevision as E;
        let mut messages = request.into_inner();
        let options = match messages.message().await?.and_then(|m| m.content) {
            Some(append_req::Content::Options(o)) => o,
            _ => return Err(invalid("an append starts with its options")),
        };
        let stream = stream_name(options.stream_identifier)?;
        let expected = match options.expected_stream_revision {
            Some(E::Revision(r)) => Expected::Revision(r),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::Any(_)) => Expected::Any,
            Some(E::StreamExists(_)) => Expected::StreamExists,
            None => return Err(invalid("expected_stream_revision is required")),
        };
        let mut events = Vec::new();
        while let Some(message) = messages.message().await? {
            let Some(append_req::Content::ProposedMessage(m)) = message.content else {
                return Err(invalid("options may only come first"));
            };
            let required = |key: &str| {
                m.metadata.get(key).cloned().ok_or_else(|| {
                    invalid(&format!("Required Metadata Property '{key}' is missing"))
                })
            };
            events.push(Proposed {
                id: uuid_from_wire(m.id.clone())?,
                event_type: required("type")?,
                content_type: required("content-type")?,
                custom_metadata: m.custom_metadata,
                data: m.data,
            });
        }
        let result = self.log.append(&stream, expected, events).await;
        Ok(Response::new(append_response(expected, result)))
    }

    async fn delete(&self, _: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(Status::unimplemented(
            "the test server does not delete streams",
        ))
    }

    async fn tombstone(&self, _: Request<TombstoneReq>) -> Result<Response<TombstoneResp>, Status> {
        Err(Status::unimplemented(
            "the test server does not tombstone streams",
        ))
    }

    async fn batch_append(
        &self,
        _: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<BatchStream>, Status> {
        Err(Status::unimplemented(
            "the test server does not implement BatchAppend (it does not advertise it)",
        ))
    }
}

/// The `ServerFeatures` service: the version, and the methods implemented
/// here (so the client never tries batch append or persistent subscriptions).
#[derive(Debug, Clone, Default)]
pub struct FeaturesService;

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let method = |service: &str, name: &str, features: &[&str]| SupportedMethod {
            method_name: name.into(),
            service_name: service.into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
        };
        let streams = "event_store.client.streams.streams";
        Ok(Response::new(SupportedMethods {
            methods: vec![
                method(streams, "read", &["all", "stream", "position"]),
                method(streams, "append", &[]),
                method(
                    "event_store.client.server_features.serverfeatures",
                    "getsupportedmethods",
                    &[],
                ),
            ],
            event_store_server_version: SERVER_VERSION.into(),
        }))
    }
}
