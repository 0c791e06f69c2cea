"""Checks of the rendered Kubernetes manifests that schemas cannot make.

Usage: check_manifests.py CLI_SOURCE RENDERED.yaml...

For every rendered kustomization (base, each overlay):
  - only built-in kinds (no custom resources, so no CRDs are needed);
  - each Deployment runs `serve --role api|projector`, rolls with
    RollingUpdate, probes /readyz (readiness) and /healthz (liveness) on
    its container port, has a PodDisruptionBudget and an HPA that select
    or target it;
  - every environment variable it sets, from a ConfigMap or directly, is
    one that `marketplace` reads (an `env = "…"` of the CLI source, or one
    of the few read elsewhere), so a renamed flag cannot leave a manifest
    silently setting nothing;
  - the API sets MARKETPLACE_TRUSTED_PROXIES;
  - no Secret is rendered (they are created out of band);
  - the kurrentdb overlay takes MARKETPLACE_EVENT_STORE from a Secret.
"""

import re
import sys

import yaml

BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2"}
# Read by the server outside clap: the log filter, and the standard
# OpenTelemetry variables (crates/api/src/telemetry.rs, TracingSettings).
READ_ELSEWHERE = {
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_BSP_SCHEDULE_DELAY",
}


def fail(msg):
    print(f"check_manifests: {msg}", file=sys.stderr)
    sys.exit(1)


def env_names_of(cli_source):
    names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', cli_source))
    if "DATABASE_URL" not in names or "MARKETPLACE_LISTEN" not in names:
        fail("could not read the CLI's environment variables")
    return names | READ_ELSEWHERE


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check(path, docs, known_env):
    by_kind = {}
    for d in docs:
        if d.get("apiVersion") not in BUILTIN_GROUPS:
            fail(f"{path}: {d.get('kind')} {d.get('apiVersion')} is not a built-in kind")
        by_kind.setdefault(d["kind"], []).append(d)
    if by_kind.get("Secret"):
        fail(f"{path}: renders a Secret; secrets are created out of band")
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    roles = set()
    for dep in deployments:
        name = dep["metadata"]["name"]
        spec = dep["spec"]
        if spec.get("strategy", {}).get("type") != "RollingUpdate":
            fail(f"{path}: {name} does not roll with RollingUpdate")
        pod = spec["template"]
        if not matches(spec["selector"], pod["metadata"]["labels"]):
            fail(f"{path}: {name}'s selector does not select its pods")
        (container,) = pod["spec"]["containers"]
        args = container.get("args", [])
        if args[:2] != ["serve", "--role"] or args[2] not in ("api", "projector"):
            fail(f"{path}: {name} does not run `serve --role api|projector`: {args}")
        role = args[2]
        roles.add(role)
        ports = {p["name"] for p in container.get("ports", [])}
        for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != want or get.get("port") not in ports:
                fail(f"{path}: {name}'s {probe} is not GET {want} on a container port")
        env = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref:
                if ref["name"] not in configmaps:
                    fail(f"{path}: {name} reads ConfigMap {ref['name']}, which is not rendered")
                env.update(configmaps[ref["name"]])
        for var in container.get("env", []):
            env[var["name"]] = var.get("value", var.get("valueFrom"))
        unknown = sorted(set(env) - known_env)
        if unknown:
            fail(f"{path}: {name} sets variables marketplace does not read: {unknown}")
        if role == "api" and not env.get("MARKETPLACE_TRUSTED_PROXIES"):
            fail(f"{path}: {name} does not set MARKETPLACE_TRUSTED_PROXIES")
        if "kurrentdb" in path:
            source = env.get("MARKETPLACE_EVENT_STORE")
            if not (isinstance(source, dict) and "secretKeyRef" in source):
                fail(f"{path}: {name} does not take MARKETPLACE_EVENT_STORE from a Secret")
        labels = pod["metadata"]["labels"]
        if not any(matches(p["spec"]["selector"], labels) for p in by_kind.get("PodDisruptionBudget", [])):
            fail(f"{path}: no PodDisruptionBudget covers {name}")
        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", [])
                if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}]
        if not hpas:
            fail(f"{path}: no HorizontalPodAutoscaler targets {name}")
        kinds = {m["type"] for h in hpas for m in h["spec"]["metrics"]}
        want = {"Resource", "Pods"} if role == "api" else {"External"}
        if not want <= kinds:
            fail(f"{path}: {name}'s HPA scales on {sorted(kinds)}, not {sorted(want)}")
    if roles != {"api", "projector"}:
        fail(f"{path}: expected an api and a projector Deployment, got {sorted(roles)}")
    print(f"check_manifests: {path}: {len(docs)} resources, {len(deployments)} Deployments: ok")


def main():
    cli_source, *rendered = sys.argv[1:]
    if not rendered:
        fail("no rendered manifests given")
    with open(cli_source, encoding="utf-8") as f:
        known_env = env_names_of(f.read())
    for path in rendered:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        check(path, docs, known_env)


if __name__ == "__main__":
    main()
