"""scripts/bench-restart.sh (issue 11, item 6) run small on the test build: it records a show, kills
the node with -9, then starts each side on its own copy of the data directory, reports when it is
ready and checks that both show the same totals. The figures are BENCHMARKS.md's; that the script
gets them is this test's."""

from __future__ import annotations

import re

from conftest import run_script


def test_restart_script_times_both_sides_on_the_same_show(crowdtick_bin):
    run = run_script("bench-restart.sh", crowdtick_bin, crowdtick_bin, 4, 2)
    assert run.returncode == 0, f"bench-restart.sh failed:\n{run.stdout}\n{run.stderr}"
    assert re.search(r"tallies topic \d+ MiB", run.stdout), run.stdout
    lines = [l for l in run.stdout.splitlines() if l.startswith(("baseline", "candidate"))]
    assert len(lines) == 4, run.stdout
    for line in lines:
        assert re.search(r"ready in +\d+ ms, +\d+ ms CPU; totals same$", line), line
    totals = re.search(r"totals per poll: ([\d,]+)$", run.stdout, re.M)
    assert totals and sum(map(int, totals.group(1).split(","))) > 0, run.stdout
