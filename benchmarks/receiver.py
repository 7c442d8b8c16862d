"""Receiver vs bare baseline: both under Gunicorn with the Uvicorn worker (same worker count,
same flags), loaded from a separate process (:mod:`benchmarks.loadgen`), interleaved A B A B
so drift on a shared machine hits both alike; medians over the repetitions are reported."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from benchmarks.servers import CpuMeter, close_stack, peak_rss_mb, start_baseline
from devtools.devserver import PROJECT_ROOT
from devtools.stack import DEV_WEBHOOK_SECRET, Stack

if TYPE_CHECKING:
    from benchmarks.servers import Postgres


@dataclass(frozen=True)
class Plan:
    workers: int = 1
    connections: int = 32
    closed_reps: int = 3
    closed_seconds: float = 5.0
    rates: tuple[int, ...] = (200, 500)
    open_reps: int = 2
    open_seconds: float = 8.0
    warmup_seconds: float = 1.0


_runs = 0


def load(port: int, pids: dict[str, int], **config: Any) -> dict[str, Any]:
    """One load-generator process against ``port``; adds the server's CPU per request."""
    global _runs  # noqa: PLW0603 - a run counter keeps resource ids unique
    _runs += 1
    config = {
        "port": port,
        "secret": DEV_WEBHOOK_SECRET,
        "run_id": f"{_runs}x{time.time_ns() % 10**9}",
        **config,
    }
    meter = CpuMeter(pids)
    meter.start()
    done = subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "benchmarks.loadgen", json.dumps(config)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    meter.stop()
    if done.returncode != 0:
        raise RuntimeError("the load generator failed:\n" + done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout)
    requests = max(int(result["requests_made"]), 1)
    result["server_cpu_us_per_request"] = {
        name: used / requests * 1e6 for name, used in meter.used.items()
    }
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(pg: Postgres, plan: Plan) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    with pg.fresh_database("receiver") as database_url:
        baseline, baseline_port = start_baseline(plan.workers)
        stack = Stack("http://127.0.0.1:9/", database_url)  # the receiver never calls Medplum
        try:
            receiver = stack.start_receiver(workers=plan.workers)
            targets = {
                "baseline": (baseline_port, {"server": baseline.process.pid}),
                "receiver": (
                    stack.receiver_port,
                    {"server": receiver.process.pid, "postgres": pg.pid() or 0},
                ),
            }
            for rep in range(plan.closed_reps):
                order = ("baseline", "receiver") if rep % 2 == 0 else ("receiver", "baseline")
                for name in order:
                    port, pids = targets[name]
                    runs.setdefault(f"{name} closed", []).append(
                        load(
                            port,
                            pids,
                            mode="closed",
                            connections=plan.connections,
                            duration=plan.closed_seconds,
                            warmup=plan.warmup_seconds,
                        )
                    )
            for rate in plan.rates:
                for rep in range(plan.open_reps):
                    order = ("baseline", "receiver") if rep % 2 == 0 else ("receiver", "baseline")
                    for name in order:
                        port, pids = targets[name]
                        runs.setdefault(f"{name} {rate}", []).append(
                            load(
                                port,
                                pids,
                                mode="open",
                                rate=rate,
                                duration=plan.open_seconds,
                                warmup=plan.warmup_seconds,
                            )
                        )
            rss = {
                "baseline": max(peak_rss_mb(baseline.process.pid).values(), default=0.0),
                "receiver": max(peak_rss_mb(receiver.process.pid).values(), default=0.0),
            }
        finally:
            close_stack(stack)
            baseline.stop()
    return summarise(plan, runs, rss)


def summarise(
    plan: Plan, runs: dict[str, list[dict[str, Any]]], rss: dict[str, float]
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for key, results in runs.items():
        latency = {
            stat: _median([r["latency_ms"][stat] for r in results])
            for stat in ("p50", "p90", "p99", "max")
        }
        rows[key] = {
            "throughput": _median([r["throughput"] for r in results]),
            "throughputs": [round(r["throughput"], 1) for r in results],
            "latency_ms": latency,
            "p99s": [round(r["latency_ms"]["p99"], 2) for r in results],
            "send_lag_p99_ms": _median([r["send_lag_ms"]["p99"] for r in results]),
            "statuses": _merge([r["statuses"] for r in results]),
            "errors": sum(int(r["errors"]) for r in results),
            "generator_cpu_share": _median([r["generator_cpu_share"] for r in results]),
            "server_cpu_us_per_request": {
                name: _median([r["server_cpu_us_per_request"][name] for r in results])
                for name in results[0]["server_cpu_us_per_request"]
            },
        }
    baseline = rows["baseline closed"]["throughput"]
    receiver = rows["receiver closed"]["throughput"]
    pairs = [
        r["throughput"] / b["throughput"]
        for r, b in zip(runs["receiver closed"], runs["baseline closed"], strict=True)
    ]
    return {
        "plan": asdict(plan),
        "rows": rows,
        "ratio": receiver / baseline if baseline else float("nan"),
        "ratios_by_pair": [round(p, 3) for p in pairs],
        "peak_rss_mb": rss,
    }


def _merge(counters: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            merged[key] = merged.get(key, 0) + int(value)
    return merged
