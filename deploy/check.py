#!/usr/bin/env python3
"""Offline checks of everything under deploy/: `make check-deploy` runs this.

What it proves, without a cluster, a registry or a Docker engine:

- Kubernetes: the base and every overlay render with kustomize (`kubectl kustomize`);
  every built-in object is valid against the Kubernetes OpenAPI schemas of one pinned
  version (kubernetes-validate, strict: unknown fields are errors); the Prometheus
  Operator objects pass a structural check; and the objects agree with each other and
  with the code: Services and PDBs select their Deployment, probes and targetPorts name a
  container port, env names are real REKEY_* overrides (config.rs), Secret keys exist in
  secret.example.yaml, the config is a directory mount (not subPath) at the --config
  path, the reader is a single Recreate replica, security context and resources are set,
  the grace period exceeds the services' 45 s drain.
- Config: the overlay's rekey.toml is byte-equal to deploy/promptstudio/rekey.toml, and
  every rekey.toml in a rendered ConfigMap loads with the real parser (`rekeyctl`).
- Prometheus: `promtool check rules` and `promtool test rules`; every alert has a
  severity, summary, description and a runbook section in deploy/README.md, and a test
  that sees it firing and one that sees it silent; the PrometheusRule is generated from
  rules.yaml.
- Grafana: the dashboard is well-formed, every panel uses the DS_PROMETHEUS variable,
  and every expression parses as PromQL (promtool).
- Metrics: every rekey_* name in the dashboard and the rules is a constant in
  services/rekey/src/telemetry.rs (histograms only with _bucket/_sum/_count).
- Dockerfile: hadolint; the builder's Rust is at least the locked dependencies'
  rust-version; every workspace member is copied; the binaries built are the ones the
  manifests run; the user and port match the manifests.

`--sync` first rewrites the two generated files (the overlay's rekey.toml copy and the
PrometheusRule) from their sources.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yaml"
PROMETHEUS_RULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "rekey.json"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
README = DEPLOY / "README.md"
TELEMETRY = ROOT / "services" / "rekey" / "src" / "telemetry.rs"
CONFIG_RS = ROOT / "services" / "rekey" / "src" / "config.rs"
PROMPTSTUDIO_TOML = DEPLOY / "promptstudio" / "rekey.toml"

# The services drain within this many seconds of SIGTERM (the pods' grace period must be
# longer, with margin for the kubelet).
DRAIN_SECONDS = 45
GRACE_MARGIN_SECONDS = 10
METRICS_PORT = 9187
IMAGE_UID = 10001
BINARIES = {"rekey-reader", "rekey-writer", "rekeyctl"}
# Environment variables the containers may set besides config.rs's REKEY_* overrides.
EXTRA_ENV = {"REKEY_CONFIG", "RUST_LOG"}
# Prometheus' own series the rules and the dashboard may use.
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE"}

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules.yaml by `make deploy-sync`: edit that file.
# `make check-deploy` fails when this copy is stale.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: rekey
  labels:
    app.kubernetes.io/name: rekey
    app.kubernetes.io/part-of: rekey
spec:
"""


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0
        self.section = ""

    def start(self, section: str) -> None:
        self.section = section
        print(f"== {section}", flush=True)

    def fail(self, msg: str) -> None:
        self.failures.append(f"{self.section}: {msg}")
        print(f"  FAIL {msg}", flush=True)

    def ok(self, msg: str) -> None:
        self.passed += 1
        print(f"  ok   {msg}", flush=True)

    def mark(self) -> int:
        return len(self.failures)

    def ok_since(self, mark: int, msg: str) -> None:
        """`ok` unless something failed since `mark`."""
        if len(self.failures) == mark:
            self.ok(msg)

    def expect(self, cond: bool, msg: str) -> bool:
        if not cond:
            self.fail(msg)
        return cond


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------
# Sources of truth in the code


