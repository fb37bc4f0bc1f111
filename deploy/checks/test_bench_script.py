"""scripts/bench, the benchmark suite's one command (issue 11, item 8), run small on the test build:
every row asked for lands in the table with both sides measured, a ratio, and the command that
runs it alone. What the figures are is the benchmark's business (BENCHMARKS.md); that the script
runs, reads the load generator's reports and says what it measured is this test's.
"""

from __future__ import annotations

import re

from conftest import run_script


def test_the_suite_prints_each_row_with_both_sides_a_ratio_and_its_command(crowdtick_bin):
    env = {
        "BENCH_ROWS": "spike batch sse",
        "BENCH_RATE": "200",
        "BENCH_VOTES": "20000",
        "BENCH_VIEWERS": "20",
    }
    run = run_script("bench", crowdtick_bin, crowdtick_bin, env=env)
    assert run.returncode == 0, f"scripts/bench failed:\n{run.stdout}\n{run.stderr}"
    rows = [
        line.split("|")[1:-1]
        for line in run.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| Row")
    ]
    assert [r[0].strip().split(":")[0] for r in rows] == [
        "The spike",
        "Batches of 10,000, 20,000 votes",
        "20 SSE viewers",
    ], run.stdout
    spike, batch, sse = ([c.strip() for c in r] for r in rows)
    for side in (spike[2], spike[3]):
        # The count is the benchmark's figure (a debug build on a busy CI machine may shed).
        assert re.match(r"[\d,]+ 5xx, p99 [\d.]+ ms$", side), spike
    for side in (batch[2], batch[3]):
        assert side.endswith("verify ok"), batch
        cpu = re.search(r"server ([\d.]+) µs CPU/vote", side)
        assert cpu and float(cpu.group(1)) > 0, batch
    for side in (sse[2], sse[3]):
        assert side.startswith("20 held"), sse
        assert "KiB/viewer" in side, sse
    for row in (spike, batch, sse):
        assert re.fullmatch(r"\d+\.\d\d", row[4]), f"no ratio in {row}"
    for name in ("spike", "batch", "sse"):
        assert f"- {name}: `crowdtick serve --data-dir DIR" in run.stdout, run.stdout
