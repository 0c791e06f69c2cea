//! GraphiQL, self-hosted: the page `GET /graphql` serves to browsers, and
//! its scripts and styles under `/graphiql/` (embedded from
//! `crates/api/assets/graphiql/`, see the README there), so the IDE works
//! offline and loads nothing from a CDN.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// The page: GraphiQL over `/graphql`, subscriptions over the same path.
pub fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>Marketplace · GraphiQL</title>
    <link rel="icon" href="data:," />
    <link rel="stylesheet" href="/graphiql/graphiql.min.css" />
    <style>
      body { margin: 0; height: 100vh; }
      #graphiql { height: 100vh; }
    </style>
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <script src="/graphiql/react.production.min.js"></script>
    <script src="/graphiql/react-dom.production.min.js"></script>
    <script src="/graphiql/graphiql.min.js"></script>
    <script>
      const ws = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/graphql";
      const fetcher = GraphiQL.createFetcher({ url: "/graphql", subscriptionUrl: ws });
      ReactDOM.createRoot(document.getElementById("graphiql")).render(
        React.createElement(GraphiQL, {
          fetcher,
          defaultQuery: "# Sign in with the login mutation, then add a header:\n# { \"Authorization\": \"Bearer <token>\" }\n\n{\n  listings(first: 5) {\n    totalCount\n    edges { node { id title price { amount currencyCode } } }\n  }\n}\n",
        }),
      );
    </script>
  </body>
</html>
"##;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "graphiql.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "react.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    },
];

/// `GET /graphiql/{file}`: one of the embedded files, cached for a day.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
            ],
            a.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
