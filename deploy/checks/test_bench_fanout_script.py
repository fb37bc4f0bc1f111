"""scripts/bench-fanout.sh (issue 11, item 1) run small on the test build: it measures the
realtime node's fan-out thread per frame sent to a viewer and, in the same run, the floor under it
(one plain write per loopback socket), and prints both with their ratio. The figures are
BENCHMARKS.md's; that the script measures both sides and says what it measured is this test's."""

from __future__ import annotations

import re

from conftest import run_script


def test_fanout_script_measures_the_node_and_the_floor_in_one_run(crowdtick_bin):
    env = {
        "BENCH_VIEWERS": "200",
        "BENCH_RATE": "200",
        "BENCH_SECS": "8",
        "BENCH_WINDOW": "3",
        "BENCH_PROFILE": "dev",
    }
    run = run_script("bench-fanout.sh", crowdtick_bin, env=env)
    assert run.returncode == 0, f"bench-fanout.sh failed:\n{run.stdout}\n{run.stderr}"
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [c.strip() for c in line.split("|")[1:-1]]
            for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("|---")
        )
    }
    per_frame = rows["CPU per frame to one viewer"]
    floor_us, node_us, ratio = (float(re.match(r"[\d.]+", c).group()) for c in per_frame)
    assert floor_us > 0 and node_us > 0, per_frame
    assert abs(ratio - floor_us / node_us) < 0.01, per_frame
    rate = rows["frames per second delivered (fan-out thread busy)"][1]
    assert re.match(r"[\d,]+ \(\d+% of a core\)", rate), rate
    assert float(rate.split()[0].replace(",", "")) > 0, "the viewers got no frames"
    assert re.match(r"p50 [\d.]+ ms +p99 [\d.]+ ms", rows["lag from tally to viewer"][1]), rows
