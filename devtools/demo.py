"""``python -m devtools demo`` (``make demo``): the whole loop on one machine, on the
embedded default.

Starts the Medplum stand-in, the embedded PostgreSQL (a fresh ``starvit_demo`` database), the
receiver (Gunicorn + Uvicorn) and a worker; syncs the Subscriptions; posts the Synthea
patients as the integration partner (each history moved forward to end yesterday, so that its
newest results are recent evidence), through the service's partner API (``POST /v1/bundles``,
with the stand-in's partner registry ``devserver/partners.json``); shows the pending Tasks as
a clinician sees them; approves one and rejects one as a signed-in clinician; shows the
resulting records and the Provenance chain; and stops everything it started.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from app.integrations.medplum import MedplumClient
from app.persistence.embedded import ensure_running, stop
from app.settings import Settings, load_settings
from app.subscriptions.service import sync_subscriptions
from app.wiring import medplum_client
from devtools import clinician, synthea
from devtools.databases import create_database
from devtools.devserver import DEVSERVER_DIR, DevServer
from devtools.ops import OPS_PASSWORD, OPS_USER, ops_env, register_ops_redirect
from devtools.stack import Stack

DEMO_DATABASE = "starvit_demo"
# The stand-in's partners (partner-acme is the demo's Synthea partner).
PARTNER_REGISTRY = DEVSERVER_DIR / "partners.json"


@dataclass
class Printer:
    started: float

    def __call__(self, message: str = "") -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)  # noqa: T201

    def section(self, title: str) -> None:
        print(flush=True)  # noqa: T201
        self(f"== {title}")


def _event_counts(database_url: str) -> tuple[Counter[str], Counter[str], int]:
    with psycopg.connect(database_url) as conn:
        statuses = Counter[str](
            {
                str(s): int(n)
                for s, n in conn.execute(
                    "SELECT status, count(*) FROM starvit.event_keys GROUP BY status"
                )
            }
        )
        outcomes = Counter[str](
            {
                f"{b}: {o}": int(n)
                for b, o, n in conn.execute(
                    "SELECT handler, coalesce(outcome, error_code, status), count(*) "
                    "FROM starvit.event_keys GROUP BY 1, 2"
                )
            }
        )
        row = conn.execute(
            "SELECT coalesce(sum(medplum_requests), 0) FROM starvit.event_keys "
            "WHERE status = 'processed'"
        ).fetchone()
    return statuses, outcomes, int(row[0]) if row else 0


async def _drain(database_url: str, say: Printer, quiet_seconds: float = 3.0) -> None:
    """Wait until every recorded event is processed and no new one arrived for a while."""
    last_total = -1
    quiet_since = time.monotonic()
    last_report = 0.0
    while True:
        statuses, _, _ = await asyncio.to_thread(_event_counts, database_url)
        total = sum(statuses.values())
        queued = statuses.get("queued", 0)
        if total != last_total:
            last_total, quiet_since = total, time.monotonic()
        if time.monotonic() - last_report > 2:
            say(
                f"events received {total}, processed {statuses.get('processed', 0)}, "
                f"queued {queued}, failed {statuses.get('failed', 0)}"
            )
            last_report = time.monotonic()
        if queued == 0 and time.monotonic() - quiet_since > quiet_seconds:
            return
        await asyncio.sleep(0.5)


async def _sync(settings: Settings, say: Printer) -> None:
    async with medplum_client(settings) as medplum:
        for result in await sync_subscriptions(medplum, settings):
            say(f"  {result.handler:<15} {result.action:<10} Subscription/{result.subscription_id}")


async def _load(
    base_url: str, patients: int | None, say: Printer, service_url: str
) -> synthea.LoadSummary:
    async with MedplumClient(synthea.partner_config(base_url)) as partner:
        # Synthea's blood pressures declare the core bp profile, which Medplum's validator
        # finds they do not satisfy; the demo wants their data, not the declaration.
        return await synthea.load(
            partner,
            patients=patients,
            drop_unsatisfied_profiles=True,
            progress=lambda m: say("  " + m),
            # Through the service's partner API, as every partner's writes must go.
            service_url=service_url,
            # Synthea's histories ended years ago; moved to end yesterday, their newest results
            # are inside the protocols' evidence windows and reach the clinician.
            shift_to=datetime.now(UTC) - timedelta(days=1),
        )


# The stand-in enforces Medplum's default FHIR quota (50,000 points a minute per membership):
# the partner's load of the shared practitioner and hospital bundles and of two patients takes a
# few quota minutes; all 20 shipped patients about half an hour.
DEMO_PATIENTS = 2


async def run_demo(
    *,
    patients: int | None = DEMO_PATIENTS,
    keep_running: bool = False,
    out: Callable[[str], None] | None = None,
) -> int:
    say = Printer(time.monotonic())
    del out
    say.section("Starting: Medplum stand-in, embedded PostgreSQL, receiver, worker")
    settings = load_settings()
    server, started = await asyncio.to_thread(ensure_running, settings.embedded_pg_dir)
    say(f"embedded PostgreSQL {'started' if started else 'running'} in {settings.embedded_pg_dir}")
    database_url = await asyncio.to_thread(create_database, server.url, DEMO_DATABASE, replace=True)
    with DevServer.start() as devserver:
        say(f"Medplum stand-in at {devserver.base_url}")
        stack = Stack(
            devserver.base_url,
            database_url,
            extra_env={"STARVIT_PARTNER_REGISTRY": str(PARTNER_REGISTRY), **ops_env()},
        )
        try:
            stack.start_receiver()
            say(f"receiver at {stack.receiver_url}")
            dashboard = await register_ops_redirect(devserver.base_url, stack.receiver_base)
            say(f"ops dashboard at {dashboard} (sign in as {OPS_USER} / {OPS_PASSWORD})")
            stack.start_worker()
            say("worker started")
            service_settings = load_settings(
                medplum_base_url=devserver.base_url,
                medplum_client_secret=stack.env()["STARVIT_MEDPLUM_CLIENT_SECRET"],
                webhook_secrets=stack.webhook_secret,
                receiver_url=stack.receiver_url,
                database_url=database_url,
            )
            say.section("Syncing Subscriptions (one per bot, plus clinician review)")
            await _sync(service_settings, say)

            say.section(
                "Posting Synthea patients as the integration partner, through POST /v1/bundles"
            )
            summary = await _load(devserver.base_url, patients, say, stack.receiver_base)
            say(
                f"loaded {len(summary.patient_ids)} patients, {summary.created} resources "
                f"in {summary.elapsed_seconds:.1f}s"
            )

            say.section("Processing the notifications")
            await _drain(database_url, say)
            await _show_results(devserver, database_url, say)
            if keep_running:
                say(f"ops dashboard at {dashboard}")
                say("running; press Ctrl-C to stop")
                await asyncio.Event().wait()
        finally:
            say.section("Stopping what the demo started")
            stack.close()
    if started:
        await asyncio.to_thread(stop, settings.embedded_pg_dir)
        say("embedded PostgreSQL stopped")
    say("done")
    return 0


async def _show_results(devserver: DevServer, database_url: str, say: Printer) -> None:
    statuses, outcomes, requests = await asyncio.to_thread(_event_counts, database_url)
    processed = statuses.get("processed", 0)
    say("outcomes by bot:")
    for key, count in sorted(outcomes.items()):
        say(f"  {key:<40} {count}")
    if processed:
        say(f"Medplum requests per processed event: {requests / processed:.2f}")

    say.section("Pending review Tasks, as clinician-alice sees them")
    session = await clinician.login(devserver.base_url, "clinician-alice")
    try:
        rows = await clinician.pending_tasks(session, count=50)
        say(f"{len(rows)} pending (showing 6)")
        print(clinician.render_rows(rows[:6]), flush=True)  # noqa: T201
        if not rows:
            say("no pending Task: nothing to decide")
            return
        decided: list[clinician.TaskRow] = []
        say.section("Clinician decisions")
        if len(rows) == 1:
            # The suggestion layer keeps the worklist short: with one Task, it is approved.
            [to_approve] = rows
            await clinician.approve(session, to_approve.id)
            say(f"approved  Task/{to_approve.id}: {to_approve.title}")
            say("one pending Task: nothing left to reject")
            decided.append(to_approve)
        else:
            to_approve, to_reject = _pick(rows)
            await clinician.approve(session, to_approve.id)
            say(f"approved  Task/{to_approve.id}: {to_approve.title}")
            await clinician.reject(
                session, to_reject.id, "Not clinically relevant for this patient"
            )
            say(f"rejected  Task/{to_reject.id}: {to_reject.title}")
            decided.extend((to_approve, to_reject))
        await _drain(database_url, say, quiet_seconds=2.0)
        for row in decided:
            say.section(f"Provenance chain of Task/{row.id}")
            for line in await clinician.provenance_chain(session, row.id):
                print("  " + line, flush=True)  # noqa: T201
    finally:
        await session.aclose()


def _pick(rows: list[clinician.TaskRow]) -> tuple[clinician.TaskRow, clinician.TaskRow]:
    """An approval and a rejection on two different suggestions, preferring derived values."""
    ordered = sorted(rows, key=lambda r: (not r.focus or "Observation" not in r.focus, r.title))
    first = ordered[0]
    second = next((r for r in ordered[1:] if r.patient != first.patient), ordered[1])
    return first, second