def telemetry_metrics() -> tuple[set[str], set[str]]:
    """(every metric name, the histogram names) from telemetry.rs."""
    text = TELEMETRY.read_text()
    consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str =\s*"(rekey_[a-z0-9_]+)";', text))
    histograms = {consts[c] for c in re.findall(r"describe_histogram!\(\s*([A-Z0-9_]+)", text) if c in consts}
    return set(consts.values()), histograms


def env_overrides() -> set[str]:
    text = CONFIG_RS.read_text()
    block = re.search(r"ENV_OVERRIDES: &\[\(&str, &str\)\] = &\[(.*?)\];", text, re.S)
    return set(re.findall(r'\("(REKEY_[A-Z_]+)"', block.group(1))) if block else set()


def kafka_option_env_prefix() -> str | None:
    """`REKEY_KAFKA_OPTION_`: the prefix of the variables that set `[kafka.options]`."""
    m = re.search(r'ENV_KAFKA_OPTION_PREFIX: &str = "(REKEY_[A-Z_]+)";', CONFIG_RS.read_text())
    return m.group(1) if m else None


def secret_keys() -> set[str]:
    doc = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return set((doc.get("stringData") or {}) | (doc.get("data") or {}))


# ---------------------------------------------------------------------------------------
# Generated files


def prometheus_rule_text() -> str:
    text = RULES.read_text()
    start = re.search(r"^groups:", text, re.M)
    body = text[start.start():]
    return PROMETHEUS_RULE_HEADER + "".join(("  " + line) if line.strip() else line for line in body.splitlines(True))


def sync() -> None:
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"sync: wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    for overlay in OVERLAYS:
        if overlay.name == "promptstudio":
            shutil.copyfile(PROMPTSTUDIO_TOML, overlay / "rekey.toml")
            print(f"sync: copied {PROMPTSTUDIO_TOML.relative_to(ROOT)} to {(overlay / 'rekey.toml').relative_to(ROOT)}")


def check_generated(c: Checker) -> None:
    c.start("generated files")
    if c.expect(PROMETHEUS_RULE.exists() and PROMETHEUS_RULE.read_text() == prometheus_rule_text(),
                f"{PROMETHEUS_RULE.relative_to(ROOT)} is not generated from rules.yaml: run `make deploy-sync`"):
        c.ok("PrometheusRule equals rules.yaml")
    copy = K8S / "overlays" / "promptstudio" / "rekey.toml"
    if c.expect(copy.exists() and copy.read_bytes() == PROMPTSTUDIO_TOML.read_bytes(),
                f"{copy.relative_to(ROOT)} differs from deploy/promptstudio/rekey.toml: run `make deploy-sync`"):
        c.ok("overlay rekey.toml equals deploy/promptstudio/rekey.toml")


# ---------------------------------------------------------------------------------------
# Metrics referenced by the dashboard and the rules

METRIC_RE = re.compile(r"\b(rekey_[a-z0-9_]+)\b")


def check_metric_names(c: Checker, where: str, exprs: list[str]) -> None:
    names, histograms = telemetry_metrics()
    allowed = set(names - histograms)
    for h in histograms:
        allowed |= {h + "_bucket", h + "_sum", h + "_count"}
    used = {m for e in exprs for m in METRIC_RE.findall(e)}
    for m in sorted(used - allowed):
        hint = " (a histogram: use _bucket, _sum or _count)" if m in histograms else ""
        c.fail(f"{where} uses {m}, which telemetry.rs does not define{hint}")
    if used <= allowed:
        c.ok(f"{where}: all {len(used)} rekey_* names are in telemetry.rs")
    return used


