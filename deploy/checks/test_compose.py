"""Checks of the docker compose deployment (docker-compose.yml, deploy/compose, deploy/prometheus, deploy/grafana), without a Docker engine.

Run: target/pyenv/bin/pytest deploy/checks

- the compose file validates with Debian's `docker-compose config` (v1.29; `apt-get install
  docker-compose`) and against the compose-spec JSON schema (shipped by check-jsonschema);
- structure: ports on 127.0.0.1 only, healthchecks, depends_on conditions, distinct processor
  instance ids, named volumes, pinned images, every mounted file present, the proxy's routing
  (nginx.conf parsed and matched as nginx matches locations), Prometheus scraping every node, the
  Grafana dashboard using only metrics that the Rust sources export; the schema registry and
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
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO, dockerfile_env, run_crowdtick_config

COMPOSE_FILE = REPO / "docker-compose.yml"
CROWDTICK_IMAGE = "crowdtick:local"
# The long-running CrowdTick roles (the subcommand a service runs).
NODE_ROLES = {"query", "ingest", "processor", "realtime", "serve"}
# CROWDTICK_* variables that are not settings (the binary allows them; see src/config.rs).
NOT_SETTINGS = {"CROWDTICK_CONFIG", "CROWDTICK_OPERATOR_KEY", "CROWDTICK_AGGREGATOR_KEY", "CROWDTICK_ALLOW_REMOTE"}
# Sources that register the exported metrics (`"crowdtick_…"` string literals).
METRIC_SOURCE_DIRS = ["ingest", "processor", "realtime", "src", "storage", "query"]


# --------------------------------------------------------------------------------------------
# Loading the compose file: PyYAML (merge keys `<<`) and compose's `${VAR}` interpolation.
# --------------------------------------------------------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution on every string of `value` (as `docker compose` does)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            if (op == ":?" and not current) or current is None:
                raise AssertionError(f"${{{name}}} is required: {arg}")
            return current
        return current or ""

    return _VAR.sub(sub, value)


def load_raw() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_compose(env: dict[str, str] | None = None) -> dict:
    """The compose file with anchors merged and variables resolved against `env` (default: none
    set, so every `${VAR:-default}` takes its default)."""
    return interpolate(load_raw(), env or {})


def env_dict(environment) -> dict[str, str]:
    """A service's `environment` (mapping or list form) as a dict of strings."""
    if environment is None:
        return {}
    if isinstance(environment, list):
        out = {}
        for item in environment:
            k, _, v = item.partition("=")
            out[k] = v
        return out
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in environment.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def is_crowdtick(service: dict) -> bool:
    return service.get("image") == CROWDTICK_IMAGE or "build" in service


def role_of(service: dict) -> str:
    cmd = command_of(service)
    return cmd[0] if cmd else "serve"  # the image's CMD is `serve`


def is_one_shot(service: dict) -> bool:
    return str(service.get("restart", "no")) == "no"


def crowdtick_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if is_crowdtick(s)}


