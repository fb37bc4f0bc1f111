"""Checks of the compose deployment's proxy and observability, without a Docker engine: the proxy's
routing (nginx.conf parsed and matched as nginx matches locations), Prometheus scraping every node,
and the Grafana dashboard using only metrics the Rust sources export (and a running node exports).

Run: target/pyenv/bin/pytest deploy/checks (the rest of the compose checks: test_compose.py)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from compose_support import (
    METRIC_SOURCE_DIRS,
    crowdtick_nodes,
    env_dict,
    load_compose,
    mounted_file,
    role_of,
    services_with_image,
)


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
    # A counter is registered without `_total` (prometheus-client adds it); a histogram's series
    # carry `_bucket`, `_sum` and `_count`.
    base = re.sub(r"_(bucket|sum|count|total)$", "", metric)
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
