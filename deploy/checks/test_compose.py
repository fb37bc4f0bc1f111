"""Checks of the docker compose deployment (docker-compose.yml, deploy/compose, deploy/prometheus, deploy/grafana), without a Docker engine.

Run: target/pyenv/bin/pytest deploy/checks

- the compose file validates with Debian's `docker-compose config` (v1.29; `apt-get install
  docker-compose`) and against the compose-spec JSON schema (shipped by check-jsonschema);
- structure: ports on 127.0.0.1 only, healthchecks, depends_on conditions, distinct processor
  instance ids, named volumes, pinned images, every mounted file present (the proxy's routing,
  Prometheus and the Grafana dashboard: test_compose_observability.py); the schema registry and
  ScyllaDB wired in (every CrowdTick service's settings name them, the nodes and `migrate` wait
  for them, the keyspace's replication fits the one Scylla node);
- (the image itself: test_image.py);
- settings: every CrowdTick service's CROWDTICK_* environment (the image's ENV, then the service's,
  `${VAR:-default}` resolved, YAML anchors merged) is accepted by `crowdtick config`, printed back
  as given, and refused once any one key is misspelled. Needs the built binary
  ($CROWDTICK_TEST_BIN or target/debug/crowdtick): missing, these tests fail, never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO, dockerfile_env, run_crowdtick_config
from compose_support import (
    COMPOSE_FILE,
    CROWDTICK_IMAGE,
    NODE_ROLES,
    NOT_SETTINGS,
    bind_mounts,
    command_of,
    crowdtick_nodes,
    crowdtick_services,
    env_dict,
    host_path,
    is_crowdtick,
    is_one_shot,
    load_compose,
    load_raw,
    mounted_file,
    role_of,
    services_with_image,
)


# --------------------------------------------------------------------------------------------
# docker-compose v1.29 and the compose-spec schema
# --------------------------------------------------------------------------------------------


def docker_compose_binary() -> str:
    path = shutil.which("docker-compose")
    if not path:
        pytest.fail(
            "docker-compose is missing: install Debian's package with "
            "`apt-get update && apt-get install -y docker-compose` (v1.29; it validates compose "
            "files without a Docker engine)",
            pytrace=False,
        )
    return path


def docker_compose_config(file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as home:
        # Only PATH: no COMPOSE_*, no CROWDTICK_OPERATOR_KEY etc. from the caller's shell, so the
        # defaults are what gets checked.
        return subprocess.run(
            [docker_compose_binary(), "--project-directory", str(REPO), "-f", str(file), *args],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home},
            capture_output=True,
            text=True,
            timeout=120,
        )


def test_docker_compose_config_accepts_the_file():
    for profile_args in ([], ["--profile", "loadtest"]):
        r = docker_compose_config(COMPOSE_FILE, *profile_args, "config", "-q")
        assert r.returncode == 0, f"docker-compose {' '.join(profile_args)} config -q:\n{r.stderr}"


def test_docker_compose_resolves_what_these_checks_resolve():
    """docker-compose's own resolution (anchors, ${VAR:-default}, profiles, depends_on conditions)
    agrees with the PyYAML + interpolation reading the other checks use."""
    r = docker_compose_config(COMPOSE_FILE, "--profile", "loadtest", "config")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)["services"]
    ours = load_compose()["services"]
    assert set(resolved) == set(ours)
    for name, service in ours.items():
        assert env_dict(resolved[name].get("environment")) == env_dict(service.get("environment")), name
        assert command_of(resolved[name]) == command_of(service), name
        assert resolved[name].get("profiles") == service.get("profiles"), name
        deps = resolved[name].get("depends_on") or {}
        assert deps == (service.get("depends_on") or {}), f"{name}: depends_on as docker-compose reads it"
    assert any(p == ["loadtest"] for p in (s.get("profiles") for s in resolved.values()))
    conditions = {c["condition"] for s in resolved.values() for c in (s.get("depends_on") or {}).values()}
    assert {"service_healthy", "service_completed_successfully"} <= conditions


def test_docker_compose_really_checks_conditions_and_profiles(tmp_path):
    """The validator is not a rubber stamp: a wrong depends_on condition or a malformed profile
    list makes it fail, so its pass above means something."""
    raw = COMPOSE_FILE.read_text(encoding="utf-8")
    broken = {
        "condition": raw.replace("condition: service_completed_successfully", "condition: service_finished", 1),
        "profiles": raw.replace('profiles: ["loadtest"]', "profiles: loadtest", 1),
    }
    for what, text in broken.items():
        assert text != raw, f"the compose file no longer has the {what} this check breaks"
        f = tmp_path / f"broken-{what}.yml"
        f.write_text(text, encoding="utf-8")
        r = docker_compose_config(f, "--profile", "loadtest", "config", "-q")
        assert r.returncode != 0, f"docker-compose accepted a broken {what}"


def test_compose_spec_schema():
    """The compose file against the official compose-spec JSON schema (vendored by the
    check-jsonschema package, deploy/checks/requirements.txt)."""
    from importlib import resources

    import jsonschema

    try:
        schema_text = (
            resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text("utf-8")
        )
    except ModuleNotFoundError:
        pytest.fail("check-jsonschema is missing: pip install -r deploy/checks/requirements.txt", pytrace=False)
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(load_raw()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20])


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def test_crowdtick_services_are_all_there():
    compose = load_compose()
    roles = sorted(role_of(s) for s in crowdtick_services(compose).values())
    for role, least in {"migrate": 1, "query": 1, "ingest": 2, "processor": 2, "realtime": 1, "loadgen": 1}.items():
        assert roles.count(role) >= least, f"{least} {role} service(s) expected, have {roles}"
    for name, s in crowdtick_services(compose).items():
        assert s.get("image") == CROWDTICK_IMAGE, f"{name}: every CrowdTick service is the image {CROWDTICK_IMAGE}"
        build = s.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        assert context == ".", f"{name}: built from the repository's Dockerfile (build: .)"


def test_every_port_is_published_on_loopback_only():
    compose = load_compose({})
    published = 0
    for name, s in compose["services"].items():
        assert s.get("network_mode") != "host", f"{name}: host networking publishes every port"
        for p in s.get("ports", []) or []:
            published += 1
            if isinstance(p, dict):
                assert p.get("host_ip") == "127.0.0.1", f"{name}: port {p} is not bound to 127.0.0.1"
                continue
            p = str(p)
            assert p.startswith("127.0.0.1:") and p.count(":") == 2, (
                f"{name}: port {p!r} must be 127.0.0.1:HOST:CONTAINER"
            )
    assert published, "nothing is published"
    proxy = compose["services"]["proxy"]
    assert "127.0.0.1:8080:8080" in proxy["ports"], "CrowdTick (the proxy) is at 127.0.0.1:8080"


def test_every_long_running_service_has_a_healthcheck():
    compose = load_compose()
    for name, s in compose["services"].items():
        hc = s.get("healthcheck") or {}
        if is_one_shot(s):
            if is_crowdtick(s):
                # The image's HEALTHCHECK probes a server a one-shot command never starts.
                assert hc.get("disable") is True, f"{name}: one-shot, the image's healthcheck must be disabled"
            continue
        assert str(s.get("restart")) in {"unless-stopped", "always", "on-failure"}, f"{name}: restart policy"
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc.get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, f"{name}: {test}"
        assert hc.get("interval") and hc.get("timeout") and hc.get("retries"), f"{name}: interval/timeout/retries"
    for name, s in crowdtick_nodes(compose).items():
        assert s["healthcheck"]["test"] == [
            "CMD", "crowdtick", "healthcheck", "--url", "http://127.0.0.1:8080/readyz"
        ], f"{name}: CrowdTick nodes report readiness"


def test_depends_on_uses_conditions_and_crowdtick_waits_for_migrate():
    compose = load_compose()
    services = compose["services"]
    for name, s in services.items():
        deps = s.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            cond = spec.get("condition")
            if cond == "service_healthy":
                target_hc = services[dep].get("healthcheck") or {}
                assert target_hc and not target_hc.get("disable"), f"{name} waits for {dep} to be healthy: it has no healthcheck"
            elif cond == "service_completed_successfully":
                assert is_one_shot(services[dep]), f"{name} waits for {dep} to complete, but it restarts"
            else:
                pytest.fail(f"{name} -> {dep}: condition {cond!r}; use service_healthy or service_completed_successfully")
            if not services[dep].get("profiles"):
                continue
            assert set(s.get("profiles") or []) >= set(services[dep]["profiles"]), (
                f"{name} depends on {dep}, which is only in profiles {services[dep]['profiles']}"
            )
    migrates = [n for n, s in crowdtick_services(compose).items() if role_of(s) == "migrate"]
    assert len(migrates) == 1, migrates
    migrate = migrates[0]
    assert is_one_shot(services[migrate]), "migrate is one-shot: restart: \"no\""
    # migrate creates the PostgreSQL tables and the ScyllaDB keyspace and tables.
    for infra in ("postgres", "scylla"):
        assert services[migrate]["depends_on"].get(infra, {}).get("condition") == "service_healthy", (
            f"{migrate} must wait for {infra}"
        )
    for name in crowdtick_nodes(compose):
        deps = services[name].get("depends_on") or {}
        assert deps.get(migrate, {}).get("condition") == "service_completed_successfully", (
            f"{name} must depend on {migrate} with condition service_completed_successfully"
        )
        # A node connects to all of these at start (and exits when one is unreachable).
        for infra in ("kafka", "postgres", "redis", "schema-registry", "scylla"):
            assert deps.get(infra, {}).get("condition") == "service_healthy", f"{name} must wait for {infra}"


def test_processors_have_distinct_instance_ids():
    compose = load_compose()
    ids = {}
    for name, s in crowdtick_nodes(compose).items():
        if role_of(s) == "processor":
            ids[name] = env_dict(s.get("environment")).get("CROWDTICK_PROCESSOR__INSTANCE_ID", "")
    assert len(ids) >= 2, f"two processors expected: {ids}"
    assert all(ids.values()), f"every processor needs CROWDTICK_PROCESSOR__INSTANCE_ID (static membership): {ids}"
    assert len(set(ids.values())) == len(ids), f"processor instance ids must differ: {ids}"


def test_pinned_images_and_named_volumes():
    raw = load_raw()
    compose = load_compose()
    declared = set((raw.get("volumes") or {}).keys())
    used = set()
    for name, s in compose["services"].items():
        image = str(s.get("image", ""))
        if image != CROWDTICK_IMAGE:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned"
        for v in s.get("volumes", []) or []:
            src = v.get("source") if isinstance(v, dict) and v.get("type") == "volume" else None
            if isinstance(v, str) and not v.startswith((".", "/", "~")) and ":" in v:
                src = v.split(":")[0]
            if src:
                assert src in declared, f"{name}: volume {src} is not declared under volumes:"
                used.add(src)
    for stateful in ("kafka", "postgres", "redis", "scylla", "prometheus", "grafana"):
        s = compose["services"][stateful]
        assert any(
            isinstance(v, str) and v.split(":")[0] in declared for v in s.get("volumes", [])
        ), f"{stateful} keeps its data in a named volume"
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_every_mounted_file_exists():
    compose = load_compose()
    mounts = 0
    for name, s in compose["services"].items():
        for src, _ in bind_mounts(s):
            mounts += 1
            p = host_path(src)
            assert p.exists(), f"{name} mounts {src}, which is not in the repository"
            assert REPO in p.parents, f"{name} mounts {src} from outside the repository"
        build = s.get("build")
        if build:
            context = host_path(build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: no {dockerfile} in {context}"
    assert mounts >= 4
    # What the mounted files point at inside the containers is there too.
    grafana = compose["services"]["grafana"]
    home = env_dict(grafana.get("environment")).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert mounted_file(grafana, home).is_file(), f"Grafana's home dashboard {home} is not mounted"
    providers = yaml.safe_load(mounted_file(grafana, "/etc/grafana/provisioning/dashboards/crowdtick.yml").read_text())
    for provider in providers["providers"]:
        d = mounted_file(grafana, provider["options"]["path"])
        assert d.is_dir() and list(d.glob("*.json")), f"dashboard provider path {provider['options']['path']} has no dashboards"
    for locust in services_with_image(compose, "locustio/locust"):
        cmd = command_of(compose["services"][locust])
        assert mounted_file(compose["services"][locust], cmd[cmd.index("-f") + 1]).is_file()


def test_locust_and_loadgen_target_the_proxy():
    compose = load_compose()
    services = compose["services"]
    lg = [n for n, s in crowdtick_services(compose).items() if role_of(s) == "loadgen"]
    assert lg, "a loadgen service"
    for name in lg:
        s = services[name]
        assert s.get("profiles") == ["loadtest"], f"{name} is in the loadtest profile"
        cmd = command_of(s)
        assert cmd[cmd.index("--url") + 1] == "http://proxy:8080" and "--allow-remote" in cmd, cmd
    locusts = services_with_image(compose, "locustio/locust")
    assert len(locusts) >= 2, "a Locust master and workers"
    masters = [n for n in locusts if "--master" in command_of(services[n])]
    workers = [n for n in locusts if "--worker" in command_of(services[n])]
    assert masters and workers, locusts
    for n in locusts:
        s = services[n]
        assert s.get("profiles") == ["loadtest"], f"{n} is in the loadtest profile"
        assert env_dict(s.get("environment")).get("CROWDTICK_ALLOW_REMOTE") == "1", f"{n}: the proxy is not loopback"
    for n in masters:
        cmd = command_of(services[n])
        assert cmd[cmd.index("--host") + 1] == "http://proxy:8080", cmd
    for n in workers:
        cmd = command_of(services[n])
        assert cmd[cmd.index("--master-host") + 1] in masters, cmd


def host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of `host:port`, `scheme://host:port[/path]` or `PROTOCOL://host:port`."""
    m = re.fullmatch(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?([^/:]+)(?::(\d+))?(?:/.*)?", address.strip())
    assert m, f"not host:port: {address!r}"
    port = m.group(2) or default_port
    assert port is not None, f"no port in {address!r}"
    return m.group(1), int(port)


def test_crowdtick_uses_the_schema_registry_and_scylla(crowdtick_bin):
    """Every CrowdTick service (nodes, migrate and loadgen's image aside) is given the schema
    registry and ScyllaDB of this file, as the binary reads its settings: the registry's own
    listener, on the Kafka CrowdTick writes to; the Scylla node's CQL port, with a keyspace the
    one node can hold (a replication factor above the node count would make every write fail)."""
    compose = load_compose()
    services = compose["services"]
    registry_env = env_dict(services["schema-registry"].get("environment"))
    (listener,) = registry_env["SCHEMA_REGISTRY_LISTENERS"].split(",")
    registry_port = host_port(listener)[1]
    scylla_nodes = services_with_image(compose, "scylladb/scylla")
    assert scylla_nodes == ["scylla"], scylla_nodes
    checked: dict[str, tuple[str, str]] = {}
    for name, s in crowdtick_services(compose).items():
        if role_of(s) not in NODE_ROLES | {"migrate"}:
            continue
        r = config_of(settings_of(name), crowdtick_bin)
        assert r.returncode == 0, f"{name}: `crowdtick config` refused its environment:\n{r.stderr}"
        printed = tomllib.loads(r.stdout)
        sr, sc = printed["schema_registry"], printed["scylla"]

        urls = [u for u in sr["url"].split(",") if u.strip()]
        assert urls, f"{name}: schema_registry.url is empty: the records would carry no schema id"
        for url in urls:
            assert host_port(url) == ("schema-registry", registry_port), f"{name}: schema_registry.url {url}"
        assert sr["auto_register"] is True, f"{name}: nothing else registers CrowdTick's schemas here"
        assert sr["timeout_ms"] > 0, name
        # The registry keeps its schemas on the Kafka CrowdTick writes to.
        store = {host_port(b) for b in registry_env["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"].split(",")}
        assert store == {host_port(b) for b in printed["kafka"]["brokers"].split(",")}, (name, store)

        hosts = [host_port(h) for h in sc["hosts"].split(",") if h.strip()]
        assert hosts == [("scylla", 9042)], f"{name}: scylla.hosts {sc['hosts']!r}"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,47}", sc["keyspace"]), f"{name}: keyspace {sc['keyspace']!r}"
        assert sc["replication_class"] in ("SimpleStrategy", "NetworkTopologyStrategy"), name
        assert 1 <= sc["replication_factor"] <= len(scylla_nodes), (
            f"{name}: replication_factor {sc['replication_factor']} with {len(scylla_nodes)} Scylla node(s)"
        )
        assert printed["postgres"]["url"], f"{name}: polls stay in PostgreSQL"
        checked[name] = (sc["keyspace"], sr["url"])
    roles = sorted(role_of(services[n]) for n in checked)
    assert "migrate" in roles and len(roles) >= 7, roles
    # All of them agree: the keyspace migrate creates is the one the nodes use, one registry.
    assert len(set(checked.values())) == 1, checked


