"""``make bench``: every benchmark in one run, a table on stdout, the figures section of
docs/benchmarks.md rewritten.

    python -m benchmarks.run            # the full run (10-20 minutes on 2 shared cores)
    python -m benchmarks.run --quick    # seconds: the same pieces, tiny; the doc is left alone
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import e2e, receiver, report, screenshots, synthea_load
from benchmarks import quota as quota_bench
from benchmarks.servers import Postgres, machine


@dataclass(frozen=True)
class Plan:
    receiver: receiver.Plan
    live: e2e.Scenario
    # Further end-to-end runs shown beside the main one (not judged against the targets).
    extra_live: tuple[e2e.Scenario, ...] = field(default_factory=tuple[e2e.Scenario, ...])
    scale: tuple[e2e.Scenario, ...] = field(default_factory=tuple[e2e.Scenario, ...])
    # The clinic-day script under the default FHIR quota and with the quota raised.
    quota: tuple[quota_bench.QuotaScenario, ...] = field(
        default_factory=tuple[quota_bench.QuotaScenario, ...]
    )
    # The shipped Synthea load: how many patient bundles (None: all), 0 to leave it out.
    synthea_patients: int | None = 0


FULL = Plan(
    receiver=receiver.Plan(),
    # 25 body weights/s = 50 events/s (each weight notifies two bots), 3,000 events.
    live=e2e.Scenario("live", observations=1500, rate=25, patients=250),
    # A rate the single-threaded stand-in keeps up with: the service's own latency.
    extra_live=(e2e.Scenario("live10", observations=200, rate=5, patients=100),),
    # A backlog of 1,000 events (5 weights for each of 100 patients), drained by 1 and by 2
    # worker processes, twice each, interleaved.
    scale=tuple(
        e2e.Scenario(
            f"scale{processes}",
            500,
            rate=100,
            patients=100,
            backlog=True,
            worker_processes=processes,
        )
        for _ in range(2)
        for processes in (1, 2)
    ),
    quota=(
        quota_bench.QuotaScenario("quota_default", patients=30, quota=50_000, approvals=15),
        quota_bench.QuotaScenario("quota_raised", patients=30, quota=100_000_000, approvals=15),
    ),
    synthea_patients=None,
)
QUICK = Plan(
    receiver=receiver.Plan(
        connections=8,
        closed_reps=1,
        closed_seconds=1.0,
        rates=(200,),
        open_reps=1,
        open_seconds=1.0,
        warmup_seconds=0.2,
    ),
    live=e2e.Scenario("live", observations=40, rate=20, patients=10, drain_timeout=30),
    scale=(
        e2e.Scenario("scale1", observations=20, rate=50, patients=10, backlog=True),
        e2e.Scenario(
            "scale2", observations=20, rate=50, patients=10, backlog=True, worker_processes=2
        ),
    ),
    quota=(
        quota_bench.QuotaScenario("quota_default", patients=2, quota=50_000, approvals=1, burst=2),
    ),
    synthea_patients=1,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny run: a smoke test, seconds")
    parser.add_argument(
        "--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md (--quick never)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser.parse_args(argv)


def run(plan: Plan, *, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    command = (
        "`.venv/bin/python -m benchmarks.run --quick`"
        if quick
        else "`make bench` (= `.venv/bin/python -m benchmarks.run`)"
    )
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": quick,
        "machine": machine(),
    }
    pg = Postgres.start()
    try:
        step = time.monotonic()
        results["receiver"] = receiver.run(pg, plan.receiver)
        _progress("receiver vs baseline", step)
        step = time.monotonic()
        results["e2e"] = e2e.run(pg, plan.live)
        _progress("end to end", step)
        extra: list[dict[str, Any]] = []
        for scenario in plan.extra_live:
            step = time.monotonic()
            extra.append(e2e.run(pg, scenario))
            _progress(f"end to end at {scenario.rate * 2:.0f} events/s", step)
        results["e2e_extra"] = extra
        scale: list[dict[str, Any]] = []
        for scenario in plan.scale:
            step = time.monotonic()
            scale.append(e2e.run(pg, scenario))
            _progress(f"scale-out, {scenario.worker_processes} worker process(es)", step)
        results["scale"] = scale
        quota_runs: list[dict[str, Any]] = []
        for scenario in plan.quota:
            step = time.monotonic()
            quota_runs.append(quota_bench.run(pg, scenario))
            _progress(f"quota, {scenario.quota:,} points a minute", step)
        results["quota"] = quota_runs
        if plan.synthea_patients != 0:
            step = time.monotonic()
            results["synthea_load"] = synthea_load.run(pg, patients=plan.synthea_patients)
            _progress("the shipped Synthea load", step)
        results["ops_screenshots"] = screenshots.run(pg, quick=quick)
    finally:
        pg.stop()
    results["duration_s"] = time.monotonic() - started
    return results


def _progress(what: str, since: float) -> None:
    sys.stderr.write(f"bench: {what} done in {time.monotonic() - since:.0f} s\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = run(QUICK if args.quick else FULL, quick=args.quick)
    text = report.render(results)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    if not args.quick and not args.no_doc:
        report.write_doc(text)
        sys.stdout.write(f"\nwrote the figures into {report.DOC}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
