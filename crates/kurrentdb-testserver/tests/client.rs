//! The test server through the official `kurrentdb` client over a real
//! socket: what the client sees must be what a KurrentDB node answers.

use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, CurrentRevision, EventData, ReadAllOptions, ReadStreamOptions,
    StreamState, SubscribeToAllOptions, SubscriptionEvent, SubscriptionFilter,
};
use serde_json::json;
use uuid::Uuid;

trait LastPosition {
    fn position_of_last(&self) -> kurrentdb::Position;
}

impl LastPosition for kurrentdb::WriteResult {
    /// KurrentDB reports the last event's position as the commit position.
    fn position_of_last(&self) -> kurrentdb::Position {
        kurrentdb::Position {
            commit: self.position.commit,
            prepare: self.position.commit,
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(10);

fn event(n: u32) -> EventData {
    EventData::json("test.happened", &json!({ "n": n }))
        .expect("json")
        .id(Uuid::new_v4())
}

async fn read_stream(
    client: &kurrentdb::Client,
    stream: &str,
) -> kurrentdb::Result<Vec<kurrentdb::RecordedEvent>> {
    let mut read = client
        .read_stream(stream, &ReadStreamOptions::default().max_count(1000))
        .await?;
    let mut out = Vec::new();
    while let Some(e) = read.next().await? {
        out.push(e.event.expect("a recorded event"));
    }
    Ok(out)
}

#[tokio::test]
async fn appends_with_stream_states_and_reports_wrong_expected_versions() {
    let server = kurrentdb_testserver::spawn().await.expect("spawn");
    let client = server.client();
    let stream = format!("order-{}", Uuid::new_v4());
    let written = client
        .append_to_stream(
            stream.as_str(),
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            vec![event(1), event(2)],
        )
        .await
        .expect("append");
    assert_eq!(written.next_expected_version, 1);
    let err = client
        .append_to_stream(
            stream.as_str(),
            &AppendToStreamOptions::default().stream_state(StreamState::StreamRevision(7)),
            vec![event(3)],
        )
        .await
        .expect_err("wrong expected version");
    match err {
        kurrentdb::Error::WrongExpectedVersion { expected, current } => {
            assert_eq!(expected, StreamState::StreamRevision(7));
            assert_eq!(current, CurrentRevision::Current(1));
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    let events = read_stream(&client, &stream).await.expect("read");
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].position.commit, written.position.commit);
    assert!(events[0].position.commit < events[1].position.commit);
    assert_eq!(events[0].position.commit, events[0].position.prepare);
    assert_eq!(events[0].event_type, "test.happened");
    assert!(matches!(
        read_stream(&client, &format!("order-{}", Uuid::new_v4())).await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));
}

#[tokio::test]
async fn reads_and_subscribes_to_all_with_a_filter_and_signals_caught_up() {
    let server = kurrentdb_testserver::spawn().await.expect("spawn");
    let client = server.client();
    let stream = format!("order-{}", Uuid::new_v4());
    let first = client
        .append_to_stream(
            stream.as_str(),
            &AppendToStreamOptions::default(),
            vec![event(1)],
        )
        .await
        .expect("append");
    let filter = SubscriptionFilter::on_stream_name().add_prefix("order-");
    let mut read = client
        .read_all(
            &ReadAllOptions::default()
                .filter(filter.clone())
                .max_count(10),
        )
        .await
        .expect("read_all");
    let mut seen = Vec::new();
    while let Some(e) = read.next().await.expect("next") {
        seen.push(e.get_original_event().position);
    }
    assert_eq!(seen, vec![first.position_of_last()]);

    let mut sub = client
        .subscribe_to_all(&SubscribeToAllOptions::default().filter(filter))
        .await;
    let mut delivered = Vec::new();
    let mut caught_up = false;
    while !caught_up || delivered.len() < 2 {
        if caught_up && delivered.len() == 1 {
            client
                .append_to_stream(
                    stream.as_str(),
                    &AppendToStreamOptions::default(),
                    vec![event(2)],
                )
                .await
                .expect("live append");
        }
        match tokio::time::timeout(DEADLINE, sub.next_subscription_event())
            .await
            .expect("in time")
            .expect("subscription")
        {
            SubscriptionEvent::EventAppeared(e) => delivered.push(e.get_original_event().revision),
            SubscriptionEvent::CaughtUp(_) => caught_up = true,
            _ => {}
        }
    }
    assert_eq!(delivered, vec![0, 1]);
}