# --------------------------------------------------------------------------------------------
# Settings: every CrowdTick service's environment through the real binary.
# --------------------------------------------------------------------------------------------

_SERVICES = sorted(crowdtick_services(load_compose()))


def settings_of(service: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The CROWDTICK_* environment a container of `service` starts with: the image's ENV, then
    the service's environment (variables resolved against `env`)."""
    s = load_compose(env)["services"][service]
    merged = {k: v for k, v in dockerfile_env().items() if k.startswith("CROWDTICK_")}
    merged.update({k: v for k, v in env_dict(s.get("environment")).items() if k.startswith("CROWDTICK_")})
    return merged


_RESULTS: dict[frozenset, subprocess.CompletedProcess] = {}


def config_of(env: dict[str, str], binary: Path) -> subprocess.CompletedProcess:
    key = frozenset(env.items())
    if key not in _RESULTS:
        _RESULTS[key] = run_crowdtick_config(None, env, binary=binary)
    return _RESULTS[key]


def printed_value(config: dict, var: str):
    node = config
    for part in var.removeprefix("CROWDTICK_").lower().split("__"):
        assert isinstance(node, dict) and part in node, f"{var}: `crowdtick config` prints no {part}"
        node = node[part]
    return node


def as_given(value, text: str) -> bool:
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        return float(text) == value
    if isinstance(value, list):
        # A list of strings is given as JSON, a list of tables as a TOML inline array.
        try:
            return value == json.loads(text)
        except json.JSONDecodeError:
            return value == tomllib.loads(f"v = {text}")["v"]
    return value == text


def misspellings(var: str) -> list[str]:
    """One or two misspelt names of `var`: the last letter dropped (or doubled, where dropping
    it gives a valid name), and a nested key with one underscore instead of two."""
    out = [var[:-1] if var[:-1] not in NOT_SETTINGS else var + var[-1]]
    if "__" in var:
        out.append(var.replace("__", "_", 1))
    return out


@pytest.mark.parametrize("service", _SERVICES)
def test_settings_are_accepted_and_printed_back(service, crowdtick_bin):
    env = settings_of(service)
    assert env, f"{service} has no CROWDTICK_* settings"
    r = config_of(env, crowdtick_bin)
    assert r.returncode == 0, f"{service}: `crowdtick config` refused its environment:\n{r.stderr}\n{env}"
    printed = tomllib.loads(r.stdout)
    for var, text in env.items():
        if var in NOT_SETTINGS:
            continue
        value = printed_value(printed, var)
        assert as_given(value, text), f"{service}: {var}={text!r} but `crowdtick config` says {value!r}"


@pytest.mark.parametrize("service", _SERVICES)
def test_one_misspelt_key_is_refused(service, crowdtick_bin):
    env = settings_of(service)
    tried = 0
    for var in env:
        for wrong in misspellings(var):
            bad = {(wrong if k == var else k): v for k, v in env.items()}
            r = config_of(bad, crowdtick_bin)
            tried += 1
            assert r.returncode != 0, f"{service}: {var} misspelt as {wrong} was accepted"
            last = wrong.removeprefix("CROWDTICK_").split("__")[-1].lower()
            assert wrong.lower() in r.stderr.lower() or last in r.stderr.lower(), (
                f"{service}: the error does not name {wrong}:\n{r.stderr}"
            )
    assert tried >= len(env)


def test_operator_key_comes_from_the_environment(crowdtick_bin):
    """CROWDTICK_OPERATOR_KEY on the host becomes the nodes' operator key."""
    (node, *_) = sorted(crowdtick_nodes(load_compose()))
    assert settings_of(node)["CROWDTICK_OPERATOR_KEYS"] == '["dev-operator-key"]'
    env = settings_of(node, {"CROWDTICK_OPERATOR_KEY": "s3cret-Key_1"})
    r = config_of(env, crowdtick_bin)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout)["operator_keys"] == ["s3cret-Key_1"]
    for name, s in load_compose({"CROWDTICK_OPERATOR_KEY": "s3cret-Key_1"})["services"].items():
        if "CROWDTICK_OPERATOR_KEY" in env_dict(s.get("environment")):
            assert env_dict(s["environment"])["CROWDTICK_OPERATOR_KEY"] == "s3cret-Key_1", name
