//! GraphQL over HTTP: content negotiation, status codes, GET parameters, and
//! the consistency-token deadline (the npm `graphql-http` audits run the
//! full conformance list from `.ci/run`; these pin what they check).

use std::time::Duration;

use marketplace_e2e::{spawn_app, spawn_app_with};
use serde_json::{json, Value};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

async fn post(base: &str, accept: Option<&str>, body: Value) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&body);
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    answer(req.send().await.expect("send")).await
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.json().await.expect("a JSON body");
    Answer {
        status,
        content_type,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_follow_the_accept_header_and_graphql_over_http_status_codes() {
    let app = spawn_app().await;
    let base = app.base.as_str();
    let ok = json!({ "query": "{ __typename }" });
    let unparsable = json!({ "query": "{" });
    let invalid = json!({ "query": "{ noSuchField }" });

    // application/json only (or */*, or no Accept): answered as such, and
    // GraphQL errors travel with 200.
    for accept in [Some("application/json"), Some("*/*"), None] {
        let a = post(base, accept, ok.clone()).await;
        assert_eq!(a.status, 200);
        assert!(
            a.content_type.starts_with("application/json"),
            "{accept:?}: {}",
            a.content_type
        );
        assert_eq!(a.body["data"]["__typename"], "Query");
    }
    let a = post(base, Some("application/json"), unparsable.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // application/graphql-response+json: request errors are 400s without a
    // data entry; a field error is still a 200 with data.
    let a = post(base, Some(GRAPHQL_RESPONSE_JSON), ok.clone()).await;
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.starts_with(GRAPHQL_RESPONSE_JSON),
        "{}",
        a.content_type
    );
    for bad in [unparsable, invalid] {
        let a = post(base, Some(GRAPHQL_RESPONSE_JSON), bad).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(a.body.get("data").is_none(), "no data entry: {}", a.body);
        assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }
    let a = post(
        base,
        Some(GRAPHQL_RESPONSE_JSON),
        json!({ "query": "{ listing(id: \"not-an-id\") { id } }" }),
    )
    .await;
    assert_eq!(
        a.status, 200,
        "a field error is not a request error: {}",
        a.body
    );
    assert!(a.body.get("data").is_some(), "{}", a.body);
    assert_eq!(a.body["errors"][0]["path"][0], "listing");

    // Both listed: the GraphQL media type wins.
    let a = post(
        base,
        Some("application/json, application/graphql-response+json"),
        ok.clone(),
    )
    .await;
    assert!(a.content_type.starts_with(GRAPHQL_RESPONSE_JSON));

    // Nothing acceptable: 406, coded.
    let a = post(base, Some("text/csv"), ok.clone()).await;
    assert_eq!(a.status, 406);
    assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // A POST that is not JSON: 415, coded, and nothing written.
    let before = app.event_count().await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .header("content-type", "text/plain")
        .body(r#"{"query":"mutation { register(input: {email: \"x@example.com\", password: \"long enough pw\", displayName: \"X\", roles: [BUYER]}) { token } }"}"#)
        .send()
        .await
        .expect("send");
    let a = answer(resp).await;
    assert_eq!(a.status, 415);
    assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert!(
        a.body["errors"][0].get("locations").is_none(),
        "request-level errors point at no location: {}",
        a.body
    );
    assert_eq!(app.event_count().await, before);

    // Every response carries a request id (the one logged with it); a
    // client's own is kept.
    let resp = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&ok)
        .send()
        .await
        .expect("send");
    let id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
    let resp = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .header("x-request-id", "client-chosen-42")
        .json(&ok)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("client-chosen-42")
    );

    // No query at all: 400.
    let a = post(
        base,
        Some("application/json"),
        json!({ "notQuery": "{ __typename }" }),
    )
    .await;
    assert_eq!(a.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_honours_operation_name_variables_and_serves_graphiql_to_browsers() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/graphql", app.base))
        .query(&[
            (
                "query",
                "query A { a: __typename } query B($n: Int) { listings(first: $n) { totalCount } }",
            ),
            ("operationName", "B"),
            ("variables", r#"{"n": 1}"#),
        ])
        .header("accept", "application/json")
        .send()
        .await
        .expect("send");
    let a = answer(resp).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["data"], json!({ "listings": { "totalCount": 0 } }));

    let resp = client
        .get(format!("{}/graphql", app.base))
        .query(&[("query", "{ __typename }"), ("variables", "[1]")])
        .send()
        .await
        .expect("send");
    let a = answer(resp).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    let page = client
        .get(format!("{}/graphql", app.base))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .expect("send");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("graphiql"), "GraphiQL is served to browsers");
    // Self-hosted: every script and style comes from this server.
    assert!(!html.contains("https://"), "nothing from a CDN: {html}");
    for asset in [
        "/graphiql/graphiql.min.js",
        "/graphiql/graphiql.min.css",
        "/graphiql/react.production.min.js",
        "/graphiql/react-dom.production.min.js",
    ] {
        assert!(html.contains(asset), "{asset} referenced");
        let resp = client
            .get(format!("{}{asset}", app.base))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200, "{asset}");
        let body = resp.bytes().await.expect("body");
        assert!(body.len() > 1000, "{asset} has content");
    }
    let missing = client
        .get(format!("{}/graphiql/secrets.txt", app.base))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistency_token_the_read_models_cannot_reach_in_time_is_a_clear_error() {
    let app = spawn_app_with(|s| s.consistency_wait = Duration::from_millis(200)).await;
    // A token past the end of the log cannot be reached, however fast the
    // machine is.
    // (The query reads the catalogue: a token holds up only the read models
    // an operation reads, and `__typename` reads none.)
    let unreachable = (app.head().await + 1_000).to_string();
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .header("x-consistency-token", &unreachable)
        .json(&json!({ "query": "{ listings { totalCount } }" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "CONFLICT",
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().expect("message");
    assert!(message.contains(&unreachable), "{message}");
    // What reads no read model is not held up by it.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .header("x-consistency-token", &unreachable)
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);

    // A reachable token answers, and says so.
    let (_, _, written) = app.register("someone@example.com", &["BUYER"]).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .header("x-consistency-token", &written)
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["extensions"]["consistency"]["reached"], true);
}
