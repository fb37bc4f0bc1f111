"""Checks of the Helm chart helm/crowdtick: the API's secrets, offline (see test_helm.py for the rest).

    target/pyenv/bin/pytest deploy/checks/test_helm_secrets.py

the API's secrets: CROWDTICK_INGEST__AGGREGATORS is always set from a Secret (never the binary's
   laptop default), in exactly the inline-array form figment parses; the voter-token HMAC secret
   only when set; admission control and [ingest.voter_tokens] in crowdtick.toml.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from figment_env import FigmentParseError, figment_unescape, parse_figment_env_value  # noqa: F401
from conftest import run_crowdtick_config
from helm_support import (  # noqa: F401 (chart is a fixture)
    AGGREGATORS_VAR,
    ED25519_PUBLIC_KEY_PEM,
    HMAC_VAR,
    IDENTITY_VALUES,
    NAMESPACE,
    RELEASE,
    TRICKY_KEY,
    VALUE_SETS,
    chart,
    expected_aggregators,
    find,
    pod_specs,
    render,
    rendered_data,
)


# --- 5. the API's secrets: aggregators, voter tokens; admission control ----------------------


SERVICE_WORKLOADS = [("Deployment", "crowdtick-ingest"), ("Deployment", "crowdtick-query"),
                     ("Deployment", "crowdtick-realtime"), ("StatefulSet", "crowdtick-processor")]


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
            assert figment_unescape(quoted[1:-1]) == json.loads(quoted), quoted
    parsed = parse_figment_env_value(text)
    assert isinstance(parsed, list)
    for entry in parsed:
        assert list(entry) == ["name", "key", "votes_per_sec", "burst"], entry
    return parsed


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
                 "shed_wait_interval_ms", "pause_reads_in_flight", "shed_backlog_appends",
                 "shed_backlog_quiet_ms", "shed_retry_after_max_secs")
    assert {k: default["ingest"][k] for k in admission} == \
        {"max_in_flight_votes": 200000, "shed_target_ms": 500, "shed_interval_ms": 1000,
         "shed_wait_target_ms": 10, "shed_wait_interval_ms": 100, "pause_reads_in_flight": 4096,
         "shed_backlog_appends": 0, "shed_backlog_quiet_ms": 1000, "shed_retry_after_max_secs": 3}
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
         "shed_wait_target_ms": 25, "shed_wait_interval_ms": 300, "pause_reads_in_flight": 8192,
         "shed_backlog_appends": 2048, "shed_backlog_quiet_ms": 500, "shed_retry_after_max_secs": 5}
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
    ({"ingest": {"admission": {"shedBacklogAppends": -1}}}, "/ingest/admission/shedBacklogAppends"),
    ({"ingest": {"admission": {"shedBacklogQuietMs": 0}}}, "/ingest/admission/shedBacklogQuietMs"),
    ({"ingest": {"admission": {"shedRetryAfterMaxSecs": 0}}}, "/ingest/admission/shedRetryAfterMaxSecs"),
    ({"ingest": {"admission": {"shedRetryAfterMaxSecs": 3601}}}, "/ingest/admission/shedRetryAfterMaxSecs"),
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


@pytest.mark.parametrize("admission", [
    {"shedBacklogAppends": 4096},
    {"shedBacklogAppends": 250, "pauseReadsInFlight": 0},
])
def test_templates_refuse_a_backlog_bound_at_or_above_the_read_pause(chart: helm.Chart, admission: dict) -> None:
    """The backlog rule starts at a read pause: a bound at or above pauseReadsInFlight adds nothing."""
    with pytest.raises(helm.HelmRenderError, match=r"shedBacklogAppends \(\d+\) must be below"):
        chart.render({"ingest": {"admission": admission}}, name=RELEASE, namespace=NAMESPACE)
    below = {"pauseReadsInFlight": 1000, "shedBacklogAppends": 250}
    toml = tomllib.loads(find(render(chart, {"ingest": {"admission": below}}), "ConfigMap",
                              "crowdtick")["data"]["crowdtick.toml"])
    assert (toml["ingest"]["shed_backlog_appends"], toml["ingest"]["pause_reads_in_flight"]) == (250, 1000)


@pytest.mark.parametrize("key, value, values_key, accepted", [
    ("shed_backlog_quiet_ms", 0, "shedBacklogQuietMs", False),
    ("shed_backlog_quiet_ms", 1, "shedBacklogQuietMs", True),
    ("shed_retry_after_max_secs", 0, "shedRetryAfterMaxSecs", False),
    ("shed_retry_after_max_secs", 1, "shedRetryAfterMaxSecs", True),
    ("shed_retry_after_max_secs", 3600, "shedRetryAfterMaxSecs", True),
    ("shed_retry_after_max_secs", 3601, "shedRetryAfterMaxSecs", False),
])
def test_the_binary_and_the_schema_agree_on_the_shed_settings(chart: helm.Chart, key: str, value: int,
                                                               values_key: str, accepted: bool) -> None:
    """A value the chart refuses is one CrowdTick refuses at start too (and says which), and one
    it renders starts."""
    result = run_crowdtick_config(f"[ingest]\n{key} = {value}\n", {})
    assert (result.returncode == 0) == accepted, (key, value, result.stderr)
    if not accepted:
        assert f"ingest.{key}" in result.stderr, result.stderr
    values = {"ingest": {"admission": {values_key: value}}}
    if accepted:
        toml = tomllib.loads(find(render(chart, values), "ConfigMap", "crowdtick")["data"]["crowdtick.toml"])
        assert toml["ingest"][key] == value
    else:
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
