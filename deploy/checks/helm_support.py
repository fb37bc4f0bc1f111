"""What the Helm chart checks share: rendering the chart (helm-python-sdk), finding objects in
what it renders, and the values the checks render it with."""

from __future__ import annotations

import base64
from typing import Any, Iterator

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from figment_env import parse_figment_env_value
from conftest import REPO

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
                      "shedWaitTargetMs": 25, "shedWaitIntervalMs": 300, "pauseReadsInFlight": 8192,
                      "shedBacklogAppends": 2048, "shedBacklogQuietMs": 500, "shedRetryAfterMaxSecs": 5},
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


def rendered_data(docs: list[dict], kind: str, name: str) -> dict[str, str] | None:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if not matches:
        return None
    if kind == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (matches[0].get("data") or {}).items()}
        data.update(matches[0].get("stringData") or {})
        return data
    return matches[0].get("data") or {}


AGGREGATORS_VAR = "CROWDTICK_INGEST__AGGREGATORS"


HMAC_VAR = "CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET"


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
