"""The shipped Synthea load: the service's Medplum quota points for a partner posting the
histories of the shipped patients (``../shared/data/synthea``, 20 patients) while the service
runs, as a clinic onboarding a practice would see it.

Each patient's history is moved to end yesterday first (``shift_to_present``: its newest
results are current evidence, so the protocols propose what a clinician would be asked today;
unshifted, the history ended years ago and opens almost nothing). The partner posts the
practitioner and hospital bundles, then the patient bundles, straight to the stand-in (its
quota raised: this measures points, not pacing), while the production receiver and one worker
process handle every notification. Coalescing is configured as a deployment that takes bulk
loads would: the handlers whose result depends only on the patient's newest data coalesce per
patient within two seconds (the blood-pressure bot, which acts on each reading, per resource).

What is reported: the points the stand-in charged the service's membership (and the worker's
own count beside it), the events by outcome, the Tasks written. The first measurement of this
load, on the code before the quota work, is recorded in :data:`FIRST_MEASUREMENT` with how it
was made; the figure judged is the run's total against it.

    .venv/bin/python -m benchmarks.synthea_load [--patients N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.integrations.medplum import MedplumClient
from benchmarks.e2e import _stats, _sync
from benchmarks.quota import (
    SERVICE_MEMBERSHIP,
    _events,
    _logged_points,
    _settle,
    coalescing_stack,
)
from benchmarks.servers import Postgres, close_stack
from devtools import synthea
from devtools.devserver import DevServer

# The first measurement of this load on the stand-in: commit 4d76a8e (the last before the quota
# work, which had no coalescing: its settings were ignored), the same shifted bundles, one
# worker process; see
# docs/benchmarks.md ("The shipped Synthea load") for the command.
FIRST_MEASUREMENT = {"commit": "4d76a8e", "service_points": 335_862, "events": 1_578}
COALESCE_BY_PATIENT = "bmi,obesity,egfr,hba1c"
COALESCE_WINDOW_MS = 2000


def shifted_copy(source: Path, target: Path, *, latest: datetime, patients: int | None) -> int:
    """Writes the support bundles and the (first ``patients``) patient bundles of ``source``
    into ``target``, each patient's history moved to end on ``latest``'s day; returns the
    number of patient bundles."""
    count = 0
    for path in synthea.bundle_files(source, patients=patients):
        bundle = synthea.read_bundle(path)
        if not synthea.is_support_bundle(path):
            bundle, _ = synthea.shift_to_present(bundle, latest=latest)
            count += 1
        (target / path.name).write_text(json.dumps(bundle), encoding="utf-8")
    return count


def run(
    pg: Postgres,
    *,
    patients: int | None = None,
    directory: Path | None = None,
    shift: bool = True,
) -> dict[str, Any]:
    """Loads the (shifted) bundles with the service running; the figures of the run.
    ``shift`` False: ``directory`` holds bundles already shifted (``--prepare``)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="starvit-synthea-") as scratch:
        source = directory or synthea.synthea_dir()
        shifted = Path(scratch) if shift else source
        if shift:
            shifted_copy(
                source, shifted, latest=datetime.now(UTC) - timedelta(days=1), patients=patients
            )
        with (
            pg.fresh_database("synthea_load") as database_url,
            DevServer.start(
                env={"SUBSCRIPTION_RETRY_BASE_MS": "1000", "MEDPLUM_FHIR_QUOTA": "100000000"}
            ) as devserver,
        ):
            stack = coalescing_stack(
                devserver,
                database_url,
                by_patient=COALESCE_BY_PATIENT,
                window_ms=COALESCE_WINDOW_MS,
            )
            try:
                stack.start_receiver(workers=1)
                asyncio.run(_sync(stack, devserver, database_url))
                stack.start_worker(4, 1)
                _stats(devserver, reset=True)
                load_started = time.monotonic()
                summary = asyncio.run(_load(devserver.base_url, shifted, patients))
                settled = _settle(database_url, devserver, timeout=900)
                drained_s = time.monotonic() - load_started
                stats = _stats(devserver)
                events = _events(database_url)
                logged = _logged_points(stack)
            finally:
                close_stack(stack)
    quota = stats.get("fhir_quota", {})
    charged = int(quota.get("by_membership", {}).get(SERVICE_MEMBERSHIP, 0))
    outcomes: dict[str, int] = {}
    points: dict[str, int] = {}
    for event_id, handler, _status, outcome, _attempts in events:
        name = f"{handler}: {outcome}"
        outcomes[name] = outcomes.get(name, 0) + 1
        points[name] = points.get(name, 0) + logged.get(int(event_id), 0)
    first = int(FIRST_MEASUREMENT["service_points"])
    return {
        "patients": len(summary.patient_ids),
        "resources_created": sum(summary.created_by_type.values()),
        "events": len(events),
        "settled": settled,
        "outcomes": dict(sorted(outcomes.items())),
        "points_by_outcome": dict(sorted(points.items())),
        "service_points_charged": charged,
        "service_points_counted": sum(logged.values()),
        "coalesced": sum(1 for e in events if e[3] == "coalesced"),
        "tasks_proposed": sum(1 for e in events if e[3] == "proposed"),
        "first_measurement": FIRST_MEASUREMENT,
        "ratio_to_first": charged / first if first else None,
        "load_and_drain_s": drained_s,
        "elapsed_s": time.monotonic() - started,
    }


async def _load(base_url: str, directory: Path, patients: int | None) -> Any:
    async with MedplumClient(synthea.partner_config(base_url)) as partner:
        return await synthea.load(
            partner,
            directory=directory,
            patients=patients,
            drop_unsatisfied_profiles=True,
            progress=_progress,
        )


def _progress(line: str) -> None:
    sys.stderr.write(f"synthea load: {line}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthea_load", description=__doc__)
    parser.add_argument("--patients", type=int, help="only the first N patient bundles")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="only write the shifted bundles into DIR (to load them with other code)",
    )
    parser.add_argument(
        "--shifted", type=Path, metavar="DIR", help="load bundles --prepare wrote into DIR"
    )
    args = parser.parse_args(argv)
    if args.prepare is not None:
        args.prepare.mkdir(parents=True, exist_ok=True)
        latest = datetime.now(UTC) - timedelta(days=1)
        shifted_copy(synthea.synthea_dir(), args.prepare, latest=latest, patients=args.patients)
        return 0
    pg = Postgres.start()
    try:
        if args.shifted is not None:
            result = run(pg, patients=args.patients, directory=args.shifted, shift=False)
        else:
            result = run(pg, patients=args.patients)
    finally:
        pg.stop()
    text = json.dumps(result, indent=1, default=str)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
