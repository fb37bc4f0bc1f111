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
5. every setting the binary knows is rendered into crowdtick.toml or given as a variable, but for
   the few _helpers.tpl names as left out (the embedded log's files, the old API's throttles);
   and `crowdtick config` in a pod prints none of the chart's secrets without --show-secrets.

The API's secrets are checked in test_helm_secrets.py; the rendering both use is helm_support.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import crowdtick_binary, dockerfile_env, run_crowdtick_config
from helm_support import (  # noqa: F401 (chart is a fixture)
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    SCHEMA_TOOL,
    SECRET_STAND_INS,
    UNVALIDATED_GROUPS,
    UNVALIDATED_KINDS,
    VALUE_SETS,
    chart,
    expected_aggregators,
    expected_hmac_secret,
    find,
    pod_specs,
    render,
    rendered_data,
)


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
    overflows = rules["CrowdTickListenOverflows"]
    assert re.search(r'rate\(crowdtick_http_listen_overflows_total\{namespace="[^"]+", job=~"crowdtick-ingest\|crowdtick-realtime"\}\[5m\]\)',
                     overflows), overflows
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
            assert effective["ingest"]["shed_backlog_appends"] == merged["ingest"]["admission"]["shedBacklogAppends"], label
            assert effective["ingest"]["shed_backlog_quiet_ms"] == merged["ingest"]["admission"]["shedBacklogQuietMs"], label
            assert (effective["ingest"]["shed_retry_after_max_secs"]
                    == merged["ingest"]["admission"]["shedRetryAfterMaxSecs"]), label
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


# --- 5. every setting is the chart's to set, or named as not ---------------------------------

# What no container of the chart is given, neither in its crowdtick.toml nor as a variable: the
# embedded log's own files and commits (the chart's pods log to Kafka), and the old API's
# throttles (only a node of every role serves that API; the chart runs none). _helpers.tpl's
# comment on crowdtick.toml must name each of these, and each setting that comes from a variable.
NOT_IN_THE_CHART = {
    "log.commit_interval_us", "log.segment_mb", "log.zero_ahead_kb", "log.retire_after_snapshot", "[seed]",
}


def setting_names(table: dict, prefix: str = "") -> set[str]:
    """Dotted names of a configuration's settings; kafka.settings (a free map), an empty table and
    an array of tables are settings of their own, and a [seed] setting is the section "[seed]"."""
    names = set()
    for key, value in table.items():
        name = prefix + key
        if isinstance(value, dict) and value and name != "kafka.settings":
            names |= setting_names(value, name + ".")
        else:
            names.add("[seed]" if name.startswith("seed.") else name)
    return names


