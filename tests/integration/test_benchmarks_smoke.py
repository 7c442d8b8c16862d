"""``make bench`` must not rot: its quick mode runs every piece (receiver vs baseline, end to
end, scale-out with one and two worker processes) in well under a minute, and its figures are
checked for sanity here. The figures themselves are not asserted (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import DOC

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_quick_mode_runs_every_benchmark(tmp_path: Path) -> None:
    doc_before = DOC.read_text(encoding="utf-8")
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(output)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "### Targets" in done.stdout
    assert DOC.read_text(encoding="utf-8") == doc_before, "--quick must leave the doc alone"
    results = json.loads(output.read_text(encoding="utf-8"))

    rows = results["receiver"]["rows"]
    assert rows["baseline closed"]["throughput"] > 0
    assert rows["receiver closed"]["throughput"] > 0
    assert set(rows["receiver closed"]["statuses"]) == {"202"}, "every notification accepted"
    assert rows["receiver 200"]["errors"] == 0
    assert results["receiver"]["peak_rss_mb"]["receiver"] > 0

    live = results["e2e"]
    assert live["drained"]
    assert live["events_processed"] == live["events_expected"]
    assert live["latency_samples"] == live["events_processed"]
    assert 1 <= live["event_path_requests_per_event"] <= 4
    assert live["token_requests"] >= 1
    assert live["cpu_s"]["worker"] > 0
    assert live["peak_rss_mb"]["worker"] > 0

    one, two = results["scale"]
    assert (one["worker_processes"], two["worker_processes"]) == (1, 2)
    for run in (one, two):
        assert run["drained"]
        assert run["events_processed"] == run["events_expected"]
        assert run["throughput_events_per_s"] > 0

    [quota] = results["quota"]
    assert quota["settled"]
    assert quota["approvals"] >= 1
    outcomes = quota["points_by_outcome"]
    for outcome in ("proposed", "unchanged", "decision (finalised)", "coalesced"):
        assert outcomes[outcome]["events"] >= 1, outcomes
    assert outcomes["proposed"]["mean"] > outcomes["unchanged"]["mean"] > 0
    assert quota["coalesced"] >= 1
    assert quota["service_points_charged"] >= quota["service_points_counted"] > 0
    assert quota["events_per_quota_minute"] > 0
    assert quota["throttled_429"] == 0
    assert "### 6. Medplum quota per clinical event" in done.stdout
    assert "Quota points per proposed event" in done.stdout

    load = results["synthea_load"]
    assert load["settled"]
    assert load["patients"] == 1
    assert load["events"] >= 1
    assert load["service_points_charged"] >= load["service_points_counted"] > 0
    assert sum(load["outcomes"].values()) == load["events"]
    assert "### 7. The shipped Synthea load" in done.stdout
