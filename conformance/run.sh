#!/usr/bin/env bash
# Runs the third-party client checks against a real, running marketplace:
# the `graphql-http` server audits (all MUST and SHOULD audits), the
# `graphql-ws` reference client, and GraphiQL in headless Chromium (a query
# typed into the editor and run). Called by .ci/run after `cargo test`;
# run it by hand the same way:  bash conformance/run.sh
#
# It starts `marketplace serve` (debug build) on a private embedded
# PostgreSQL in a temporary directory and a free port, waits (with a
# deadline) until it is ready, runs conformance/audit.mjs --strict and
# conformance/graphiql.mjs, and stops the server, whatever happens.
#
# Needs Node.js 18+ and Debian's `chromium` (apt-get install chromium);
# SKIP_GRAPHIQL=1 skips the browser check on machines without it.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null || { echo "conformance: Node.js 18+ is required (Debian: apt-get install nodejs npm)" >&2; exit 1; }
chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [[ -z "$chromium" && "${SKIP_GRAPHIQL:-}" != 1 ]]; then
  echo "conformance: the GraphiQL check needs Chromium: apt-get install chromium (or set SKIP_GRAPHIQL=1)" >&2
  exit 1
fi

echo "== npm ci (conformance/)"
npm ci --prefix conformance --no-audit --no-fund --loglevel=error

echo "== cargo build (the marketplace binary)"
cargo build -p marketplace-api --bin marketplace
bin="${CARGO_TARGET_DIR:-target}/debug/marketplace"

# The embedded cluster runs as an unprivileged user: its directory must be
# reachable by that user, so not under a 0700 home directory.
work="$(mktemp -d /tmp/marketplace-conformance.XXXXXX)"
chmod 755 "$work"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting marketplace serve"
# The audits send dozens of anonymous requests in a burst: lift the
# anonymous rate limit for this run (the limits have their own tests).
"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --rate-limit-anon-burst 100000 --rate-limit-anon-per-sec 10000 \
  >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

url=""
deadline=$((SECONDS + 180))
while [[ -z "$url" ]]; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "conformance: the server exited during start-up:" >&2
    tail -n 40 "$work/stderr" >&2
    exit 1
  fi
  if (( SECONDS > deadline )); then
    echo "conformance: the server did not start within 180 s" >&2
    tail -n 40 "$work/stderr" >&2
    exit 1
  fi
  url="$(grep -o 'http://[0-9.:]*/graphql' "$work/stdout" | head -n 1 || true)"
  [[ -n "$url" ]] || sleep 0.2
done
base="${url%/graphql}"
until curl -sf "$base/readyz" >/dev/null; do
  if (( SECONDS > deadline )); then
    echo "conformance: $base/readyz did not answer 200 within 180 s" >&2
    tail -n 40 "$work/stderr" >&2
    exit 1
  fi
  sleep 0.2
done

echo "== audits against $url"
node conformance/audit.mjs "$url" --strict

if [[ "${SKIP_GRAPHIQL:-}" == 1 ]]; then
  echo "== GraphiQL browser check skipped (SKIP_GRAPHIQL=1)"
else
  echo "== GraphiQL in headless Chromium ($chromium)"
  CHROMIUM="$chromium" node conformance/graphiql.mjs "$url"
fi