def helpers_toml_comment() -> str:
    """The comment above _helpers.tpl's crowdtick.toml definition."""
    text = (CHART / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    comment = re.search(r"\{\{/\*\ncrowdtick\.toml: (.*?)\*/\}\}\n\{\{- define \"crowdtick\.toml\"", text, re.S)
    assert comment, "_helpers.tpl: no comment above the crowdtick.toml definition"
    return comment.group(1)


def test_the_chart_renders_every_setting_but_those_it_names(chart: helm.Chart) -> None:
    binary = crowdtick_binary()
    every, rendered, from_env = set(), set(), set()
    for values in VALUE_SETS.values():
        for label, docs, pod_name, spec, container in crowdtick_containers(chart, values):
            toml, env = container_settings(docs, pod_name, spec, container)
            result = run_crowdtick_config(toml, env, (container.get("args") or container["command"])[1:],
                                          binary=binary)
            assert result.returncode == 0, f"{label}: crowdtick config exited {result.returncode}: {result.stderr}"
            every |= setting_names(tomllib.loads(result.stdout))
            rendered |= setting_names(tomllib.loads(toml))
            from_env |= {name.removeprefix("CROWDTICK_").lower().replace("__", ".") for name in env
                         if name.startswith("CROWDTICK_")}
    from_env &= every
    assert rendered <= every, f"the chart renders settings the binary does not know: {sorted(rendered - every)}"
    assert every - rendered - from_env == NOT_IN_THE_CHART, (
        "settings the chart neither renders nor gives as variables, against the ones it names: "
        f"missing from the chart {sorted(every - rendered - from_env - NOT_IN_THE_CHART)}, "
        f"named but in the chart {sorted(NOT_IN_THE_CHART - (every - rendered - from_env))}")
    comment = helpers_toml_comment()
    unnamed = sorted(n for n in NOT_IN_THE_CHART | (from_env - rendered)
                     if not re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", comment))
    assert not unnamed, f"_helpers.tpl's comment on crowdtick.toml does not name {unnamed}"


def test_realtime_and_http_values_reach_the_binary(chart: helm.Chart) -> None:
    values = {"realtime": {"sendTimeoutMs": 7000, "socketSendBufferBytes": 16384, "fanoutThreads": 2,
                           "fanoutNice": 5, "sseKeepAliveSecs": 20},
              "config": {"http": {"writeStallTimeoutMs": 3000}}}
    expected = {"send_timeout_ms": 7000, "socket_send_buffer_bytes": 16384, "fanout_threads": 2,
                "fanout_nice": 5, "sse_keep_alive_secs": 20}
    for label, effective in effective_settings(chart, values).items():
        assert {k: effective["realtime"][k] for k in expected} == expected, label
        assert effective["http"]["write_stall_timeout_ms"] == 3000, label


@pytest.mark.parametrize("values, where", [
    ({"realtime": {"sendTimeoutMs": 0}}, "/realtime/sendTimeoutMs"),
    ({"realtime": {"fanoutNice": 20}}, "/realtime/fanoutNice"),
    ({"realtime": {"fanoutNice": -1}}, "/realtime/fanoutNice"),
    ({"realtime": {"sseKeepAliveSecs": 86401}}, "/realtime/sseKeepAliveSecs"),
    ({"config": {"http": {"writeStallTimeoutMs": -1}}}, "/config/http/writeStallTimeoutMs"),
])
def test_schema_refuses_bad_realtime_and_http_values(chart: helm.Chart, values: dict, where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert f"at '{where}" in str(refused.value), str(refused.value)


SECRET_VALUES = {
    "auth": {"operatorKeys": ["operator-key-0123456789"],
             "aggregators": [{"name": "sms-uk", "key": "aggregator-key-0123456789"}],
             "voterTokens": {"hmacSecret": "voter-token-hmac-secret-0123456789abcdef"}},
    "postgres": {"url": "postgres://crowdtick:postgres-password-0123@postgres:5432/crowdtick"},
    "redis": {"url": "redis://:redis-password-0123@redis:6379"},
}


def test_crowdtick_config_prints_no_secret_of_the_chart_unless_asked(chart: helm.Chart) -> None:
    """`crowdtick config` in a pod (kubectl exec) prints the chart's keys and passwords only with
    --show-secrets; every other setting it prints as with it."""
    secrets = ["operator-key-0123456789", "aggregator-key-0123456789", "voter-token-hmac-secret-0123456789abcdef",
               "postgres-password-0123", "redis-password-0123"]
    binary = crowdtick_binary()
    reached = set()
    for label, docs, pod_name, spec, container in crowdtick_containers(chart, SECRET_VALUES):
        toml, env = container_settings(docs, pod_name, spec, container)
        flags = (container.get("args") or container["command"])[1:]
        hidden = run_crowdtick_config(toml, env, flags, binary=binary, show_secrets=False)
        shown = run_crowdtick_config(toml, env, flags, binary=binary)
        assert hidden.returncode == 0 and shown.returncode == 0, (label, hidden.stderr, shown.stderr)
        reached |= {s for s in secrets if s in shown.stdout}
        printed = [s for s in secrets if s in hidden.stdout]
        assert not printed, f"{label}: `crowdtick config` prints {printed}"
        hidden_settings, shown_settings = tomllib.loads(hidden.stdout), tomllib.loads(shown.stdout)
        for section, key in [("", "operator_keys"), ("ingest", "aggregators"), ("ingest", "voter_tokens"),
                             ("postgres", "url"), ("redis", "url")]:
            for settings in (hidden_settings, shown_settings):
                (settings[section] if section else settings).pop(key, None)
        assert hidden_settings == shown_settings, label
    assert reached == set(secrets), f"secrets of the chart that reach no container: {set(secrets) - reached}"
