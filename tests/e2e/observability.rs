//! What operators run against: every metric the dashboards and alerts of
//! `deploy/observability/` use is exported by a running server, and a
//! projector-only process serves the probes and metrics its Kubernetes
//! Deployment (`deploy/k8s/`) relies on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use marketplace_api::config::ServeRole;
use marketplace_api::{Application, Settings};
use marketplace_e2e::{spawn_app, Req};
use serde_json::{json, Value};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Aggregation operators and PromQL keywords: never metric names.
const NOT_METRICS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers, ranges and grouping lists that are neither
/// functions (followed by `(`) nor keywords. Grafana's `$variables` are
/// skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Blank out strings, `{…}` and `[…]`.
    let mut plain = String::new();
    let (mut quote, mut braces, mut brackets) = (None::<char>, 0u32, 0u32);
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            _ if braces > 0 || brackets > 0 => {}
            _ => plain.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            plain.push(' ');
        }
    }
    // Tokens: identifiers (with `$` for Grafana variables) and single
    // punctuation characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in plain.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$' || c == '.' {
            current.push(c);
        } else {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        let next = tokens.get(i + 1).map(String::as_str);
        let grouping = matches!(
            t,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        );
        if grouping && next == Some("(") {
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if next != Some("(")
            && t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && !NOT_METRICS.contains(&t)
        {
            names.insert(t.to_owned());
        }
        i += 1;
    }
    names
}

/// Every `expr` of a Grafana dashboard.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The values of the `expr:` and `seriesQuery:` keys of a YAML file
/// (Prometheus rules, the Prometheus adapter's rules): plain, quoted, or
/// block scalars (`|`, `>`).
fn yaml_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = ["expr:", "seriesQuery:"]
            .iter()
            .find_map(|k| trimmed.strip_prefix(k))
        else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else if let Some(single) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            out.push(single.replace("''", "'"));
        } else if let Some(double) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            out.push(double.replace("\\\"", "\""));
        } else {
            out.push(value.to_owned());
        }
    }
    out
}

/// Every metric name used by the files under `deploy/observability/`, with
/// the file that uses it.
fn used_metrics() -> Vec<(String, String)> {
    let dir = deploy_dir().join("observability");
    let mut used = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        let exprs = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let mut exprs = Vec::new();
                dashboard_exprs(
                    &serde_json::from_str(&text).expect("dashboard JSON"),
                    &mut exprs,
                );
                exprs
            }
            Some("yaml" | "yml") => yaml_exprs(&text),
            _ => continue,
        };
        assert!(!exprs.is_empty(), "{name} has no expressions");
        for expr in exprs {
            for metric in metric_names(&expr) {
                used.push((metric, name.clone()));
            }
        }
    }
    used
}

/// Whether `/metrics` describes `name`: its own `# TYPE`, or a histogram
/// family's `_bucket`, `_sum` or `_count`.
fn exported(page: &str, name: &str) -> bool {
    let described = |family: &str, kind: Option<&str>| {
        page.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_prefix(family))
                .and_then(|rest| rest.strip_prefix(' '))
                .is_some_and(|k| kind.is_none_or(|kind| k == kind))
        })
    };
    described(name, None)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(|family| described(family, Some("histogram")))
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, operation) (rate(marketplace_graphql_request_duration_seconds_bucket{type=~\"query|mutation\"}[$__rate_interval])))\n\
         / on (job) group_left max without (pod) (up{job=\"x\"}) > bool 0.5 or vector(0) unless absent(foo_total offset 5m)",
    );
    let expected: BTreeSet<String> = [
        "marketplace_graphql_request_duration_seconds_bucket",
        "up",
        "foo_total",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
    let yaml = "groups:\n  - rules:\n      - alert: A\n        expr: |\n          max(a_metric)\n            > 3\n        for: 5m\n      - expr: 'b_metric{x=''y''}'\n";
    assert_eq!(
        yaml_exprs(yaml),
        [
            "          max(a_metric)\n            > 3",
            "b_metric{x='y'}"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_use_is_exported() {
    let used = used_metrics();
    let names: BTreeSet<&str> = used.iter().map(|(m, _)| m.as_str()).collect();
    // They cover what operators watch: latency by operation, errors,
    // conflicts and retries, consumer lag and failures, pool saturation.
    for required in [
        "marketplace_graphql_request_duration_seconds_bucket",
        "marketplace_graphql_request_errors_total",
        "marketplace_command_conflicts_total",
        "marketplace_command_retries_total",
        "marketplace_consumer_lag_events",
        "marketplace_consumer_lag_seconds",
        "marketplace_consumer_failed",
        "marketplace_db_pool_connections",
        "marketplace_db_pool_max_connections",
    ] {
        assert!(
            names.contains(required),
            "nothing uses {required}: {names:?}"
        );
    }

    let app = spawn_app().await;
    // Traffic first, so the request and command series exist too.
    let (token, _, consistency) = app.register("watcher@example.com", &["BUYER"]).await;
    let me = app
        .gql(
            "{ me { email } }",
            json!({}),
            Req {
                token: Some(&token),
                consistency: Some(&consistency),
            },
        )
        .await;
    assert_eq!(me.data("me.email"), "watcher@example.com");
    let page = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let missing: Vec<String> = used
        .iter()
        .filter(|(m, _)| !exported(&page, m))
        .map(|(m, file)| format!("{m} (in {file})"))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{page}");
    // The checker itself can tell a missing metric.
    assert!(!exported(&page, "marketplace_no_such_metric"));
    assert!(exported(
        &page,
        "marketplace_graphql_request_duration_seconds_count"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_process_serves_probes_and_metrics_but_no_graphql() {
    // An `all` process leads every consumer; the projector stands by.
    let app = spawn_app().await;
    let settings = Settings {
        role: ServeRole::Projector,
        master_key: app.master_key.clone(),
        ..Settings::for_database(app.db.url.clone())
    };
    let projector = Application::build(settings).await.expect("build");
    let addr = projector.local_addr().expect("the projector listens");
    tokio::spawn(projector.run_until_stopped(std::future::pending()));
    let base = format!("http://{addr}");

    let live = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(live.status().as_u16(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let ready = reqwest::get(format!("{base}/readyz"))
            .await
            .expect("readyz");
        let status = ready.status().as_u16();
        let body: Value = ready.json().await.expect("json");
        if status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let page = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("# TYPE marketplace_consumer_lag_events gauge"),
        "{page}"
    );
    assert!(
        page.contains("marketplace_db_pool_max_connections "),
        "{page}"
    );
    let graphql = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .expect("post");
    assert_eq!(graphql.status().as_u16(), 404, "no API in a projector");
}
