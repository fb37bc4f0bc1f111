"""What the compose checks share: the compose file loaded as docker compose loads it (YAML merge
keys, `${VAR}` interpolation), and the questions they ask of its services."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
CROWDTICK_IMAGE = "crowdtick:local"
# The long-running CrowdTick roles (the subcommand a service runs).
NODE_ROLES = {"query", "ingest", "processor", "realtime", "serve"}
# CROWDTICK_* variables that are not settings (the binary allows them; see src/config.rs).
NOT_SETTINGS = {"CROWDTICK_CONFIG", "CROWDTICK_OPERATOR_KEY", "CROWDTICK_AGGREGATOR_KEY", "CROWDTICK_ALLOW_REMOTE"}
# Sources that register the exported metrics (`"crowdtick_…"` string literals).
METRIC_SOURCE_DIRS = ["edge", "ingest", "processor", "realtime", "results", "seed_api", "src", "storage", "query"]


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
