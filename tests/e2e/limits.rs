//! Each request limit (rate, depth, complexity, body size) triggers with the
//! contract's error code.

use marketplace_api::ratelimit::{Limit, RateLimits};
use marketplace_e2e::{spawn_app, spawn_app_with, Req, TestApp};
use serde_json::{json, Value};

/// POSTs `body` to `/graphql` with an optional bearer token; returns the
/// status, the `Retry-After` header and the JSON body.
async fn post(app: &TestApp, token: Option<&str>, body: &Value) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry_after, resp.json().await.expect("json body"))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error with a code, got {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_client_and_answer_rate_limited_with_a_retry_hint() {
    // Refill so slowly that nothing comes back during the test.
    let app = spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            account: Limit {
                burst: 3,
                per_sec: 0.01,
            },
            anonymous: Limit {
                burst: 4,
                per_sec: 0.01,
            },
            ..RateLimits::DISABLED
        }
    })
    .await;
    // Two anonymous calls: the registrations.
    let (alice, _, _) = app.register("alice@example.com", &[]).await;
    let (bob, _, bob_registered) = app.register("bob@example.com", &[]).await;
    let ping = json!({ "query": "{ __typename }" });

    for _ in 0..2 {
        let (status, _, body) = post(&app, None, &ping).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["__typename"], "Query");
    }
    let (status, retry_after, body) = post(&app, None, &ping).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(code(&body), "RATE_LIMITED");
    assert_eq!(
        body["errors"][0]["message"],
        "too many requests; retry later"
    );
    let hint = body["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .expect("retryAfterSeconds");
    assert!((1..=100).contains(&hint), "{hint}");
    assert_eq!(retry_after.as_deref(), Some(hint.to_string().as_str()));
    // GET is limited too.
    let get = reqwest::get(format!("{}/graphql?query=%7B__typename%7D", app.base))
        .await
        .expect("get");
    assert_eq!(get.status().as_u16(), 429);
    // An invalid token does not escape the anonymous limit.
    let (status, _, body) = post(&app, Some("not.a.token"), &ping).await;
    assert_eq!((status, code(&body)), (429, "RATE_LIMITED"));

    // Accounts have their own buckets, untouched by the anonymous one.
    for _ in 0..3 {
        let (status, _, body) = post(&app, Some(&alice), &ping).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = post(&app, Some(&alice), &ping).await;
    assert_eq!((status, code(&body)), (429, "RATE_LIMITED"));
    assert!(retry_after.is_some());
    let r = app
        .gql(
            "{ me { email } }",
            json!({}),
            Req {
                token: Some(&bob),
                consistency: Some(&bob_registered),
            },
        )
        .await;
    assert_eq!(r.data("me.email"), "bob@example.com");

    // Operational endpoints are never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = reqwest::get(format!("{}{path}", app.base))
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_too_complex_and_too_large_requests_are_bad_user_input() {
    let app = spawn_app().await;

    // Depth: 13 levels, over the limit of 12 (refused before the fields are
    // even looked up).
    let deep = format!("{{ {} x {} }}", "a { ".repeat(12), "}".repeat(12));
    let r = app.gql(&deep, json!({}), Req::default()).await;
    assert_eq!(r.error_code(), "BAD_USER_INPUT", "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nested too deep")),
        "{}",
        r.body
    );
    assert!(r.body["data"].is_null(), "{}", r.body);
    // Introspection is never refused by depth: 14 levels of type references.
    let introspection = format!(
        "{{ __type(name: \"Query\") {{ fields {{ type {{ {} name {} }} }} }} }}",
        "ofType { ".repeat(10),
        "}".repeat(10)
    );
    let r = app.gql(&introspection, json!({}), Req::default()).await;
    assert!(r.body.get("errors").is_none(), "{}", r.body);
    assert!(
        r.body["data"]["__type"]["fields"][0]["type"].is_object(),
        "{}",
        r.body
    );

    // Root fields: 21 aliases, over the cap of 20.
    let wide: String = std::iter::once("{".to_owned())
        .chain((0..21).map(|i| format!(" a{i}: me {{ id }}")))
        .chain(std::iter::once(" }".to_owned()))
        .collect();
    let r = app.gql(&wide, json!({}), Req::default()).await;
    assert_eq!(r.error_code(), "BAD_USER_INPUT", "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 20 root fields")),
        "{}",
        r.body
    );

    // Complexity: twenty 100-row pages, each row selecting a page of its
    // own under it, are far over 25,000.
    let complex: String = std::iter::once("{".to_owned())
        .chain((0..20).map(|i| {
            format!(" a{i}: myOrders(first: 100) {{ edges {{ node {{ lines {{ quantity listing {{ id title }} }} }} }} }}")
        }))
        .chain(std::iter::once(" }".to_owned()))
        .collect();
    let r = app.gql(&complex, json!({}), Req::default()).await;
    assert_eq!(r.error_code(), "BAD_USER_INPUT", "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too complex")),
        "{}",
        r.body
    );

    // Body size: over 64 KiB is refused before it is parsed.
    let huge = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(65 * 1024) } });
    let (status, _, body) = post(&app, None, &huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "BAD_USER_INPUT");
    // Just under it is fine.
    let fits = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(60 * 1024) } });
    let (status, _, body) = post(&app, None, &fits).await;
    assert_eq!(status, 200, "{body}");

    // A body that is not a GraphQL request is a coded error too.
    let resp = reqwest::Client::new()
        .post(format!("{}/graphql", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(code(&body), "BAD_USER_INPUT");
}

/// POSTs an anonymous `{ __typename }` from the loopback address `from`,
/// with `X-Forwarded-For: forwarded` if given; returns the status.
async fn ping_from(app: &TestApp, from: [u8; 4], forwarded: Option<&str>) -> u16 {
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .expect("client");
    let mut req = client
        .post(format!("{}/graphql", app.base))
        .json(&json!({ "query": "{ __typename }" }));
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json body");
    match status {
        200 => assert_eq!(body["data"]["__typename"], "Query", "{body}"),
        429 => assert_eq!(code(&body), "RATE_LIMITED"),
        other => panic!("unexpected status {other}: {body}"),
    }
    status
}

/// Anonymous limits of two requests, refilling too slowly to matter, with
/// 127.0.0.2 as the only trusted proxy.
async fn app_behind_a_proxy_at_127_0_0_2() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limits = RateLimits {
            anonymous: Limit {
                burst: 2,
                per_sec: 0.01,
            },
            ..RateLimits::DISABLED
        };
        s.trusted_proxies =
            marketplace_api::proxy::TrustedProxies::new(vec![marketplace_api::proxy::Cidr::parse(
                "127.0.0.2/32",
            )
            .expect("a CIDR")]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_behind_a_trusted_proxy_get_buckets_of_their_own() {
    let app = app_behind_a_proxy_at_127_0_0_2().await;
    const PROXY: [u8; 4] = [127, 0, 0, 2];
    for _ in 0..2 {
        assert_eq!(ping_from(&app, PROXY, Some("203.0.113.1")).await, 200);
    }
    assert_eq!(ping_from(&app, PROXY, Some("203.0.113.1")).await, 429);
    // Another shopper through the same proxy is not held up…
    assert_eq!(ping_from(&app, PROXY, Some("203.0.113.2")).await, 200);
    // …and the first cannot escape by prepending an address of its own:
    // the proxy appended the real one, the right-most untrusted entry.
    assert_eq!(
        ping_from(&app, PROXY, Some("198.51.100.77, 203.0.113.1")).await,
        429
    );
    // The proxy's own address has a bucket of its own, untouched so far.
    assert_eq!(ping_from(&app, PROXY, None).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let app = app_behind_a_proxy_at_127_0_0_2().await;
    const STRANGER: [u8; 4] = [127, 0, 0, 3];
    // A caller that is not a trusted proxy names a new address every time:
    // every request is still counted against its own.
    assert_eq!(ping_from(&app, STRANGER, Some("203.0.113.10")).await, 200);
    assert_eq!(ping_from(&app, STRANGER, Some("203.0.113.11")).await, 200);
    assert_eq!(ping_from(&app, STRANGER, Some("203.0.113.12")).await, 429);
    assert_eq!(ping_from(&app, STRANGER, None).await, 429);
    // The addresses it claimed were never charged: through the real proxy
    // they still have their full buckets.
    for _ in 0..2 {
        assert_eq!(
            ping_from(&app, [127, 0, 0, 2], Some("203.0.113.10")).await,
            200
        );
    }
}
