"""Checks of the Helm chart helm/crowdtick, offline (no cluster, no helm binary, no Docker).

    target/pyenv/bin/pytest deploy/checks

1. the chart lints (helm-python-sdk, i.e. Helm v4 as a library) for the default and the production
   values, with no errors or warnings;
2. it renders for both, and every manifest passes kubernetes-validate's strict schemas of the newest
   Kubernetes version it bundles. Only the Prometheus Operator kinds (monitoring.coreos.com: the
   ServiceMonitor and PrometheusRule) are skipped, because their CRD schemas are not bundled; the
   skipped objects are listed in the output (pytest -s / -rA) and may be nothing else;
3. values.schema.json refuses more processors than partitions, unknown keys, bad aggregators and
   bad voter-token settings (and the templates' `fail` guards the replica limit on their own);
4. every CrowdTick container the chart renders starts with the settings it is given: its
   crowdtick.toml (from the ConfigMap it mounts) and its CROWDTICK_* variables go through
   `crowdtick config` (the binary's own loading and validation), which must accept them; with one
   key misspelled (in the TOML, or in a variable's name) it must refuse them; [scylla] and
   [schema_registry] are rendered only when turned on, and read back by the binary as given;
5. the API's secrets: CROWDTICK_INGEST__AGGREGATORS is always set from a Secret (never the binary's
   laptop default), in exactly the inline-array form figment parses; the voter-token HMAC secret
   only when set; admission control and [ingest.voter_tokens] in crowdtick.toml.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from conftest import REPO, crowdtick_binary, dockerfile_env, run_crowdtick_config

CHART = REPO / "helm" / "crowdtick"
SCHEMA_TOOL = REPO / "helm" / "tools" / "values_schema.py"
# The most likely release name, and the one where Kubernetes' service links would produce
# CROWDTICK_* variables (crowdtick-query -> CROWDTICK_QUERY_SERVICE_HOST, ...).
RELEASE = "crowdtick"
NAMESPACE = "crowdtick"
KUBE_VERSION = kv_utils.latest_version()
# Kinds whose CRD schemas kubernetes-validate does not bundle: the only ones not validated.
UNVALIDATED_GROUPS = {"monitoring.coreos.com"}
UNVALIDATED_KINDS = {"ServiceMonitor", "PrometheusRule"}

# An aggregator key with every character JSON (and figment) must escape or Go's JSON escapes.
TRICKY_KEY = 'k"ey\\<&>\'{}[],=-0123456789'
# The public key of RFC 8410, section 10.1 (Ed25519).
ED25519_PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----
"""
# The API's identity settings, all set: aggregators (in the chart's Secret), the voter tokens' HMAC
# secret, [ingest.voter_tokens] and admission control.
IDENTITY_VALUES: dict[str, Any] = {
    "auth": {
        "aggregators": [
            {"name": "sms-uk", "key": "sms-uk-key-0123456789", "votesPerSec": 5000, "burst": 20000},
            {"name": "app_2", "key": TRICKY_KEY, "votesPerSec": 0},
            {"name": "ivr", "key": "ivr-key-abcdefghijklmnop"},
        ],
        "voterTokens": {"hmacSecret": "true, [not] {a} table = 0123456789abcdef"},
    },
    "ingest": {
        "admission": {"maxInFlightVotes": 50000, "shedTargetMs": 40, "shedIntervalMs": 250,
                      "shedWaitTargetMs": 25, "shedWaitIntervalMs": 300, "pauseReadsInFlight": 8192},
        "voterTokens": {"algorithm": "HS384", "issuer": "https://id.example.com", "audience": "crowdtick",
                        "leewaySecs": 30},
    },
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": yaml.safe_load((CHART / "values-production.yaml").read_text(encoding="utf-8")),
    "identity": IDENTITY_VALUES,
}

# Stand-ins for values Kubernetes fills in at run time (Secrets the chart does not create, pod fields).
SECRET_STAND_INS = {
    "CROWDTICK_OPERATOR_KEYS": '["stand-in-operator-key-1","stand-in-operator-key-2"]',
    "CROWDTICK_POSTGRES__URL": "postgres://crowdtick:secret@pg.example:5432/crowdtick",
    "CROWDTICK_REDIS__URL": "redis://:secret@redis.example:6379",
    "CROWDTICK_INGEST__AGGREGATORS": '[{name="stand-in-sms", key="stand-in-aggregator-key-1", votes_per_sec=20000, burst=0}]',
    "CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET": '"stand-in-hmac-secret-of-at-least-32-bytes"',
}


