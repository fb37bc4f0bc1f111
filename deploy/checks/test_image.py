"""Checks of the container image (Dockerfile, .dockerignore) without a Docker engine: multi-stage,
every workspace member in the dependency layer, nothing the crates embed excluded from the build
context, non-root, healthcheck, entrypoint.

Run: target/pyenv/bin/pytest deploy/checks
"""

from __future__ import annotations

import os
import re
import tomllib

from conftest import REPO, dockerfile_commands, dockerfile_env, dockerfile_stages

DOCKERIGNORE = REPO / ".dockerignore"


def dockerignore_excludes(rel: str) -> bool:
    """Docker's .dockerignore matching, enough for these checks: the last pattern matching the
    path or one of its parent directories decides."""
    excluded = False
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rx = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.findall(r"\*\*|\*|\?|[^*?]+", pattern)
        )
        rx = rx.replace(".*/", "(?:.*/)?")
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerfile_builds_dependencies_first_and_runs_as_non_root():
    preamble, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    # The parser leaves flags to the build: check them here.
    known_flags = {
        "FROM": {"--platform"},
        "COPY": {"--from", "--chown", "--chmod", "--link"},
        "RUN": {"--mount", "--network", "--security"},
        "HEALTHCHECK": {"--interval", "--timeout", "--start-period", "--start-interval", "--retries"},
    }
    for c in dockerfile_commands():
        for flag in c.flags:
            name = flag.split("=", 1)[0]
            assert name in known_flags.get(c.cmd.upper(), set()), f"line {c.start_line}: {c.cmd} {flag}"
    builder, runtime = stages[0], stages[-1]
    args = dict(c.value[0].split("=", 1) for c in preamble if c.cmd.upper() == "ARG" and "=" in c.value[0])

    def image(stage) -> str:
        name = stage[0].value[0]
        return args.get(name.strip("${}"), name)

    assert re.fullmatch(r"rust:1(\.\d+)*-bookworm", image(builder)), image(builder)
    assert image(runtime) in {"debian:bookworm-slim", "gcr.io/distroless/cc-debian12:nonroot"} or re.fullmatch(
        r"debian:12[\d.]*-slim", image(runtime)
    ), image(runtime)

    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    copies = [tuple(c.value) for c in builder if c.cmd.upper() == "COPY"]
    runs = [c.value[0] for c in builder if c.cmd.upper() == "RUN"]
    first_build = next(n for n, c in enumerate(builder) if c.cmd.upper() == "RUN" and "cargo build" in c.value[0])
    before = [tuple(c.value) for c in builder[:first_build] if c.cmd.upper() == "COPY"]
    assert ("Cargo.toml", "Cargo.lock", "./") in before, "the manifests and Cargo.lock come before the dependency build"
    stub_loop = re.search(r"for member in ([^;]+);", runs[0])
    assert stub_loop, "the first RUN creates stub sources for every member"
    stubbed = stub_loop.group(1).split()
    for m in members:
        assert m in stubbed, f"workspace member {m} has no stub in the dependency layer"
        if m == ".":
            continue
        assert (f"{m}/Cargo.toml", f"{m}/Cargo.toml") in before, f"{m}/Cargo.toml is not copied for the dependency layer"
        assert (m, m) in copies, f"the sources of {m} are not copied"
    assert ("src", "src") in copies
    # Every target a manifest declares must exist when cargo reads the manifests: a stub for each
    # (the `[[test]]` and `[[bench]]` files are not in the build context at all).
    for m in members:
        manifest = tomllib.loads((REPO / m / "Cargo.toml").read_text())
        for kind, default_dir in (("bin", "src/bin"), ("test", "tests"), ("bench", "benches"), ("example", "examples")):
            for target in manifest.get(kind, []):
                path = target.get("path") or f"{default_dir}/{target['name']}.rs"
                rel = os.path.normpath(os.path.join(m, path))
                assert rel in runs[0], f"{m}/Cargo.toml declares {kind} {target['name']} at {path}: no stub for {rel}"
    builds = [r for r in runs if "cargo build" in r]
    assert len(builds) == 2 and all("--release --locked --bin crowdtick" in b for b in builds)
    assert "touch" in builds[1], "the real sources are touched so cargo rebuilds the workspace crates"

    def only(cmd: str):
        found = [c for c in runtime if c.cmd.upper() == cmd]
        assert len(found) == 1, f"the runtime stage has {len(found)} {cmd}"
        return found[0]

    assert only("USER").value == ("10001:10001",)
    assert only("WORKDIR").value == ("/var/lib/crowdtick",)
    assert only("VOLUME").value == ("/var/lib/crowdtick",)
    assert only("EXPOSE").value == ("8080",)
    assert only("ENTRYPOINT").json and only("ENTRYPOINT").value == ("crowdtick",)
    assert only("CMD").json and only("CMD").value == ("serve", "--listen", "0.0.0.0:8080")
    hc = only("HEALTHCHECK")
    assert hc.json and hc.value[:3] == ("CMD", "crowdtick", "healthcheck"), hc.value
    copy_in = only("COPY")
    assert copy_in.flags == ("--from=builder",) and copy_in.value[-1] == "/usr/local/bin/crowdtick", "only the binary"
    assert dockerfile_env().get("CROWDTICK_DATA_DIR") == "/var/lib/crowdtick"
    assert any("10001" in c.value[0] for c in runtime if c.cmd.upper() == "RUN"), "a uid 10001 user owning the data dir"
    labels = dict(zip(only("LABEL").value[0::2], only("LABEL").value[1::2]))
    for label in ("title", "description", "version", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{label}" in labels, f"OCI label {label}"


def test_build_context_keeps_what_the_crates_embed():
    for must in ("target", ".git", "data", "x.log", ".tansu", "node_modules"):
        assert dockerignore_excludes(must), f".dockerignore does not exclude {must}"
    embedded = []
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    for m in members:
        for src in (REPO / m / "src").rglob("*.rs") if m != "." else (REPO / "src").rglob("*.rs"):
            for inc in re.findall(r"include_(?:str|bytes)!\(\s*\"([^\"]+)\"", src.read_text(encoding="utf-8")):
                embedded.append((src.parent / inc).resolve().relative_to(REPO).as_posix())
    assert len(embedded) >= 5, embedded
    for rel in embedded + ["Cargo.toml", "Cargo.lock", "src/main.rs"] + [f"{m}/Cargo.toml" for m in members if m != "."]:
        assert (REPO / rel).exists(), rel
        assert not dockerignore_excludes(rel), f".dockerignore excludes {rel}, which the build needs"


def _version(text: str) -> tuple[int, int, int]:
    """`1.89` and `1.89.0` alike."""
    major, minor, patch = (text.split(".") + ["0", "0"])[:3]
    return int(major), int(minor), int(patch)


def test_the_declared_rust_version_builds_what_is_locked_and_the_image_has_it():
    """`rust-version` is what a user's toolchain must be: at least every locked dependency's own,
    and at most the image's builder."""
    import json
    import subprocess

    declared = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    listed = subprocess.run(
        # Not --offline: the manifests of other platforms' dependencies (Windows, Android) are
        # fetched from the registry when a fresh machine has never built them.
        ["cargo", "metadata", "--locked", "--format-version", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    metadata = listed.stdout
    needed = max(
        (_version(p["rust_version"]), p["name"]) for p in json.loads(metadata)["packages"] if p.get("rust_version")
    )
    assert _version(declared) >= needed[0], f"rust-version {declared}, but {needed[1]} needs {needed[0]}"
    builder = next(c for c in dockerfile_commands() if c.cmd.upper() == "ARG" and c.value[0].startswith("RUST_IMAGE="))
    image = re.fullmatch(r"RUST_IMAGE=rust:([\d.]+)-bookworm", builder.value[0])
    assert image, builder.value[0]
    assert _version(image.group(1)) >= _version(declared), f"the image's Rust {image.group(1)} < rust-version {declared}"