def crowdtick_nodes(compose: dict) -> dict[str, dict]:
    """The long-running CrowdTick services (not migrate, not loadgen)."""
    return {
        n: s
        for n, s in crowdtick_services(compose).items()
        if role_of(s) in NODE_ROLES and not is_one_shot(s)
    }


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount of a service."""
    out = []
    for v in service.get("volumes", []) or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
            continue
        parts = v.split(":")
        if parts[0].startswith((".", "/", "~")):
            out.append((parts[0], parts[1]))
    return out


def host_path(source: str) -> Path:
    p = Path(source)
    return p if p.is_absolute() else (REPO / p).resolve()


def mounted_file(service: dict, container_path: str) -> Path:
    """The repository file a service mounts at `container_path` (a file, or inside a directory)."""
    for src, dst in bind_mounts(service):
        dst = dst.rstrip("/")
        if container_path == dst:
            return host_path(src)
        if container_path.startswith(dst + "/"):
            return host_path(src) / container_path[len(dst) + 1 :]
    raise AssertionError(f"nothing is mounted at {container_path}: {bind_mounts(service)}")


def services_with_image(compose: dict, prefix: str) -> list[str]:
    return [n for n, s in compose["services"].items() if str(s.get("image", "")).startswith(prefix)]


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
# The proxy: nginx.conf parsed, locations matched as nginx matches them.
# --------------------------------------------------------------------------------------------


def parse_nginx(text: str) -> list:
    """nginx configuration as a tree of (name, args, children|None)."""
    tokens = re.findall(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#[^\n]*|[{};]|[^\s{};]+", text)
    tokens = [t for t in tokens if not t.startswith("#")]
    pos = 0

    def block() -> list:
        nonlocal pos
        out = []
        words: list[str] = []
        while pos < len(tokens):
            t = tokens[pos]
            pos += 1
            if t == ";":
                out.append((words[0], words[1:], None))
                words = []
            elif t == "{":
                out.append((words[0], words[1:], block()))
                words = []
            elif t == "}":
                assert not words, f"unterminated directive {words}"
                return out
            else:
                words.append(t[1:-1] if t[0] in "\"'" else t)
        assert not words, f"unterminated directive {words}"
        return out

    return block()


def find(tree: list, name: str) -> list:
    return [d for d in tree if d[0] == name]


class Nginx:
    def __init__(self, path: Path):
        tree = parse_nginx(path.read_text(encoding="utf-8"))
        (http,) = find(tree, "http")
        self.http = http[2]
        self.upstreams = {
            u[1][0]: [s[1][0] for s in find(u[2], "server")] for u in find(self.http, "upstream")
        }
        (self.server,) = [s[2] for s in find(self.http, "server")]
        self.locations = [(loc[1], loc[2]) for loc in find(self.server, "location")]

    def listen_ports(self) -> set[int]:
        return {int(d[1][0].rsplit(":", 1)[-1]) for d in find(self.server, "listen")}

    def location_for(self, path: str):
        """nginx's choice: exact `=`, else the longest prefix (final if `^~`), else the first
        matching regex, else the longest prefix."""
        prefixes = []
        for args, body in self.locations:
            if args[0] == "=" and args[1] == path:
                return args, body
            if args[0] in ("~", "~*"):
                continue
            if args[0] == "^~" and path.startswith(args[1]):
                prefixes.append((len(args[1]), True, args, body))
            elif args[0] not in ("=", "^~") and path.startswith(args[0]):
                prefixes.append((len(args[0]), False, args, body))
        best = max(prefixes, key=lambda p: p[0]) if prefixes else None
        if best and best[1]:
            return best[2], best[3]
        for args, body in self.locations:
            if args[0] in ("~", "~*"):
                flags = re.IGNORECASE if args[0] == "~*" else 0
                if re.search(args[1], path, flags):
                    return args, body
        assert best, f"no location matches {path}"
        return best[2], best[3]

    def directive(self, body: list, name: str) -> list[list[str]]:
        """A directive as a location gets it: its own, else inherited from server, else http."""
        for level in (body, self.server, self.http):
            found = [d[1] for d in find(level, name)]
            if found:
                return found
        return []

    def backends_for(self, path: str) -> tuple[set[str], list]:
        args, body = self.location_for(path)
        (target,) = self.directive(body, "proxy_pass")
        m = re.fullmatch(r"http://([^/:]+)(?::\d+)?(/.*)?", target[0])
        assert m, f"proxy_pass {target[0]}"
        name = m.group(1)
        servers = self.upstreams.get(name, [f"{name}:80"])
        return {s for s in servers}, body


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", v)
    assert m, v
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def proxy_config(compose: dict) -> tuple[str, Nginx]:
    (proxy,) = services_with_image(compose, "nginx:")
    return proxy, Nginx(mounted_file(compose["services"][proxy], "/etc/nginx/nginx.conf"))


def test_proxy_routes_votes_to_ingest_live_to_realtime_and_the_rest_to_query():
    compose = load_compose()
    nodes = crowdtick_nodes(compose)
    by_role: dict[str, set[str]] = {}
    for name, s in nodes.items():
        port = env_dict(s.get("environment"))["CROWDTICK_LISTEN"].rsplit(":", 1)[1]
        by_role.setdefault(role_of(s), set()).add(f"{name}:{port}")
    proxy, nginx = proxy_config(compose)
    for path, role in [
        ("/v1/votes", "ingest"),
        ("/v1/votes/batch", "ingest"),
        ("/v1/polls/1/ws", "realtime"),
        ("/v1/polls/123/sse", "realtime"),
        ("/", "query"),
        ("/v1/polls", "query"),
        ("/v1/polls/1", "query"),
        ("/v1/polls/1/results", "query"),
        ("/v1/polls/1/timeline", "query"),
        ("/v1/polls/1/open", "query"),
        ("/openapi.json", "query"),
        ("/p/AbC12", "query"),
        ("/screen/1", "query"),
        ("/metrics", "query"),
    ]:
        backends, body = nginx.backends_for(path)
        assert backends == by_role[role], f"{path} goes to {backends}, expected every {role} node {by_role[role]}"
        if role == "realtime":
            headers = {tuple(h[:1]): h[1] for h in nginx.directive(body, "proxy_set_header")}
            assert headers.get(("Upgrade",)) == "$http_upgrade", f"{path}: WebSocket Upgrade header not passed"
            assert "upgrade" in headers.get(("Connection",), "").lower(), f"{path}: Connection header not upgraded"
            assert nginx.directive(body, "proxy_http_version") == [["1.1"]], f"{path}: HTTP/1.1 upstream"
            assert nginx.directive(body, "proxy_buffering") == [["off"]], f"{path}: SSE must not be buffered"
            timeout = nginx.directive(body, "proxy_read_timeout")
            assert timeout and seconds(timeout[0][0]) >= 600, f"{path}: long read timeout for live connections"
    # Every upstream server is a compose service, on the port its node listens on.
    for name, servers in nginx.upstreams.items():
        for server in servers:
            assert server in {b for bs in by_role.values() for b in bs}, f"upstream {name}: {server} is no CrowdTick node"
    # The proxy listens where the compose file publishes it.
    published = {int(str(p).split(":")[-1].split("/")[0]) for p in compose["services"][proxy]["ports"]}
    assert published <= nginx.listen_ports(), f"published {published}, nginx listens on {nginx.listen_ports()}"


# --------------------------------------------------------------------------------------------
# Prometheus and Grafana
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def exported_metrics() -> frozenset[str]:
    """Every `"crowdtick_…` string literal in the Rust sources that render /metrics."""
    names = set()
    for d in METRIC_SOURCE_DIRS:
        for f in (REPO / d).rglob("*.rs"):
            names.update(re.findall(r"\"(crowdtick_[a-z0-9_]+)", f.read_text(encoding="utf-8")))
    return frozenset(names)


def is_exported(metric: str) -> bool:
    names = exported_metrics()
    if metric in names:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", metric)
    return base != metric and base in names


def test_prometheus_scrapes_every_crowdtick_node():
    compose = load_compose()
    (prom,) = services_with_image(compose, "prom/prometheus")
    config = yaml.safe_load(mounted_file(compose["services"][prom], "/etc/prometheus/prometheus.yml").read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    for name, s in crowdtick_nodes(compose).items():
        port = env_dict(s.get("environment"))["CROWDTICK_LISTEN"].rsplit(":", 1)[1]
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
    for t in targets:
        host = t.rsplit(":", 1)[0]
        assert host in compose["services"] or host in ("127.0.0.1", "localhost"), f"stale target {t}"


def test_grafana_datasource_and_dashboard_use_exported_metrics():
    assert len(exported_metrics()) > 10, f"found too few metrics in the sources: {sorted(exported_metrics())}"
    compose = load_compose()
    (grafana,) = services_with_image(compose, "grafana/grafana")
    g = compose["services"][grafana]
    ds = yaml.safe_load(mounted_file(g, "/etc/grafana/provisioning/datasources/prometheus.yml").read_text())
    (prom_ds,) = [d for d in ds["datasources"] if d["type"] == "prometheus"]
    assert re.fullmatch(r"http://prometheus:9090/?", prom_ds["url"]), prom_ds["url"]
    assert "prometheus" in compose["services"]
    dashboards = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))
    assert dashboards
    used: set[str] = set()
    for path in dashboards:
        try:
            dash = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            pytest.fail(f"{path} is not valid JSON: {e}")
        panels = dash["panels"]
        for panel in [*panels, *[p for row in panels for p in row.get("panels", [])]]:
            for target in panel.get("targets", []):
                ds_ref = target.get("datasource") or panel.get("datasource")
                assert ds_ref and ds_ref.get("uid") == prom_ds["uid"], f"{panel['title']}: datasource {ds_ref}"
                expr = target["expr"]
                for metric in re.findall(r"\b(crowdtick_[a-z0-9_]+)", expr):
                    assert is_exported(metric), (
                        f"{path.name}, panel {panel['title']!r}: {metric} is not exported by the binary "
                        f"(not a \"crowdtick_…\" literal under {METRIC_SOURCE_DIRS})"
                    )
                    used.add(metric)
        titles = " | ".join(p["title"].lower() for p in panels)
        for words in ("votes/s", "latency", "503", "lag", "viewers", "tallies emitted"):
            assert words in titles, f"{path.name}: no panel about {words!r}: {titles}"
    for required in [
        "crowdtick_ingest_votes_accepted_total",
        "crowdtick_ingest_vote_duration_seconds_bucket",
        "crowdtick_ingest_votes_unavailable_total",
        "crowdtick_processor_lag_records",
        "crowdtick_realtime_connections",
        "crowdtick_processor_partials_emitted_total",
    ]:
        assert required in used, f"the dashboard does not chart {required}"
    exprs = [t["expr"] for d in dashboards for p in json.loads(d.read_text())["panels"] for t in p.get("targets", [])]
    for q, name in (("0.5", "p50"), ("0.99", "p99")):
        pattern = rf"histogram_quantile\(\s*{re.escape(q)}0*\s*,.*\bcrowdtick_ingest_vote_duration_seconds_bucket\b"
        assert any(re.search(pattern, e) for e in exprs), f"no {name} of the vote latency histogram"


def dashboard_metrics() -> set[str]:
    out = set()
    for path in (REPO / "deploy/grafana/dashboards").glob("*.json"):
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            for target in panel.get("targets", []):
                out.update(re.findall(r"\b(crowdtick_[a-z0-9_]+)", target["expr"]))
    return out


def test_a_running_node_exports_every_dashboard_metric(crowdtick_bin, tmp_path):
    """`crowdtick serve` (every role in one process, the image's default command) on a loopback
    port: `crowdtick healthcheck` (the image's HEALTHCHECK) sees it live, and its /metrics has
    every metric the dashboard charts."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CROWDTICK_DATA_DIR": str(tmp_path / "data"),
        "CROWDTICK_LISTEN": f"127.0.0.1:{port}",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(crowdtick_bin), "serve"], env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [str(crowdtick_bin), "healthcheck", "--url", f"http://127.0.0.1:{port}/healthz"],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30,
            )
            if probe.returncode == 0:
                break
            assert server.poll() is None, f"crowdtick serve exited: {(tmp_path / 'serve.log').read_text()}"
            assert time.monotonic() < deadline, f"never healthy: {probe.stderr}"
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        families = set(re.findall(r"^# TYPE (crowdtick_[a-z0-9_]+) ", text, re.M))
        samples = set(re.findall(r"^(crowdtick_[a-z0-9_]+)", text, re.M))
        missing = sorted(m for m in dashboard_metrics() if m not in samples and m not in families)
        assert not missing, f"the dashboard charts metrics a running node does not export: {missing}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


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