# --- rendering -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders (hooks and test pods included), in template order."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_specs(docs: list[dict]) -> Iterator[tuple[dict, str, dict]]:
    """(object, stand-in pod name, pod spec) of every object that makes pods."""
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Pod":
            yield doc, name, doc["spec"]
        elif kind == "StatefulSet":
            yield doc, f"{name}-0", doc["spec"]["template"]["spec"]
        elif kind in ("Deployment", "ReplicaSet", "DaemonSet"):
            yield doc, f"{name}-7d9f8b6c5-x2x4q", doc["spec"]["template"]["spec"]
        elif kind == "Job":
            yield doc, f"{name}-k8x2p", doc["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield doc, f"{name}-28000000-k8x2p", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# --- 1. lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    for message in report["messages"]:
        print(f"lint [{value_set}] severity {message['severity']}: {message['path']}: {message['error']}")
    assert report["total_charts_linted"] == 1
    assert not problems, f"helm lint ({value_set} values) reported: {problems}"


# --- 2. render + strict Kubernetes schemas ---------------------------------------------------


EXPECTED_OBJECTS = {
    ("ConfigMap", "crowdtick"), ("ServiceAccount", "crowdtick"),
    ("Deployment", "crowdtick-ingest"), ("Deployment", "crowdtick-query"), ("Deployment", "crowdtick-realtime"),
    ("StatefulSet", "crowdtick-processor"),
    ("Service", "crowdtick-ingest"), ("Service", "crowdtick-query"), ("Service", "crowdtick-realtime"),
    ("Service", "crowdtick-processor"),
    ("HorizontalPodAutoscaler", "crowdtick-ingest"), ("HorizontalPodAutoscaler", "crowdtick-realtime"),
    ("PodDisruptionBudget", "crowdtick-ingest"), ("PodDisruptionBudget", "crowdtick-processor"),
    ("PodDisruptionBudget", "crowdtick-query"), ("PodDisruptionBudget", "crowdtick-realtime"),
    ("ConfigMap", "crowdtick-migrate"), ("Job", "crowdtick-migrate"), ("Pod", "crowdtick-test"),
}
EXPECTED_PRODUCTION_OBJECTS = EXPECTED_OBJECTS | {
    ("Ingress", "crowdtick-ingest"), ("Ingress", "crowdtick-query"), ("Ingress", "crowdtick-realtime"),
    ("ServiceMonitor", "crowdtick"), ("PrometheusRule", "crowdtick"),
}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_manifests_pass_strict_kubernetes_schemas(chart: helm.Chart, value_set: str) -> None:
    docs = render(chart, VALUE_SETS[value_set])
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = EXPECTED_PRODUCTION_OBJECTS if value_set == "production" else EXPECTED_OBJECTS
    assert expected <= rendered, f"missing objects: {sorted(expected - rendered)}"

    skipped, failures = [], []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']} ({doc['apiVersion']})"
        if doc["apiVersion"].split("/")[0] in UNVALIDATED_GROUPS:
            skipped.append(what)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{what}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{what}: no schema: {e.message}")
    print(f"[{value_set}] validated {len(docs) - len(skipped)} objects against Kubernetes {KUBE_VERSION} "
          f"(strict); skipped (CRDs not bundled): {skipped or 'none'}")
    assert not failures, "\n".join(failures)
    assert {s.split("/")[0] for s in skipped} <= UNVALIDATED_KINDS, skipped
    if value_set == "production":
        assert {s.split("/")[0] for s in skipped} == UNVALIDATED_KINDS, skipped


# --- 3. values.schema.json -------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 8, 32, 1000])
def test_schema_refuses_more_processors_than_partitions(chart: helm.Chart, partitions: int) -> None:
    with pytest.raises(helm.HelmValuesError, match=r"replicaCount") as refused:
        chart.render({"config": {"log": {"partitions": partitions}},
                      "processor": {"replicaCount": partitions + 1}}, name=RELEASE, namespace=NAMESPACE)
    assert f"want {partitions:,}" in str(refused.value), str(refused.value)
    # As many processors as partitions is fine.
    render(chart, {"config": {"log": {"partitions": partitions}}, "processor": {"replicaCount": partitions}})


def test_schema_refuses_more_processors_than_production_partitions(chart: helm.Chart) -> None:
    values = copy.deepcopy(VALUE_SETS["production"])
    values["processor"]["replicaCount"] = values["config"]["log"]["partitions"] + 1
    with pytest.raises(helm.HelmValuesError, match=r"replicaCount"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_caps_partitions_at_the_enumeration(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match=r"partitions"):
        chart.render({"config": {"log": {"partitions": 1025}}}, name=RELEASE, namespace=NAMESPACE)
    # The clauses are the generated ones, one per partition count up to the cap.
    check = subprocess.run([sys.executable, str(SCHEMA_TOOL), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_template_guard_refuses_more_processors_than_partitions(tmp_path: Path) -> None:
    """The second guard: the chart without its schema still refuses (crowdtick.validate)."""
    copied = tmp_path / "crowdtick"
    shutil.copytree(CHART, copied)
    (copied / "values.schema.json").unlink()
    with helm.Chart.load(copied) as unchecked:
        with pytest.raises(helm.HelmRenderError, match=r"processor.replicaCount \(5\) must not exceed"):
            unchecked.render({"config": {"log": {"partitions": 4}}, "processor": {"replicaCount": 5}},
                             name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values, key", [
    ({"replicaCount": 3}, "replicaCount"),
    ({"ingest": {"replicaCont": 3}}, "replicaCont"),
    ({"config": {"log": {"partitons": 8}}}, "partitons"),
    ({"processor": {"assignmentStrategie": "range"}}, "assignmentStrategie"),
    ({"kafka": {"setting": {"linger.ms": "5"}}}, "setting"),
    ({"ingress": {"realtime": {"path": ["/ws"]}}}, "path"),
])
def test_schema_refuses_unknown_keys(chart: helm.Chart, values: dict, key: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=rf"additional properties '{key}' not allowed"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values", [
    {"kafka": {"brokers": ""}},
    {"postgres": {"url": "", "existingSecret": ""}},
    {"processor": {"assignmentStrategy": "sticky"}},
])
def test_schema_refuses_missing_or_invalid_connections(chart: helm.Chart, values: dict) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- the chart's wiring ----------------------------------------------------------------------


def test_migrations_job_needs_nothing_the_release_creates_later(chart: helm.Chart) -> None:
    """A pre-install hook runs before the release's ConfigMap and Secret exist."""
    for value_set, values in VALUE_SETS.items():
        docs = render(chart, values)
        job = find(docs, "Job", "crowdtick-migrate")
        hooks = job["metadata"]["annotations"]
        assert set(hooks["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert set(hooks["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
        job_weight = int(hooks.get("helm.sh/hook-weight", "0"))
        spec = job["spec"]["template"]["spec"]
        referenced = [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
        referenced += [("Secret", v["secret"]["secretName"]) for v in spec.get("volumes", []) if "secret" in v]
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    referenced.append(("Secret", ref["secretKeyRef"]["name"]))
                if "configMapKeyRef" in ref:
                    referenced.append(("ConfigMap", ref["configMapKeyRef"]["name"]))
        existing = {values.get(s, {}).get("existingSecret") for s in ("postgres", "redis", "auth")} - {None, ""}
        for kind, name in referenced:
            if kind == "Secret" and name in existing:
                continue  # created by the operator before the install
            obj = find(docs, kind, name)
            annotations = obj["metadata"]["annotations"]
            assert "pre-install" in annotations.get("helm.sh/hook", ""), \
                f"[{value_set}] the migrations Job uses {kind} {name}, which does not exist at pre-install"
            assert int(annotations.get("helm.sh/hook-weight", "0")) < job_weight, (value_set, kind, name)
        assert ("ConfigMap", "crowdtick-migrate") in referenced
        # The same settings as the services.
        assert find(docs, "ConfigMap", "crowdtick-migrate")["data"] == find(docs, "ConfigMap", "crowdtick")["data"]


def test_processors_use_static_membership(chart: helm.Chart) -> None:
    docs = render(chart, {})
    sts = find(docs, "StatefulSet", "crowdtick-processor")
    assert sts["spec"]["serviceName"] == "crowdtick-processor"
    assert find(docs, "Service", "crowdtick-processor")["spec"]["clusterIP"] == "None"
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CROWDTICK_PROCESSOR__INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    toml = tomllib.loads(find(docs, "ConfigMap", "crowdtick")["data"]["crowdtick.toml"])
    assert toml["processor"]["assignment_strategy"] == "cooperative-sticky"
    assert "instance_id" not in toml["processor"]


def test_config_change_rolls_the_pods(chart: helm.Chart) -> None:
    def checksums(values: dict) -> dict[str, str]:
        return {obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for obj in render(chart, values) if obj["kind"] in ("Deployment", "StatefulSet")}

    before, after = checksums({}), checksums({"ingest": {"deadlineMs": 1500}})
    assert len(before) == 4
    assert all(before[name] != after[name] for name in before), (before, after)


def test_pods_are_restricted(chart: helm.Chart) -> None:
    for value_set, values in VALUE_SETS.items():
        for obj, _, spec in pod_specs(render(chart, values)):
            where = f"[{value_set}] {obj['kind']}/{obj['metadata']['name']}"
            pod_sc = spec.get("securityContext", {})
            assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == 10001, where
            assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert spec.get("automountServiceAccountToken") is False, where
            mounts_tmp = any(v["name"] == "tmp" and "emptyDir" in v for v in spec.get("volumes", []))
            assert mounts_tmp, where
            for c in spec["containers"]:
                sc = c.get("securityContext", {})
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), where
                assert "resources" in c and c["resources"].get("requests"), where


def nginx_route(ingresses: list[dict], path: str) -> str:
    """The service ingress-nginx sends `path` to with use-regex: case-insensitive regex locations,
    longest first, the first one that matches the start of the path wins."""
    locations = [(p["path"], p["backend"]["service"]["name"])
                 for ing in ingresses for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
    for pattern, service in sorted(locations, key=lambda loc: len(loc[0]), reverse=True):
        if re.match(pattern, path, re.IGNORECASE):
            return service
    return "none"


def test_ingress_routes_each_path_to_its_role(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["production"])
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    for ing in ingresses:
        assert ing["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/use-regex") == "true"
        assert ing["spec"]["tls"] and ing["spec"]["ingressClassName"] == "nginx"
    routes = {
        "/v1/votes": "crowdtick-ingest", "/v1/votes/batch": "crowdtick-ingest",
        "/v1/polls/42/ws": "crowdtick-realtime", "/v1/polls/42/sse": "crowdtick-realtime",
        "/v1/polls": "crowdtick-query", "/v1/polls/42/results": "crowdtick-query", "/v1/polls/42": "crowdtick-query",
        "/": "crowdtick-query", "/p/k3x9qa": "crowdtick-query", "/screen/1": "crowdtick-query",
        "/openapi.json": "crowdtick-query",
    }
    wrong = {path: nginx_route(ingresses, path) for path in routes if nginx_route(ingresses, path) != routes[path]}
    assert not wrong, wrong
    # One Certificate per TLS secret: only one Ingress may ask cert-manager for it.
    issuers = [i["metadata"]["name"] for i in ingresses
               if any(k.startswith("cert-manager.io/") for k in i["metadata"]["annotations"])]
    assert len(issuers) <= 1, f"cert-manager annotations on several Ingresses sharing one TLS secret: {issuers}"
    realtime = find(docs, "Ingress", "crowdtick-realtime")["metadata"]["annotations"]
    assert realtime["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(realtime["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_prometheus_rules_use_crowdtick_metrics(chart: helm.Chart) -> None:
    docs = render(chart, VALUE_SETS["production"])
    rules = {r["alert"]: r["expr"] for r in find(docs, "PrometheusRule", "crowdtick")["spec"]["groups"][0]["rules"]}
    assert "crowdtick_processor_lag_records" in rules["CrowdTickProcessorLagHigh"]
    assert "crowdtick_ingest_votes_unavailable_total" in rules["CrowdTickIngestUnavailableHigh"]
    assert re.search(r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(crowdtick_ingest_vote_duration_seconds_bucket",
                     rules["CrowdTickVoteLatencyP99High"])
    monitor = find(docs, "ServiceMonitor", "crowdtick")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


PRODUCTION_SCYLLA_HOSTS = "scylla-0.scylla.db:9042,scylla-1.scylla.db:9042,scylla-2.scylla.db:9042"


def effective_settings(chart: helm.Chart, values: dict) -> dict[str, dict]:
    """What `crowdtick config` prints for every CrowdTick container the chart renders (label ->
    the effective configuration), with the container's own crowdtick.toml and variables."""
    binary = crowdtick_binary()
    out = {}
    for label, docs, pod_name, spec, container in crowdtick_containers(chart, values):
        toml, env = container_settings(docs, pod_name, spec, container)
        flags = (container.get("args") or container["command"])[1:]
        result = run_crowdtick_config(toml, env, flags, binary=binary)
        assert result.returncode == 0, f"{label}: crowdtick config exited {result.returncode}: {result.stderr}"
        out[label] = tomllib.loads(result.stdout)
    assert len(out) == 5, sorted(out)
    return out


def test_production_values_turn_on_scylla_and_the_schema_registry(chart: helm.Chart) -> None:
    """values-production.yaml renders [scylla] and [schema_registry], and every container (the
    migrations Job's too, which creates the keyspace) reads them as given."""
    docs = render(chart, VALUE_SETS["production"])
    cm = find(docs, "ConfigMap", "crowdtick")
    text = cm["data"]["crowdtick.toml"]
    toml = tomllib.loads(text)
    assert toml["scylla"] == {"hosts": PRODUCTION_SCYLLA_HOSTS, "keyspace": "crowdtick",
                              "replication_class": "NetworkTopologyStrategy", "replication_factor": 3,
                              "max_concurrent_writes": 64}, toml["scylla"]
    assert toml["schema_registry"] == {"url": "http://schema-registry.kafka:8081", "auto_register": True,
                                       "timeout_ms": 5000}, toml["schema_registry"]
    # Nothing of the "not used yet" era is left.
    assert "not used yet" not in text.lower() and "# scylla." not in text
    assert not any(k.startswith("crowdtick.io/") for k in cm["metadata"]["annotations"]), cm["metadata"]["annotations"]
    # The migrations Job mounts the same file and runs a bare `crowdtick migrate`, which takes
    # scylla.hosts from it.
    job = find(docs, "Job", "crowdtick-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert job["args"] == ["migrate"], job["args"]
    assert find(docs, "ConfigMap", "crowdtick-migrate")["data"]["crowdtick.toml"] == text
    for label, effective in effective_settings(chart, VALUE_SETS["production"]).items():
        assert effective["scylla"]["hosts"] == PRODUCTION_SCYLLA_HOSTS, (label, effective["scylla"])
        assert effective["scylla"]["keyspace"] == "crowdtick", label
        assert effective["scylla"]["replication_class"] == "NetworkTopologyStrategy", label
        assert effective["scylla"]["replication_factor"] == 3, label
        assert effective["scylla"]["max_concurrent_writes"] == 64, label
        assert effective["schema_registry"] == {"url": "http://schema-registry.kafka:8081",
                                                "auto_register": True, "timeout_ms": 5000}, label


def test_default_values_render_neither_scylla_nor_the_schema_registry(chart: helm.Chart) -> None:
    docs = render(chart, {})
    text = find(docs, "ConfigMap", "crowdtick")["data"]["crowdtick.toml"]
    toml = tomllib.loads(text)
    assert "scylla" not in toml and "schema_registry" not in toml, text
    for label, effective in effective_settings(chart, {}).items():
        assert effective["scylla"]["hosts"] == "", (label, effective["scylla"])
        assert effective["schema_registry"]["url"] == "", (label, effective["schema_registry"])


@pytest.mark.parametrize("scylla, registry", [
    ({"hosts": ["10.0.0.5:9042"], "keyspace": "Crowd_Tick2", "replicationClass": "SimpleStrategy",
      "replicationFactor": 1, "maxConcurrentWrites": 8}, None),
    (None, {"url": "https://sr-a.example:8081, https://sr-b.example:8081", "autoRegister": False, "timeoutMs": 250}),
    ({"hosts": ["[fd00::5]:19042", "scylla.db.svc:9042"]}, {"url": "http://registry:8081"}),
])
def test_scylla_and_schema_registry_values_reach_the_binary(chart: helm.Chart, scylla: dict | None,
                                                            registry: dict | None) -> None:
    """Each section is written only when turned on, with every value as the binary reads it."""
    values = {k: v for k, v in (("scylla", scylla), ("schemaRegistry", registry)) if v is not None}
    merged = chart.merge_values(values)
    toml = tomllib.loads(find(render(chart, values), "ConfigMap", "crowdtick")["data"]["crowdtick.toml"])
    assert ("scylla" in toml) == (scylla is not None) and ("schema_registry" in toml) == (registry is not None), toml
    for label, effective in effective_settings(chart, values).items():
        s, r = merged["scylla"], merged["schemaRegistry"]
        assert effective["scylla"] == {"hosts": ",".join(s["hosts"]), "keyspace": s["keyspace"],
                                       "replication_class": s["replicationClass"],
                                       "replication_factor": s["replicationFactor"],
                                       "max_concurrent_writes": s["maxConcurrentWrites"]}, label
        assert effective["schema_registry"] == {"url": r["url"], "auto_register": r["autoRegister"],
                                                "timeout_ms": r["timeoutMs"]}, label


@pytest.mark.parametrize("values, where", [
    ({"scylla": {"hosts": ["scylla-0.scylla.db"]}}, "/scylla/hosts/0"),
    ({"scylla": {"hosts": "scylla-0:9042,scylla-1:9042"}}, "/scylla/hosts"),
    ({"scylla": {"hosts": ["a:9042,b:9042"]}}, "/scylla/hosts/0"),
    ({"scylla": {"keyspace": "crowd-tick"}}, "/scylla/keyspace"),
    ({"scylla": {"keyspace": ""}}, "/scylla/keyspace"),
    ({"scylla": {"keyspace": "k" * 49}}, "/scylla/keyspace"),
    ({"scylla": {"replicationClass": "EverywhereStrategy"}}, "/scylla/replicationClass"),
    ({"scylla": {"replicationFactor": 0}}, "/scylla/replicationFactor"),
    ({"scylla": {"maxConcurrentWrites": 0}}, "/scylla/maxConcurrentWrites"),
    ({"scylla": {"replicas": 3}}, "/scylla"),
    ({"schemaRegistry": {"url": "schema-registry:8081"}}, "/schemaRegistry/url"),
    ({"schemaRegistry": {"autoRegister": "yes"}}, "/schemaRegistry/autoRegister"),
    ({"schemaRegistry": {"timeoutMs": 0}}, "/schemaRegistry/timeoutMs"),
    ({"schemaRegistry": {"subject": "votes"}}, "/schemaRegistry"),
])
def test_schema_refuses_bad_scylla_and_registry_values(chart: helm.Chart, values: dict, where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert f"at '{where}" in str(refused.value), str(refused.value)


# --- 4. the settings every CrowdTick container gets ------------------------------------------


def service_link_env(docs: list[dict]) -> dict[str, str]:
    """The variables Kubernetes' service links would add (enableServiceLinks, the default)."""
    env = {}
    for svc in (d for d in docs if d["kind"] == "Service"):
        if svc["spec"].get("clusterIP") == "None" or svc["spec"].get("type") == "ExternalName":
            continue
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        ports = svc["spec"]["ports"]
        env[f"{prefix}_SERVICE_HOST"] = "10.96.0.10"
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{prefix}_PORT"] = f"tcp://10.96.0.10:{ports[0]['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            env.update({base: f"{proto.lower()}://10.96.0.10:{port['port']}", f"{base}_PROTO": proto.lower(),
                        f"{base}_PORT": str(port["port"]), f"{base}_ADDR": "10.96.0.10"})
    return env


def rendered_data(docs: list[dict], kind: str, name: str) -> dict[str, str] | None:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if not matches:
        return None
    if kind == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (matches[0].get("data") or {}).items()}
        data.update(matches[0].get("stringData") or {})
        return data
    return matches[0].get("data") or {}


def container_settings(docs: list[dict], pod_name: str, spec: dict, container: dict) -> tuple[str, dict[str, str]]:
    """(crowdtick.toml, CROWDTICK_* variables) a container would see at run time: the image's
    ENV, then the pod's."""
    env: dict[str, str] = dict(dockerfile_env())
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        data = rendered_data(docs, kind, ref["name"])
        assert data is not None, f"envFrom {kind} {ref['name']} is not rendered by the chart"
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = str(var.get("value", ""))
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            stand_ins = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": "10.0.0.7",
                         "spec.nodeName": "node-1"}
            assert field in stand_ins, f"{name}: no stand-in for fieldRef {field}"
            env[name] = stand_ins[field]
        elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
            kind, key_ref = ("Secret", ref["secretKeyRef"]) if "secretKeyRef" in ref else ("ConfigMap", ref["configMapKeyRef"])
            data = rendered_data(docs, kind, key_ref["name"])
            if data is not None:  # the chart's own object: its real value
                assert key_ref["key"] in data, f"{name}: {kind} {key_ref['name']} has no key {key_ref['key']}"
                env[name] = data[key_ref["key"]]
            else:  # an existing Secret: a stand-in of the right type
                assert name in SECRET_STAND_INS, f"{name}: no stand-in for {kind} {key_ref['name']}"
                env[name] = SECRET_STAND_INS[name]
        else:
            raise AssertionError(f"{name}: no stand-in for valueFrom {ref}")
    if spec.get("enableServiceLinks", True):
        env = {**service_link_env(docs), **env}
    env = {k: v for k, v in env.items() if k.startswith("CROWDTICK_")}

    # crowdtick.toml: the file CROWDTICK_CONFIG names, through the volume mounted there.
    assert "CROWDTICK_CONFIG" in env, f"container {container['name']} does not get CROWDTICK_CONFIG"
    config_path = PurePosixPath(env["CROWDTICK_CONFIG"])
    mounts = [m for m in container.get("volumeMounts", []) if config_path.is_relative_to(m["mountPath"])]
    assert mounts, f"nothing is mounted at {config_path}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"{config_path} is not from a ConfigMap: {volume}"
    # The file's path inside the volume: the mount's subPath (a file mounted on its own), or the
    # path below the mount point; the volume's items may map that path to another key.
    path_in_volume = mount.get("subPath") or str(config_path.relative_to(mount["mountPath"]))
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(path_in_volume, path_in_volume)
    data = rendered_data(docs, "ConfigMap", volume["configMap"]["name"])
    assert data is not None, f"ConfigMap {volume['configMap']['name']} is not rendered"
    assert key in data, f"ConfigMap {volume['configMap']['name']} has no {key}"
    return data[key], env


def crowdtick_containers(chart: helm.Chart, values: dict) -> list[tuple[str, list[dict], str, dict, dict]]:
    """(label, docs, stand-in pod name, pod spec, container) of every CrowdTick container."""
    docs = render(chart, values)
    repository = chart.merge_values(values)["image"]["repository"]
    found = []
    for obj, pod_name, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["image"].split("@")[0].rsplit(":", 1)[0] == repository:
                found.append((f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}",
                              docs, pod_name, spec, container))
    return found


def misspell_toml(toml: str) -> list[tuple[str, str]]:
    """(misspelled key, TOML) pairs: the first top-level key, and the first key of each section."""
    variants, section, seen = [], None, set()
    lines = toml.splitlines()
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)(\s*=.*)$", line)
        if key and section not in seen:
            seen.add(section)
            typo = key.group(2) + "x"
            variants.append((typo, "\n".join(lines[:i] + [key.group(1) + typo + key.group(3)] + lines[i + 1:])))
    return variants


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_crowdtick_accepts_the_settings_of_every_container(chart: helm.Chart, value_set: str) -> None:
    binary = crowdtick_binary()
    values = VALUE_SETS[value_set]
    merged = chart.merge_values(values)
    containers = crowdtick_containers(chart, values)
    roles = sorted((c[4].get("args") or c[4].get("command"))[0] for c in containers)
    assert roles == ["ingest", "migrate", "processor", "query", "realtime"], roles

    failures = []
    for label, docs, pod_name, spec, container in containers:
        toml, env = container_settings(docs, pod_name, spec, container)
        role, *flags = container.get("args") or container["command"]
        if role == "migrate":
            assert not flags, f"{label}: `crowdtick config` cannot check migrate's flags {flags}"
        result = run_crowdtick_config(toml, env, flags, binary=binary)
        if result.returncode != 0:
            failures.append(f"{label}: crowdtick config exited {result.returncode}: {result.stderr.strip()}\n"
                            f"  env: {sorted(env)}")
            continue
        effective = tomllib.loads(result.stdout)
        port = next(p["containerPort"] for p in container.get("ports", [{"containerPort": merged["containerPort"]}]))
        assert effective["listen"].endswith(f":{port}"), (label, effective["listen"])
        assert effective["log"]["partitions"] == merged["config"]["log"]["partitions"], label
        assert effective["kafka"]["brokers"] == merged["kafka"]["brokers"], label
        assert effective["postgres"]["url"] == (merged["postgres"]["url"] if not merged["postgres"]["existingSecret"]
                                                else SECRET_STAND_INS["CROWDTICK_POSTGRES__URL"]), label
        assert effective["processor"]["assignment_strategy"] == merged["processor"]["assignmentStrategy"], label
        assert effective["scylla"]["hosts"] == ",".join(merged["scylla"]["hosts"]), label
        assert effective["schema_registry"]["url"] == merged["schemaRegistry"]["url"], label
        if role == "processor":
            assert effective["processor"]["instance_id"] == pod_name, (label, effective["processor"])
        if role != "migrate":
            assert effective["operator_keys"], label
            if merged["auth"]["operatorKeys"]:
                assert effective["operator_keys"] == merged["auth"]["operatorKeys"], label
            # The aggregators of the values (or the existing Secret's), never the laptop default.
            assert effective["ingest"]["aggregators"] == expected_aggregators(merged), label
            tokens = effective["ingest"]["voter_tokens"]
            assert tokens["hmac_secret"] == expected_hmac_secret(merged), label
            assert tokens["issuer"] == merged["ingest"]["voterTokens"]["issuer"], label
            assert effective["ingest"]["max_in_flight_votes"] == merged["ingest"]["admission"]["maxInFlightVotes"], label
            assert effective["ingest"]["shed_wait_target_ms"] == merged["ingest"]["admission"]["shedWaitTargetMs"], label
            assert effective["ingest"]["pause_reads_in_flight"] == merged["ingest"]["admission"]["pauseReadsInFlight"], label
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_crowdtick_refuses_a_misspelled_key(chart: helm.Chart, value_set: str) -> None:
    binary = crowdtick_binary()
    accepted = []
    for label, docs, pod_name, spec, container in crowdtick_containers(chart, VALUE_SETS[value_set]):
        toml, env = container_settings(docs, pod_name, spec, container)
        flags = (container.get("args") or container["command"])[1:]
        variants = misspell_toml(toml)
        assert len(variants) >= 8, f"{label}: expected a top-level key and a key per section, got {len(variants)}"
        for typo, bad_toml in variants:
            result = run_crowdtick_config(bad_toml, env, flags, binary=binary)
            if result.returncode == 0 or typo not in result.stderr:
                accepted.append(f"{label}: TOML key {typo}: exit {result.returncode} {result.stderr.strip()}")
        for name in env:
            for typo in {name + "X", name.replace("__", "_")} - {name}:
                bad_env = {typo if k == name else k: v for k, v in env.items()}
                result = run_crowdtick_config(toml, bad_env, flags, binary=binary)
                if result.returncode == 0:
                    accepted.append(f"{label}: variable {typo} (for {name}) was accepted")
    assert not accepted, "misspellings that were not refused:\n" + "\n".join(accepted)


# --- 5. the API's secrets: aggregators, voter tokens; admission control ----------------------


SERVICE_WORKLOADS = [("Deployment", "crowdtick-ingest"), ("Deployment", "crowdtick-query"),
                     ("Deployment", "crowdtick-realtime"), ("StatefulSet", "crowdtick-processor")]
AGGREGATORS_VAR = "CROWDTICK_INGEST__AGGREGATORS"
HMAC_VAR = "CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET"


class FigmentParseError(ValueError):
    pass


def _figment_unescape(inner: str) -> str:
    """figment 0.10's value/escape.rs: TOML basic-string escapes; raw control characters refused."""
    out, i = [], 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            if i + 1 >= len(inner):
                raise FigmentParseError("unterminated escape")
            e = inner[i + 1]
            simple = {'"': '"', "\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
            if e in simple:
                out.append(simple[e])
                i += 2
            elif e in "uU":
                n = 4 if e == "u" else 8
                digits = inner[i + 2:i + 2 + n]
                if len(digits) != n or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise FigmentParseError(f"bad \\{e} escape {digits!r}")
                code = int(digits, 16)
                if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                    raise FigmentParseError(f"escape \\{e}{digits} is no character")
                out.append(chr(code))
                i += 2 + n
            else:
                raise FigmentParseError(f"invalid escape \\{e}")
        elif c == "\t" or ("\u0020" <= c and c != "\u007f"):
            out.append(c)
            i += 1
        else:
            raise FigmentParseError(f"invalid character {c!r} in a string")
    return "".join(out)


def parse_figment_env_value(text: str) -> Any:
    """What figment 0.10 (CrowdTick's configuration library) makes of an environment variable's
    value (value/parse.rs), for what the chart writes: arrays, inline tables, quoted strings,
    integers, booleans and bare strings. Raises unless the whole text parses as one value: figment
    would then take the text as one plain string, which CrowdTick refuses for a list."""
    pos = 0

    def ws() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace() and text[pos].isascii():
            pos += 1

    def string() -> str:
        nonlocal pos
        assert text[pos] == '"'
        end, escaped = pos + 1, False
        while end < len(text) and (escaped or text[end] != '"'):
            escaped = not escaped and text[end] == "\\"
            end += 1
        if end >= len(text):
            raise FigmentParseError("unterminated string")
        inner, pos = text[pos + 1:end], end + 1
        return _figment_unescape(inner)

    def collect(close: str, item) -> list:
        nonlocal pos
        pos += 1
        items = []
        ws()
        if pos < len(text) and text[pos] == close:
            pos += 1
            return items
        while True:
            items.append(item())
            ws()
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == close:
                pos += 1
                return items
            raise FigmentParseError(f"expected ',' or {close!r} at {pos}: {text[pos:pos + 20]!r}")

    def key_value() -> tuple[str, Any]:
        nonlocal pos
        ws()
        if pos < len(text) and text[pos] == '"':
            key = string()
        else:
            start = pos
            while pos < len(text) and (text[pos].isascii() and (text[pos].isalnum() or text[pos] in "_-")):
                pos += 1
            key = text[start:pos]
            if not key:
                raise FigmentParseError(f"expected a key at {pos}")
        ws()
        if pos >= len(text) or text[pos] != "=":
            raise FigmentParseError(f"expected '=' at {pos}")
        pos += 1
        return key, value()

    def value() -> Any:
        nonlocal pos
        ws()
        if text.startswith("true", pos):
            pos += 4
            result: Any = True
        elif text.startswith("false", pos):
            pos += 5
            result = False
        elif text.startswith("{", pos):
            pairs = collect("}", key_value)
            result = dict(pairs)
            if len(result) != len(pairs):
                raise FigmentParseError("a key appears twice in an inline table")
        elif text.startswith("[", pos):
            result = collect("]", value)
        elif text.startswith('"', pos):
            result = string()
        else:
            start = pos
            while pos < len(text) and text[pos] not in ",{}[]":
                pos += 1
            bare = text[start:pos].strip()
            try:
                result = float(bare) if "." in bare else int(bare)
            except ValueError:
                result = bare
        ws()
        return result

    parsed = value()
    if pos != len(text):
        raise FigmentParseError(f"trailing text at {pos}: {text[pos:pos + 20]!r}")
    return parsed


def test_figment_parser_mirror_reads_figments_own_examples() -> None:
    """The mirror above agrees with figment's own tests (value/parse.rs) on what the chart uses."""
    assert parse_figment_env_value("[]") == []
    assert parse_figment_env_value('[1,{a=b},hi]') == [1, {"a": "b"}, "hi"]
    assert parse_figment_env_value('{a=[[-2]],b=" hi"}') == {"a": [[-2]], "b": " hi"}
    assert parse_figment_env_value('"\\n\\f\\b\\\\\\r\\""') == "\n\u000c\u0008\\\r\""
    assert parse_figment_env_value('"hi\\u1234there"') == "hi\u1234there"
    assert parse_figment_env_value('"\\"hi\\""') == '"hi"'
    with pytest.raises(FigmentParseError):
        parse_figment_env_value('[{name="a", key="b"} x]')
    with pytest.raises(FigmentParseError):
        parse_figment_env_value('"a\\qb"')


# The exact form of CROWDTICK_INGEST__AGGREGATORS: [] or [{...}, {...}], each item's fields in this
# order, the strings quoted (only JSON escapes that figment reads too), the numbers plain integers.
_QUOTED = r'"(?:[^"\\\x00-\x1f]|\\["\\bfnrt]|\\u[0-9a-fA-F]{4})*"'
_AGGREGATOR = rf"\{{name=({_QUOTED}), key=({_QUOTED}), votes_per_sec=(0|[1-9][0-9]*), burst=(0|[1-9][0-9]*)\}}"
AGGREGATORS_SHAPE = re.compile(rf"\[(?:{_AGGREGATOR}(?:, {_AGGREGATOR})*)?\]")


def check_aggregators_value(text: str) -> list[dict[str, Any]]:
    """Asserts the exact shape of an aggregators value and returns what figment reads from it."""
    assert AGGREGATORS_SHAPE.fullmatch(text), f"not of the form [{{name=\"…\", key=\"…\", votes_per_sec=N, burst=N}}]: {text!r}"
    for item in re.finditer(_AGGREGATOR, text):
        for quoted in (item.group(1), item.group(2)):
            # A JSON string, and figment reads the same text from it.
            assert _figment_unescape(quoted[1:-1]) == json.loads(quoted), quoted
    parsed = parse_figment_env_value(text)
    assert isinstance(parsed, list)
    for entry in parsed:
        assert list(entry) == ["name", "key", "votes_per_sec", "burst"], entry
    return parsed


def expected_aggregators(merged: dict) -> list[dict[str, Any]]:
    """ingest.aggregators as CrowdTick should load it from the chart's values (or the stand-in)."""
    if merged["auth"]["aggregatorsExistingSecret"]:
        return parse_figment_env_value(SECRET_STAND_INS[AGGREGATORS_VAR])
    return [{"name": a["name"], "key": a["key"], "votes_per_sec": a.get("votesPerSec", 20000), "burst": a.get("burst", 0)}
            for a in merged["auth"]["aggregators"]]


def expected_hmac_secret(merged: dict) -> str:
    tokens = merged["auth"]["voterTokens"]
    if tokens["existingSecret"]:
        return parse_figment_env_value(SECRET_STAND_INS[HMAC_VAR])
    return tokens["hmacSecret"]


def workload_env(docs: list[dict], kind: str, name: str) -> dict[str, dict]:
    container = find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in container["env"]}


def chart_secret(docs: list[dict]) -> dict[str, str]:
    data = rendered_data(docs, "Secret", "crowdtick")
    assert data is not None, "the chart renders no Secret crowdtick"
    return data


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_aggregators_variable_is_always_set_from_a_secret(chart: helm.Chart, value_set: str) -> None:
    values = VALUE_SETS[value_set]
    merged = chart.merge_values(values)
    docs = render(chart, values)
    existing = merged["auth"]["aggregatorsExistingSecret"]
    want_ref = ({"name": existing, "key": merged["auth"]["aggregatorsExistingSecretKey"]} if existing
                else {"name": "crowdtick", "key": "aggregators"})
    for kind, name in SERVICE_WORKLOADS:
        env = workload_env(docs, kind, name)
        assert AGGREGATORS_VAR in env, f"[{value_set}] {kind}/{name} does not get {AGGREGATORS_VAR}"
        assert "value" not in env[AGGREGATORS_VAR], f"[{value_set}] {name}: the aggregators' keys in plain sight"
        assert env[AGGREGATORS_VAR]["valueFrom"] == {"secretKeyRef": want_ref}, (value_set, name)
    if existing:
        data = rendered_data(docs, "Secret", "crowdtick") or {}
        assert "aggregators" not in data, value_set
        return
    text = chart_secret(docs)["aggregators"]
    assert check_aggregators_value(text) == expected_aggregators(merged), (value_set, text)
    if value_set == "default":
        assert text == "[]", text


def test_aggregators_in_values_are_in_the_secret(chart: helm.Chart) -> None:
    docs = render(chart, IDENTITY_VALUES)
    text = chart_secret(docs)["aggregators"]
    parsed = check_aggregators_value(text)
    assert parsed == [
        {"name": "sms-uk", "key": "sms-uk-key-0123456789", "votes_per_sec": 5000, "burst": 20000},
        {"name": "app_2", "key": TRICKY_KEY, "votes_per_sec": 0, "burst": 0},
        {"name": "ivr", "key": "ivr-key-abcdefghijklmnop", "votes_per_sec": 20000, "burst": 0},
    ], text
    assert text.startswith('[{name="sms-uk", key="sms-uk-key-0123456789", votes_per_sec=5000, burst=20000}, '
                           '{name="app_2", key="'), text
    # The keys are in the Secret only: not in any ConfigMap, not in any pod's plain variables.
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            assert "sms-uk-key-0123456789" not in json.dumps(doc), doc["metadata"]["name"]
    for obj, _, spec in pod_specs(docs):
        for container in spec["containers"]:
            assert "sms-uk-key-0123456789" not in json.dumps(container.get("env", [])), obj["metadata"]["name"]


def test_aggregators_from_an_existing_secret(chart: helm.Chart) -> None:
    values = {"auth": {"aggregatorsExistingSecret": "broadcaster-keys", "aggregatorsExistingSecretKey": "batchers",
                       "aggregators": [{"name": "ignored", "key": "ignored-key-0123456789"}]}}
    docs = render(chart, values)
    for kind, name in SERVICE_WORKLOADS:
        env = workload_env(docs, kind, name)
        assert env[AGGREGATORS_VAR]["valueFrom"] == {"secretKeyRef": {"name": "broadcaster-keys", "key": "batchers"}}
    assert "aggregators" not in chart_secret(docs)  # still there for the operator keys and URLs
    # With every secret from existing Secrets the chart renders no Secret at all.
    none = render(chart, {**VALUE_SETS["production"]})
    assert rendered_data(none, "Secret", "crowdtick") is None


@pytest.mark.parametrize("tokens, expect", [
    ({}, None),
    ({"hmacSecret": ""}, None),
    ({"hmacSecret": "s" * 32}, ("crowdtick", "voter-token-hmac-secret")),
    ({"existingSecret": "idp", "existingSecretKey": "jwt-secret"}, ("idp", "jwt-secret")),
])
def test_voter_token_secret_only_when_set(chart: helm.Chart, tokens: dict, expect: tuple[str, str] | None) -> None:
    docs = render(chart, {"auth": {"voterTokens": tokens}})
    for kind, name in SERVICE_WORKLOADS:
        env = workload_env(docs, kind, name)
        if expect is None:
            assert HMAC_VAR not in env, (tokens, name)
        else:
            assert env[HMAC_VAR]["valueFrom"] == {"secretKeyRef": {"name": expect[0], "key": expect[1]}}, name
    secret = chart_secret(docs)
    assert ("voter-token-hmac-secret" in secret) == (expect is not None and expect[0] == "crowdtick"), secret.keys()
    # Never in crowdtick.toml.
    toml = tomllib.loads(find(docs, "ConfigMap", "crowdtick")["data"]["crowdtick.toml"])
    assert "hmac_secret" not in toml["ingest"].get("voter_tokens", {})


def test_voter_token_secret_reads_back_as_the_same_string(chart: helm.Chart) -> None:
    """Stored JSON-quoted, so figment reads a string even when the secret looks like a number,
    a boolean, a list or a table."""
    for secret_text in ["true, [not] {a} table = 0123456789abcdef", "1234567890123456789012345678901234.5",
                        '"quoted" \\ back slash <html> & ünïcödé 0123456789']:
        docs = render(chart, {"auth": {"voterTokens": {"hmacSecret": secret_text}}})
        stored = chart_secret(docs)["voter-token-hmac-secret"]
        assert stored.startswith('"') and stored.endswith('"'), stored
        assert parse_figment_env_value(stored) == secret_text, stored


def test_toml_carries_admission_and_voter_tokens(chart: helm.Chart) -> None:
    default = tomllib.loads(find(render(chart, {}), "ConfigMap", "crowdtick")["data"]["crowdtick.toml"])
    admission = ("max_in_flight_votes", "shed_target_ms", "shed_interval_ms", "shed_wait_target_ms",
                 "shed_wait_interval_ms", "pause_reads_in_flight")
    assert {k: default["ingest"][k] for k in admission} == \
        {"max_in_flight_votes": 200000, "shed_target_ms": 500, "shed_interval_ms": 1000,
         "shed_wait_target_ms": 10, "shed_wait_interval_ms": 100, "pause_reads_in_flight": 4096}
    assert "voter_tokens" not in default["ingest"]  # nothing set: the binary's defaults
    assert "aggregators" not in default["ingest"]  # secrets: from the environment only

    values = copy.deepcopy(IDENTITY_VALUES)
    values["ingest"]["voterTokens"] = {"algorithm": "EdDSA", "publicKeyPem": ED25519_PUBLIC_KEY_PEM,
                                       "issuer": 'https://id.example.com/"realm"', "audience": "crowdtick",
                                       "leewaySecs": 15}
    docs = render(chart, values)
    text = find(docs, "ConfigMap", "crowdtick")["data"]["crowdtick.toml"]
    toml = tomllib.loads(text)
    assert {k: toml["ingest"][k] for k in admission} == \
        {"max_in_flight_votes": 50000, "shed_target_ms": 40, "shed_interval_ms": 250,
         "shed_wait_target_ms": 25, "shed_wait_interval_ms": 300, "pause_reads_in_flight": 8192}
    assert toml["ingest"]["voter_tokens"] == {
        "algorithm": "EdDSA", "public_key_pem": ED25519_PUBLIC_KEY_PEM, "issuer": 'https://id.example.com/"realm"',
        "audience": "crowdtick", "leeway_secs": 15}
    assert "aggregators" not in toml["ingest"]
    # The migrations Job's own ConfigMap carries the same file.
    assert find(docs, "ConfigMap", "crowdtick-migrate")["data"]["crowdtick.toml"] == text
    # Only one setting set is enough for the table.
    only = tomllib.loads(find(render(chart, {"ingest": {"voterTokens": {"leewaySecs": 5}}}), "ConfigMap",
                              "crowdtick")["data"]["crowdtick.toml"])
    assert only["ingest"]["voter_tokens"]["leeway_secs"] == 5 and only["ingest"]["voter_tokens"]["algorithm"] == ""


def test_secret_change_rolls_the_pods(chart: helm.Chart) -> None:
    def checksums(values: dict) -> dict[str, str]:
        return {obj["metadata"]["name"]: obj["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
                for obj in render(chart, values) if obj["kind"] in ("Deployment", "StatefulSet")}

    base = {"auth": {"aggregators": [{"name": "sms", "key": "sms-key-0123456789"}]}}
    before = checksums(base)
    assert len(before) == 4
    for changed in [{"auth": {"aggregators": [{"name": "sms", "key": "sms-key-0123456789X"}]}},
                    {"auth": {"aggregators": [{"name": "sms", "key": "sms-key-0123456789", "votesPerSec": 1}]}},
                    {"auth": {**base["auth"], "voterTokens": {"hmacSecret": "h" * 32}}},
                    {"auth": {**base["auth"], "aggregatorsExistingSecret": "other"}}]:
        after = checksums(changed)
        assert all(before[name] != after[name] for name in before), changed
    assert checksums(base) == before  # and stable otherwise


@pytest.mark.parametrize("values, where", [
    ({"auth": {"aggregators": [{"name": "SMS-UK", "key": "sms-uk-key-0123456789"}]}}, "/auth/aggregators/0/name"),
    ({"auth": {"aggregators": [{"name": "sms:uk", "key": "sms-uk-key-0123456789"}]}}, "/auth/aggregators/0/name"),
    ({"auth": {"aggregators": [{"name": "", "key": "sms-uk-key-0123456789"}]}}, "/auth/aggregators/0/name"),
    ({"auth": {"aggregators": [{"name": "a" * 33, "key": "sms-uk-key-0123456789"}]}}, "/auth/aggregators/0/name"),
    ({"auth": {"aggregators": [{"name": "sms", "key": "short-key-12345"}]}}, "/auth/aggregators/0/key"),
    ({"auth": {"aggregators": [{"name": "sms", "key": "with a space 0123456789"}]}}, "/auth/aggregators/0/key"),
    ({"auth": {"aggregators": [{"name": "sms"}]}}, "/auth/aggregators/0"),
    ({"auth": {"aggregators": [{"name": "sms", "key": "sms-uk-key-0123456789", "votesPerSecond": 5}]}},
     "/auth/aggregators/0"),
    ({"auth": {"aggregators": [{"name": "sms", "key": "sms-uk-key-0123456789", "votesPerSec": -1}]}},
     "/auth/aggregators/0/votesPerSec"),
    ({"auth": {"aggregators": [{"name": "sms", "key": "sms-uk-key-0123456789", "burst": 2 ** 32}]}},
     "/auth/aggregators/0/burst"),
    ({"auth": {"voterTokens": {"hmacSecret": "s" * 31}}}, "/auth/voterTokens/hmacSecret"),
    ({"ingest": {"voterTokens": {"algorithm": "HS257"}}}, "/ingest/voterTokens/algorithm"),
    ({"ingest": {"voterTokens": {"algorithm": "RS256"}}}, "/ingest/voterTokens"),
    ({"ingest": {"voterTokens": {"publicKeyPem": ED25519_PUBLIC_KEY_PEM}}}, "/ingest/voterTokens"),
    ({"ingest": {"voterTokens": {"algorithm": "ES256", "publicKeyPem": "-----BEGIN PRIVATE KEY-----\nMC4=\n"}}},
     "/ingest/voterTokens/publicKeyPem"),
    ({"ingest": {"admission": {"maxInFlightVotes": -1}}}, "/ingest/admission/maxInFlightVotes"),
    ({"ingest": {"admission": {"shedIntervalMs": 0}}}, "/ingest/admission/shedIntervalMs"),
    ({"ingest": {"admission": {"shedWaitIntervalMs": 0}}}, "/ingest/admission/shedWaitIntervalMs"),
    ({"ingest": {"admission": {"shedTarget": 100}}}, "/ingest/admission"),
])
def test_schema_refuses_bad_identity_values(chart: helm.Chart, values: dict, where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert f"at '{where}" in str(refused.value), str(refused.value)
    # A refused key is not echoed in the error.
    for agg in values.get("auth", {}).get("aggregators", []):
        if "key" in agg and where.endswith("/key"):
            assert agg["key"] not in str(refused.value), str(refused.value)


@pytest.mark.parametrize("aggregators, message", [
    ([{"name": "sms", "key": "sms-key-0123456789"}, {"name": "sms", "key": "sms-key-9876543210"}],
     r'the name "sms" appears twice'),
    ([{"name": "sms", "key": "shared-key-0123456789"}, {"name": "app", "key": "shared-key-0123456789"}],
     r'the key of "app" is another aggregator\'s too'),
])
def test_templates_refuse_aggregators_used_twice(chart: helm.Chart, aggregators: list, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message) as refused:
        chart.render({"auth": {"aggregators": aggregators}}, name=RELEASE, namespace=NAMESPACE)
    assert "shared-key-0123456789" not in str(refused.value)
