"""Shared helpers of the deployment checks (deploy/checks): the crowdtick binary and
`crowdtick config`, which loads and validates a configuration exactly as every service does at
start-up (defaults < TOML file < CROWDTICK_* environment), without connecting to anything.

Used by test_helm.py, test_helm_secrets.py and helm_support.py (and free for test_compose.py and other checks to use);
`run_script` by the checks of the benchmark scripts (test_bench_*.py).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import pytest

#: The repository root (deploy/checks/conftest.py -> parents[2]).
REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: object, env: Mapping[str, str] | None = None, timeout: float = 600):
    """Runs `bash scripts/SCRIPT ARGS...` from the repository root with this process's environment
    plus `env`, capturing its output as text (the benchmark scripts' checks)."""
    return subprocess.run(
        ["bash", f"scripts/{script}", *map(str, args)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def crowdtick_binary() -> Path:
    """The crowdtick binary to check settings with: $CROWDTICK_TEST_BIN, or target/debug/crowdtick.

    Fails the calling test (never skips) when it is missing, saying how to build it.
    """
    override = os.environ.get("CROWDTICK_TEST_BIN")
    path = Path(override) if override else REPO / "target" / "debug" / "crowdtick"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"the crowdtick binary is missing at {path}: build it with `cargo build` in {REPO} "
            "(or point CROWDTICK_TEST_BIN at a built binary); these checks run it and are "
            "never skipped",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def crowdtick_bin() -> Path:
    """Fixture form of :func:`crowdtick_binary`."""
    return crowdtick_binary()


def run_crowdtick_config(
    toml_text: str | None,
    env: Mapping[str, str],
    args: Iterable[str] = (),
    *,
    binary: Path | None = None,
    timeout: float = 60,
    show_secrets: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs `crowdtick config --config FILE [--show-secrets] [args]` and returns the finished
    process. With `show_secrets` (the checks compare the keys and URLs that reach the binary) it
    prints them as they are; without, as `<redacted>`.

    `toml_text` is written to a temporary FILE (None: an empty file). The process gets exactly
    `env` plus PATH (nothing else from this process's environment, so stray CROWDTICK_* variables
    of the caller cannot leak in); if `env` has CROWDTICK_CONFIG it is pointed at FILE, as the
    mounted file would be. Runs in an empty temporary directory (no ./crowdtick.toml).
    Exit status 0 means every service would accept these settings at start-up.
    """
    binary = binary or crowdtick_binary()
    with tempfile.TemporaryDirectory(prefix="crowdtick-config-") as tmp:
        config_file = Path(tmp) / "crowdtick.toml"
        config_file.write_text(toml_text or "", encoding="utf-8")
        run_env = {k: str(v) for k, v in env.items()}
        if "CROWDTICK_CONFIG" in run_env:
            run_env["CROWDTICK_CONFIG"] = str(config_file)
        run_env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        return subprocess.run(
            [str(binary), "config", "--config", str(config_file), *(["--show-secrets"] if show_secrets else []), *args],
            env=run_env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


# --------------------------------------------------------------------------------------------
# The image (every container of the compose file and the chart starts with its ENV)
# --------------------------------------------------------------------------------------------

DOCKERFILE = REPO / "Dockerfile"


def dockerfile_commands():
    """The Dockerfile through BuildKit's own parser (the `dockerfile` package wraps it)."""
    try:
        import dockerfile
    except ModuleNotFoundError:
        pytest.fail("the dockerfile package is missing: pip install -r deploy/checks/requirements.txt", pytrace=False)
    try:
        return dockerfile.parse_file(str(DOCKERFILE))
    except dockerfile.GoParseError as e:
        pytest.fail(f"the Dockerfile does not parse: {e}", pytrace=False)


def dockerfile_stages() -> tuple[list, list[list]]:
    """(the instructions before the first FROM, the instructions of each stage)."""
    preamble, stages = [], []
    for c in dockerfile_commands():
        if c.cmd.upper() == "FROM":
            stages.append([])
        (stages[-1] if stages else preamble).append(c)
    return preamble, stages


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final stage (what every container of the image starts with)."""
    env = {}
    for c in dockerfile_stages()[1][-1]:
        if c.cmd.upper() == "ENV":
            env.update(zip(c.value[0::2], c.value[1::2]))
    return env