def promtool_parse(promtool: str, exprs: list[str]) -> subprocess.CompletedProcess:
    """`promtool check rules` on the expressions wrapped in recording rules."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}, f)
    try:
        return run([promtool, "check", "rules", f.name])
    finally:
        os.unlink(f.name)


def promql_parses(c: Checker, promtool: str, where: str, exprs: list[str]) -> None:
    """Parses each expression with promtool (all at once; one by one to name a failure)."""
    if promtool_parse(promtool, exprs).returncode == 0:
        c.ok(f"{where}: {len(exprs)} expressions parse (promtool)")
        return
    for e in exprs:
        r = promtool_parse(promtool, [e])
        if r.returncode != 0:
            detail = " ".join(l.strip() for l in (r.stdout + r.stderr).splitlines() if "parse error" in l or "could not" in l)
            c.fail(f"{where}: does not parse: {e}\n    {detail}")


# ---------------------------------------------------------------------------------------
# Prometheus rules


def check_rules(c: Checker, promtool: str) -> None:
    c.start("prometheus rules")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        r = run([promtool, *args], cwd=RULES.parent)
        if c.expect(r.returncode == 0, f"promtool {' '.join(args[:2])} failed:\n{r.stdout}{r.stderr}"):
            c.ok(f"promtool {' '.join(args[:2])}")
    doc = yaml.safe_load(RULES.read_text())
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    check_metric_names(c, "rules.yaml", [a["expr"] for a in alerts])
    readme = README.read_text() if README.exists() else ""
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", readme, re.M)}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing, silent = set(), set()
    mark = c.mark()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else silent).add(a["alertname"])
    for a in alerts:
        name = a["alert"]
        c.expect(a.get("labels", {}).get("severity") in ("critical", "warning"),
                 f"{name}: severity label must be critical or warning")
        ann = a.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            c.expect(bool(ann.get(key)), f"{name}: no {key} annotation")
        anchor = ann.get("runbook", "").partition("#")[2]
        c.expect(anchor in anchors, f"{name}: runbook anchor #{anchor} is not a heading in deploy/README.md")
        c.expect(name in firing, f"{name}: no test in rules_test.yaml expects it to fire")
        c.expect(name in silent, f"{name}: no test in rules_test.yaml expects it to stay silent")
    c.ok_since(mark, f"{len(alerts)} alerts: severity, annotations, runbook sections, tests firing and silent")


# ---------------------------------------------------------------------------------------
# Grafana dashboard


def substitute_grafana_vars(expr: str) -> str:
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h"),
                       ("${namespace}", "x"), ("$namespace", "x")):
        expr = expr.replace(var, value)
    return expr


def check_dashboard(c: Checker, promtool: str) -> None:
    c.start("grafana dashboard")
    try:
        d = json.loads(DASHBOARD.read_text())
    except ValueError as e:
        c.fail(f"{DASHBOARD.relative_to(ROOT)} is not JSON: {e}")
        return
    mark = c.mark()
    c.expect(d.get("title") == "rekey" and d.get("uid") == "rekey", "title and uid must be `rekey`")
    c.expect(isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36, "schemaVersion must be >= 36")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS", {})
    c.expect(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
             "templating needs a DS_PROMETHEUS variable of type datasource (prometheus)")
    panels = []
    for p in d.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    c.expect(len(ids) == len(set(ids)) and None not in ids, "panel ids must be present and unique")
    exprs = []
    for p in panels:
        title = p.get("title", "?")
        gp = p.get("gridPos", {})
        c.expect(all(k in gp for k in "hwxy") and gp.get("x", 0) + gp.get("w", 0) <= 24,
                 f"panel {title!r}: gridPos must have h, w, x, y within 24 columns")
        if p.get("type") == "row":
            continue
        c.expect(p.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}",
                 f"panel {title!r}: datasource must be ${{DS_PROMETHEUS}}")
        targets = p.get("targets", [])
        c.expect(bool(targets), f"panel {title!r}: no targets")
        refs = [t.get("refId") for t in targets]
        c.expect(len(refs) == len(set(refs)) and None not in refs, f"panel {title!r}: refIds must be unique")
        for t in targets:
            c.expect(t.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}",
                     f"panel {title!r} target {t.get('refId')}: datasource must be ${{DS_PROMETHEUS}}")
            exprs.append(t.get("expr", ""))
    for v in variables.values():
        q = v.get("query")
        if v.get("type") == "query":
            exprs.append(q.get("query", "") if isinstance(q, dict) else q)
    for a in d.get("annotations", {}).get("list", []):
        if a.get("expr"):
            exprs.append(a["expr"])
    c.ok_since(mark, f"{len(panels)} panels well-formed")
    check_metric_names(c, "rekey.json", exprs)
    promql = [substitute_grafana_vars(e) for e in exprs if not e.startswith("label_values(")]
    promql_parses(c, promtool, "rekey.json", promql)
    names, _ = telemetry_metrics()
    unused = sorted(n for n in names if not any(n in e for e in exprs))
    if unused:
        print(f"  note telemetry.rs metrics not on the dashboard: {', '.join(unused)}")


# ---------------------------------------------------------------------------------------
# Kubernetes


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# Structural schemas for the Prometheus Operator kinds (fields this project uses, and the
# ones a user is likely to add); unknown fields are errors, as in kubernetes-validate --strict.
LABEL_SELECTOR = {"type": "object", "additionalProperties": False,
                  "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                 "matchExpressions": {"type": "array"}}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                           "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                           "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": METADATA,
            "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                     "properties": {
                         "selector": LABEL_SELECTOR,
                         "namespaceSelector": {"type": "object"},
                         "jobLabel": {"type": "string"},
                         "targetLabels": {"type": "array", "items": {"type": "string"}},
                         "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                         "sampleLimit": {"type": "integer"},
                         "endpoints": {"type": "array", "minItems": 1, "items": {
                             "type": "object", "additionalProperties": False,
                             "properties": {
                                 "port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                                 "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                                 "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                                 "honorTimestamps": {"type": "boolean"}, "tlsConfig": {"type": "object"},
                                 "bearerTokenSecret": {"type": "object"}, "authorization": {"type": "object"},
                                 "basicAuth": {"type": "object"}, "params": {"type": "object"},
                                 "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {}, "kind": {}, "metadata": METADATA,
            "spec": {"type": "object", "required": ["groups"], "additionalProperties": False,
                     "properties": {"groups": {"type": "array", "items": {
                         "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                         "properties": {
                             "name": {"type": "string"}, "interval": DURATION, "limit": {"type": "integer"},
                             "partial_response_strategy": {"type": "string"},
                             "rules": {"type": "array", "items": {
                                 "type": "object", "required": ["expr"], "additionalProperties": False,
                                 "properties": {
                                     "alert": {"type": "string"}, "record": {"type": "string"},
                                     "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                     "keep_firing_for": DURATION,
                                     "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                     "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}}}}},
}


def validate_objects(c: Checker, name: str, docs: list[dict], k8s_version: str) -> None:
    import jsonschema
    import kubernetes_validate

    mark = c.mark()
    for d in docs:
        ident = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        schema = CRD_SCHEMAS.get((d.get("apiVersion"), d.get("kind")))
        try:
            if schema is not None:
                jsonschema.validate(d, schema)
            else:
                kubernetes_validate.validate(d, k8s_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            c.fail(f"{ident}: no schema for {d.get('apiVersion')} {d.get('kind')} in Kubernetes {k8s_version}")
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            path = "/".join(str(p) for p in getattr(e, "path", []))
            c.fail(f"{ident}: {path}: {getattr(e, 'message', e)}")
    c.ok_since(mark, f"{name}: {len(docs)} objects valid (Kubernetes {k8s_version} schemas, strict; Prometheus Operator kinds structurally)")


def check_rendered(c: Checker, name: str, docs: list[dict], overlay: Path | None) -> list[str]:
    """Cross-checks between the rendered objects; returns the rekey.toml texts found."""
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployments = by_kind.get("Deployment", [])
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    services = by_kind.get("Service", [])
    allowed_env = env_overrides() | EXTRA_ENV
    kafka_prefix = kafka_option_env_prefix()
    keys = secret_keys()
    tomls = [cm["data"]["rekey.toml"] for cm in configmaps.values() if "rekey.toml" in cm.get("data", {})]

    mark = c.mark()
    namespace = None
    if overlay is not None:
        namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace")
        c.expect(bool(namespace), f"{name}: the overlay must set a namespace")
    for d in docs:
        labels = d["metadata"].get("labels", {})
        c.expect(labels.get("app.kubernetes.io/name") == "rekey" and labels.get("app.kubernetes.io/part-of") == "rekey",
                 f"{name}: {d['kind']}/{d['metadata']['name']} lacks app.kubernetes.io/name and part-of labels")
        if namespace:
            c.expect(d["metadata"].get("namespace") == namespace,
                     f"{name}: {d['kind']}/{d['metadata']['name']} is not in namespace {namespace}")

    names = {d["metadata"]["name"] for d in deployments}
    c.expect({"rekey-reader", "rekey-writer"} <= names, f"{name}: Deployments rekey-reader and rekey-writer expected")
    # The alert rules match on job="rekey-reader|rekey-writer", the Services' names.
    c.expect({"rekey-reader", "rekey-writer"} <= {s["metadata"]["name"] for s in services},
             f"{name}: Services rekey-reader and rekey-writer expected (the alerts' job labels)")

    workloads = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in deployments]
    workloads += [(d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]) for d in by_kind.get("CronJob", [])]
    for d in deployments:
        dn = d["metadata"]["name"]
        c.expect(d["spec"].get("replicas") == 1, f"{name}: {dn} must have replicas: 1")
        c.expect(d["spec"].get("strategy", {}).get("type") == "Recreate",
                 f"{name}: {dn} must use strategy Recreate (one slot holder / one consumer at a time)")
        c.expect(matches(d["spec"]["selector"].get("matchLabels", {}), d["spec"]["template"]["metadata"].get("labels", {})),
                 f"{name}: {dn} selector does not match its pod template")
        grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        c.expect(grace >= DRAIN_SECONDS + GRACE_MARGIN_SECONDS,
                 f"{name}: {dn} terminationGracePeriodSeconds {grace} < {DRAIN_SECONDS} s drain + {GRACE_MARGIN_SECONDS} s margin")

    for wn, pod in workloads:
        psc = pod.get("securityContext", {})
        c.expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == IMAGE_UID,
                 f"{name}: {wn} must run as non-root uid {IMAGE_UID}")
        c.expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: {wn} needs seccomp RuntimeDefault")
        c.expect(pod.get("automountServiceAccountToken") is False, f"{name}: {wn} should not mount a service account token")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                c.expect(v["configMap"]["name"] in configmaps,
                         f"{name}: {wn} volume {v['name']} names ConfigMap {v['configMap']['name']}, which is not rendered")
        for ctr in pod["containers"]:
            cid = f"{wn}/{ctr['name']}"
            sc = ctr.get("securityContext", {})
            c.expect(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                     and sc.get("capabilities", {}).get("drop") == ["ALL"],
                     f"{name}: {cid} needs readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL")
            res = ctr.get("resources", {})
            c.expect(all(k in res.get("requests", {}) and k in res.get("limits", {}) for k in ("cpu", "memory")),
                     f"{name}: {cid} needs cpu and memory requests and limits")
            c.expect(ctr.get("command", [None])[0] in BINARIES, f"{name}: {cid} command must be one of {sorted(BINARIES)}")
            image = ctr.get("image", "")
            if overlay is not None:
                c.expect("/" in image and ":" in image.rsplit("/", 1)[1], f"{name}: {cid} image {image!r} needs a registry and tag")
            args = ctr.get("args", [])
            config_path = args[args.index("--config") + 1] if "--config" in args else None
            c.expect(config_path is not None, f"{name}: {cid} has no --config argument")
            mounts = ctr.get("volumeMounts", [])
            for m in mounts:
                v = volumes.get(m["name"])
                c.expect(v is not None, f"{name}: {cid} mounts unknown volume {m['name']}")
                if v is not None and "configMap" in v:
                    c.expect("subPath" not in m and "subPathExpr" not in m,
                             f"{name}: {cid} mounts ConfigMap {v['configMap']['name']} with subPath: updates would not propagate")
            if config_path:
                cfg_mounts = [m for m in mounts if "configMap" in volumes.get(m["name"], {})
                              and os.path.dirname(config_path) == m["mountPath"].rstrip("/")]
                c.expect(bool(cfg_mounts), f"{name}: {cid} --config {config_path} is not in a ConfigMap directory mount")
                for m in cfg_mounts:
                    cm = configmaps.get(volumes[m["name"]]["configMap"]["name"], {})
                    c.expect(os.path.basename(config_path) in cm.get("data", {}),
                             f"{name}: {cid} --config {config_path}: the ConfigMap has no key {os.path.basename(config_path)}")
            env = {e["name"]: e for e in ctr.get("env", [])}
            for en, e in env.items():
                option_var = bool(kafka_prefix) and en.startswith(kafka_prefix) and len(en) > len(kafka_prefix)
                c.expect(en in allowed_env or option_var,
                         f"{name}: {cid} sets {en}, which is not a REKEY_* override in config.rs")
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    s = ref["secretKeyRef"]
                    c.expect(s["name"] == "rekey-secrets" and s["key"] in keys,
                             f"{name}: {cid} {en} reads secret {s['name']}/{s['key']}, not a key of secret.example.yaml")
                if "configMapKeyRef" in ref:
                    s = ref["configMapKeyRef"]
                    c.expect(s["key"] in configmaps.get(s["name"], {}).get("data", {}),
                             f"{name}: {cid} {en} reads ConfigMap {s['name']}/{s['key']}, which is not rendered")
            for secret_var in ("REKEY_SOURCE_URL", "REKEY_TARGET_URL", "REKEY_ID_SECRET"):
                if secret_var in env:
                    c.expect("secretKeyRef" in env[secret_var].get("valueFrom", {}),
                             f"{name}: {cid} {secret_var} must come from a Secret, not a literal")
            if ctr["command"][0] in ("rekey-reader", "rekey-writer"):
                ports = {p.get("name"): p for p in ctr.get("ports", [])}
                c.expect(ports.get("metrics", {}).get("containerPort") == METRICS_PORT,
                         f"{name}: {cid} needs a container port named metrics = {METRICS_PORT}")
                addr = env.get("REKEY_METRICS_ADDR", {}).get("value", "")
                c.expect(addr.startswith("0.0.0.0:") and addr.rsplit(":", 1)[1] == str(METRICS_PORT),
                         f"{name}: {cid} REKEY_METRICS_ADDR must be 0.0.0.0:{METRICS_PORT}")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = ctr.get(probe, {}).get("httpGet", {})
                    c.expect(get.get("path") == path and get.get("port") in ports,
                             f"{name}: {cid} {probe} must be httpGet {path} on a named container port")
                c.expect(args[-2:] == ["--log-format", "json"], f"{name}: {cid} should log JSON (--log-format json)")

    for s in services:
        sel = s["spec"].get("selector", {})
        targets = [d for d in deployments if matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
        if c.expect(len(targets) == 1, f"{name}: Service {s['metadata']['name']} selects {len(targets)} Deployments, not 1"):
            ports = {p.get("name") for ctr in targets[0]["spec"]["template"]["spec"]["containers"] for p in ctr.get("ports", [])}
            for p in s["spec"]["ports"]:
                c.expect(p.get("targetPort") in ports, f"{name}: Service {s['metadata']['name']} targetPort {p.get('targetPort')} is not a container port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        n = sum(matches(sel, d["spec"]["template"]["metadata"].get("labels", {})) for d in deployments)
        c.expect(n == 1, f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects {n} Deployments, not 1")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        picked = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
        c.expect({"rekey-reader", "rekey-writer"} <= {s["metadata"]["name"] for s in picked},
                 f"{name}: ServiceMonitor {sm['metadata']['name']} must select both Services")
        for ep in sm["spec"]["endpoints"]:
            for s in picked:
                c.expect(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]},
                         f"{name}: ServiceMonitor port {ep.get('port')} is not a port of Service {s['metadata']['name']}")
    if overlay is not None:
        kust = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        version = next((l["pairs"].get("app.kubernetes.io/version") for l in kust.get("labels", []) if "pairs" in l), None)
        tags = [i.get("newTag") for i in kust.get("images", [])]
        c.expect(version is None or version in tags, f"{name}: app.kubernetes.io/version {version} differs from the image tag {tags}")
    c.ok_since(mark, f"{name}: selectors, ports, probes, env, secrets, mounts, security context, resources agree")
    return tomls


def check_config_loads(c: Checker, rekeyctl: str | None, tomls: set[str]) -> None:
    c.start("rekey.toml in the ConfigMaps")
    mark = c.mark()
    for text in sorted(tomls):
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            c.fail(f"a rendered rekey.toml is not TOML: {e}")
    if not rekeyctl or not Path(rekeyctl).exists():
        print(f"  skip loading with rekeyctl: {rekeyctl or 'rekeyctl'} is not built (make build)")
        return
    for text in sorted(tomls):
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_")}
        env["REKEY_ID_SECRET"] = "check-deploy-secret-0123456789"
        try:
            r = run([rekeyctl, "--config", f.name, "resolve", "check", "1"], env=env)
        finally:
            os.unlink(f.name)
        first = text.strip().splitlines()[0] if text.strip() else ""
        c.expect(r.returncode == 0, f"rekeyctl rejects the config starting {first!r}: {r.stderr.strip()}")
    c.ok_since(mark, f"{len(tomls)} distinct rekey.toml load with the real parser (rekeyctl)")


def check_k8s(c: Checker, kubectl: str, k8s_version: str, rekeyctl: str | None) -> None:
    tomls: set[str] = set()
    for path in [K8S / "base", *OVERLAYS]:
        name = str(path.relative_to(ROOT))
        c.start(f"kubernetes {name}")
        r = run([kubectl, "kustomize", str(path)])
        if not c.expect(r.returncode == 0, f"kustomize build failed:\n{r.stderr}"):
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        c.ok(f"kustomize renders {len(docs)} objects: " + ", ".join(sorted({d['kind'] for d in docs})))
        validate_objects(c, name, docs, k8s_version)
        tomls |= set(check_rendered(c, name, docs, None if path.name == "base" else path))
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    c.start("kubernetes secret.example.yaml")
    validate_objects(c, "secret.example.yaml", [secret], k8s_version)
    check_config_loads(c, rekeyctl, tomls)


# ---------------------------------------------------------------------------------------
# Dockerfile


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def locked_msrv(cargo: str) -> tuple[str, str] | str:
    """The highest rust-version among the packages the three binaries build from, or an error."""
    r = run([cargo, "metadata", "--locked", "--format-version", "1", "--filter-platform", "x86_64-unknown-linux-gnu"], cwd=ROOT)
    if r.returncode != 0:
        return r.stderr.strip()
    meta = json.loads(r.stdout)
    pkgs = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    todo = [p["id"] for p in meta["packages"] if p["name"] in BINARIES and p["id"] in meta["workspace_members"]]
    seen: set[str] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k.get("kind") != "dev" for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    if not seen:
        return f"cargo metadata lists none of {sorted(BINARIES)}"
    return max(((pkgs[i].get("rust_version") or "0", pkgs[i]["name"]) for i in seen), key=lambda t: version_tuple(t[0]))


def check_dockerfile(c: Checker, hadolint: str | None, cargo: str) -> None:
    c.start("Dockerfile")
    text = DOCKERFILE.read_text()
    if hadolint:
        r = run([hadolint, "--no-color", str(DOCKERFILE)])
        if c.expect(r.returncode == 0, f"hadolint:\n{r.stdout}{r.stderr}"):
            c.ok("hadolint clean")
    else:
        print("  skip hadolint: not installed")
    m = re.search(r"^ARG RUST_VERSION=(\S+)", text, re.M)
    if c.expect(m is not None, "no ARG RUST_VERSION=... default"):
        msrv = locked_msrv(cargo)
        if isinstance(msrv, str):
            c.fail(f"cargo metadata --locked failed: {msrv}")
        elif c.expect(version_tuple(m.group(1)) >= version_tuple(msrv[0]),
                      f"RUST_VERSION {m.group(1)} < rust-version {msrv[0]} of {msrv[1]} (Cargo.lock)"):
            c.ok(f"RUST_VERSION {m.group(1)} >= {msrv[0]}, the highest rust-version the binaries' locked dependencies need ({msrv[1]})")
    mark = c.mark()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M))
    sources = {s for line in copied for s in line.split()}
    for member in members:
        c.expect(any(member == s or member.startswith(s.rstrip("/") + "/") for s in sources),
                 f"workspace member {member} is not copied into the build stage")
    build = re.search(r"cargo build(.*?)(&&|$)", text.replace("\\\n", " "), re.S)
    built = set(re.findall(r"(?:-p|--package) (\S+)", build.group(1))) if build else set()
    c.expect(built == BINARIES, f"the build stage builds {sorted(built)}, the manifests run {sorted(BINARIES)}")
    c.expect(re.search(rf"^USER {IMAGE_UID}(:{IMAGE_UID})?$", text, re.M) is not None, f"USER must be {IMAGE_UID}")
    c.expect(re.search(rf"^EXPOSE {METRICS_PORT}$", text, re.M) is not None, f"EXPOSE {METRICS_PORT} expected")
    c.expect(re.search(r"^ENTRYPOINT", text, re.M) is None, "no ENTRYPOINT: the manifests pick the binary with command:")
    c.ok_since(mark, "workspace members copied, binaries, user and port agree with the manifests")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--promtool", default="promtool")
    ap.add_argument("--hadolint", default=None)
    ap.add_argument("--rekeyctl", default=None, help="a built rekeyctl, to load each rekey.toml with the real parser")
    ap.add_argument("--cargo", default="cargo")
    ap.add_argument("--k8s-version", default="1.30.0")
    ap.add_argument("--sync", action="store_true", help="rewrite the generated files first")
    args = ap.parse_args()
    missing = []
    for tool in ("kubectl", "promtool", "cargo"):
        found = shutil.which(getattr(args, tool))
        if found is None:
            missing.append(f"{tool} ({getattr(args, tool)})")
        else:
            # Absolute, not resolved: cargo is a rustup proxy that needs its own name.
            setattr(args, tool, os.path.abspath(found))
    if missing:
        print(f"check-deploy: not found: {', '.join(missing)} (make deploy-tools installs promtool)")
        return 1
    args.hadolint = shutil.which(args.hadolint) if args.hadolint else None
    if args.rekeyctl:
        args.rekeyctl = str(Path(args.rekeyctl).resolve())
    if args.sync:
        sync()
    c = Checker()
    check_generated(c)
    check_k8s(c, args.kubectl, args.k8s_version, args.rekeyctl)
    check_rules(c, args.promtool)
    check_dashboard(c, args.promtool)
    check_dockerfile(c, args.hadolint, args.cargo)
    print()
    for f in c.failures:
        print(f"  - {f.splitlines()[0]}")
    print(f"check-deploy: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
