"""Where the receiver's time goes: the same closed-loop saturation run against the production
receiver and against the same receiver with one cost switched off by configuration only (no
code change), each repeated and interleaved. Not part of ``make bench``:

    python -m benchmarks.ablation

* ``STARVIT_LOG_LEVEL=WARNING``: without the two INFO lines per notification (the request
  line of ``RequestContextMiddleware`` and ``notification_received``).
* ``OTEL_SDK_DISABLED=true``: OpenTelemetry's SDK hands out no-op tracers, so the FastAPI
  instrumentation's spans cost almost nothing (the service records spans even with
  ``STARVIT_OTEL_EXPORTER=none``: a provider without an exporter still builds every span).
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.receiver import load
from benchmarks.servers import Postgres, close_stack
from devtools.stack import Stack

VARIANTS: dict[str, dict[str, str]] = {
    "production": {},
    "log level WARNING": {"STARVIT_LOG_LEVEL": "WARNING"},
    "OpenTelemetry SDK disabled": {"OTEL_SDK_DISABLED": "true"},
    "both": {"STARVIT_LOG_LEVEL": "WARNING", "OTEL_SDK_DISABLED": "true"},
}


def main(reps: int = 2, seconds: float = 5.0) -> None:
    pg = Postgres.start()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    try:
        with pg.fresh_database("ablation") as database_url:
            stacks = {
                name: Stack("http://127.0.0.1:9/", database_url, extra_env=env)
                for name, env in VARIANTS.items()
            }
            try:
                for stack in stacks.values():
                    stack.start_receiver(workers=1)
                for _ in range(reps):
                    for name, stack in stacks.items():
                        pids = {"server": stack.processes[0].process.pid}
                        run = load(
                            stack.receiver_port,
                            pids,
                            mode="closed",
                            connections=32,
                            duration=seconds,
                            warmup=1.0,
                        )
                        results[name].append(
                            (run["throughput"], run["server_cpu_us_per_request"]["server"])
                        )
            finally:
                for stack in stacks.values():
                    close_stack(stack)
    finally:
        pg.stop()
    base = statistics.median(t for t, _ in results["production"])
    sys.stdout.write("| Receiver variant | req/s (median) | vs production | CPU µs/request |\n")
    sys.stdout.write("|---|---|---|---|\n")
    for name, runs in results.items():
        throughput = statistics.median(t for t, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        sys.stdout.write(f"| {name} | {throughput:,.0f} | {throughput / base:.2f} | {cpu:,.0f} |\n")


if __name__ == "__main__":
    main()
