#!/usr/bin/env bash
# Runs the third-party client checks against a real, running marketplace:
#
#   - the `graphql-http` server audits (all MUST and SHOULD audits) and the
#     `graphql-ws` reference client (audit.mjs);
#   - introspection by the reference implementations: graphql-js
#     (introspect.mjs) and graphql-core (introspect.py) send their standard
#     introspection query, default and with every option GraphiQL uses, and
#     build a client schema from the answer (it must have Query.listings);
#   - GraphiQL in headless Chromium (graphiql.mjs): the schema loads, the
#     documentation explorer shows Query.listings, a query typed into the
#     editor runs;
#   - a property-based fuzzer (fuzz.py: hypothesis-graphql + hypothesis)
#     sending thousands of generated queries, mutations and invalid
#     operations as a BUYER, a SELLER and an ADMIN: no HTTP 5xx, no
#     INTERNAL, no error without a contract code. It prints its seed;
#     FUZZ_SEED=N replays a run, FUZZ_EXAMPLES / FUZZ_NEGATIVE size it.
#     By hand the seed is random; under CI=true it is derived from the
#     commit, so CI repeats what the author ran for that commit, and each
#     new commit still explores new operations.
#
# Called by .ci/run after `cargo test`; run it by hand the same way:
#   bash conformance/run.sh
#
# It installs what it needs when it is missing, so it runs on a fresh
# machine: Node.js and Debian's `chromium` with apt-get (as root; non-root
# machines must have them), the npm packages (npm ci, conformance/
# node_modules) and the Python packages of conformance/requirements.txt in
# a venv outside the clone ($CONFORMANCE_VENV, default
# ~/.cache/marketplace-conformance-venv, reused while requirements.txt is
# unchanged). SKIP_GRAPHIQL=1 skips the browser check; CHROMIUM=/path picks
# the browser.
#
# It starts `marketplace serve` (debug build) on a private embedded
# PostgreSQL in a temporary directory and a free port, with the rate limits
# lifted, waits (with a deadline) until it is ready, runs every check (a
# failing check does not stop the others), prints how long each step took,
# stops the server whatever happens, and exits non-zero if any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CONFORMANCE_VENV:-$HOME/.cache/marketplace-conformance-venv}"
export DEBIAN_FRONTEND=noninteractive

timings=()
failed=()
step_name=""
step_started=0
# `step NAME`: prints the `== NAME` header and times the step until the next.
step() {
  end_step
  step_name="$1"
  step_started=$(date +%s)
  echo "== $step_name"
}
end_step() {
  if [[ -n "$step_name" ]]; then
    timings+=("$(printf '%5d s  %s' $(($(date +%s) - step_started)) "$step_name")")
  fi
  step_name=""
}
# `check CMD...`: runs a check against the server; a failure is recorded and
# reported at the end, and the other checks still run.
check() {
  if ! "$@"; then
    echo "conformance: FAILED: $step_name" >&2
    failed+=("$step_name")
  fi
}

apt_updated=""
# `apt_install PACKAGE...`: installs Debian packages (needs root, no prompt).
apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "conformance: $* is needed and missing; install it (Debian: apt-get install $*)" >&2
    return 1
  fi
  if [[ -z "$apt_updated" ]]; then
    apt-get update -q
    apt_updated=1
  fi
  apt-get install -y -q --no-install-recommends "$@"
}

step "tools: Node.js, Chromium, Python"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "Node.js is missing: installing Debian's nodejs and npm"
  apt_install nodejs npm
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
  { echo "conformance: Node.js 18+ is required, found $(node --version)" >&2; exit 1; }
echo "node $(node --version), npm $(npm --version)"
chromium=""
if [[ "${SKIP_GRAPHIQL:-}" != 1 ]]; then
  chromium="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
  if [[ -z "$chromium" ]]; then
    echo "Chromium is missing: installing Debian's chromium"
    apt_install chromium
    chromium="$(command -v chromium)"
  fi
  echo "$("$chromium" --version 2>/dev/null || echo chromium) at $chromium"
fi
command -v python3 >/dev/null || { echo "Python 3 is missing: installing Debian's python3"; apt_install python3; }
echo "$(python3 --version) at $(command -v python3)"

step "npm ci (conformance/)"
npm ci --prefix conformance --no-audit --no-fund --loglevel=error

step "Python venv ($venv) with conformance/requirements.txt"
if [[ -x "$venv/bin/python" ]] && ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  echo "the venv's Python no longer runs: making it anew"
  rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv"; then
    # Debian's python3 keeps venv (ensurepip) in a package of its own.
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
fi
wanted="$(sha256sum conformance/requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$wanted" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r conformance/requirements.txt
  echo "installed: $("$venv/bin/python" -m pip freeze | tr "\n" " ")"
  echo "$wanted" >"$venv/.requirements.sha256"
else
  echo "requirements.txt unchanged: reusing the venv"
fi
python="$venv/bin/python"

step "cargo build (the marketplace binary)"
cargo build -p marketplace-cli --bin marketplace
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

step "starting marketplace serve"
# The audits send dozens of anonymous requests in a burst and the fuzzer
# thousands of signed-in ones, failed logins among them: lift the per-IP,
# per-account and failed-login limits for this run (the limits have their
# own tests; a RATE_LIMITED answer would still pass the fuzzer, it carries
# a code).
"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
  --rate-limit-anon-burst 1000000 --rate-limit-anon-per-sec 100000 \
  --rate-limit-account-burst 1000000 --rate-limit-account-per-sec 100000 \
  --login-per-email-burst 1000000 --login-per-email-per-sec 100000 \
  --login-per-client-burst 1000000 --login-per-client-per-sec 100000 \
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
echo "serving $url"

step "audits against $url"
check node conformance/audit.mjs "$url" --strict

step "introspection by graphql-js"
check node conformance/introspect.mjs "$url"

step "introspection by graphql-core"
check "$python" conformance/introspect.py "$url"

if [[ "${SKIP_GRAPHIQL:-}" == 1 ]]; then
  step "GraphiQL browser check skipped (SKIP_GRAPHIQL=1)"
else
  step "GraphiQL in headless Chromium ($chromium)"
  check env CHROMIUM="$chromium" node conformance/graphiql.mjs "$url"
fi

step "property-based fuzzer (hypothesis-graphql) as BUYER, SELLER and ADMIN"
# ADMIN is granted only from the operator's side: create one on the
# server's own cluster (the command reuses the running one).
admin_email="conformance-admin@example.com"
admin_password="conformance-admin-password"
MARKETPLACE_ADMIN_PASSWORD="$admin_password" \
  "$bin" accounts create-admin --email "$admin_email" --data-dir "$work/data" >/dev/null 2>"$work/admin.stderr" ||
  { tail -n 20 "$work/admin.stderr" >&2; exit 1; }
if [[ -z "${FUZZ_SEED:-}" && "${CI:-}" == true ]] && commit="$(git rev-parse --short=7 HEAD 2>/dev/null)"; then
  export FUZZ_SEED=$(( 16#$commit ))
fi
check env FUZZ_ADMIN="$admin_email:$admin_password" "$python" conformance/fuzz.py "$url"
end_step

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "conformance: the server died during the checks:" >&2
  tail -n 40 "$work/stderr" >&2
  failed+=("the server stayed up")
fi

echo "== time taken"
printf '%s\n' "${timings[@]}"
if (( ${#failed[@]} )); then
  echo "== FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "== every conformance check passed"
