"""``python -m devtools replay`` and ``backtest``: run the bots on recorded data, writing
nothing.

``register(cli)`` adds both commands to the development command line. The logic lives in
``devtools.replay`` and ``devtools.backtest``; this module only reads files and prints.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.fhir.resource_json import loads
from bots import ALL_BOTS, bot_by_name
from devtools.backtest import BundleError, bundle_files, load_history
from devtools.backtest import backtest as run_backtest
from devtools.backtest_live import ConflictError, burden
from devtools.replay import FixtureError, describe, effect_json, parse_fixture

if TYPE_CHECKING:
    from devtools.backtest import BacktestReport, PatientHistory
    from devtools.backtest_live import Arrival, BurdenReport

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "synthea"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code=2)


def replay(
    fixture: Annotated[Path, typer.Argument(help="A recorded notification (JSON).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the effects as JSON.")] = False,
) -> None:
    """Run a recorded notification through its bot and print the effects."""
    try:
        document = loads(fixture.read_bytes())
    except OSError as exc:
        raise _fail(f"cannot read {fixture}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _fail(f"{fixture} is not valid JSON: {exc}") from None
    try:
        recorded = parse_fixture(document)
    except FixtureError as exc:
        raise _fail(f"{fixture}: {exc}") from None
    effects = recorded.bot.compute(recorded.event, recorded.context)
    declaration = recorded.bot.declaration
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "bot": declaration.name,
                    "version": declaration.version,
                    "event": {
                        "interaction": recorded.event.interaction.value,
                        "reference": recorded.event.reference,
                        "version_id": recorded.event.version_id,
                        "patient": recorded.event.patient,
                    },
                    "effects": [effect_json(effect) for effect in effects],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    typer.echo(
        f"{declaration.name} {declaration.version} on {recorded.event.interaction.value} "
        f"{recorded.event.reference}: {len(effects)} effect(s)"
    )
    if not effects:
        typer.echo("nothing to propose")
    for effect in effects:
        typer.echo(describe(effect))


def _parse_since(since: str | None) -> datetime | None:
    if since is None:
        return None
    try:
        parsed = datetime.fromisoformat(since)
    except ValueError:
        raise _fail(f"--since must be a date (YYYY-MM-DD) or date-time, got {since!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _report_json(report: BacktestReport) -> str:
    return json.dumps(
        {
            "bot": report.bot,
            "version": report.version,
            "patients": len(report.patients),
            "events": report.events,
            "outcomes": dict(sorted(report.outcomes.items())),
            "per_patient": [
                {
                    "patient": p.patient_id,
                    "events": p.events,
                    "proposals": p.proposals,
                    "tasks": p.tasks,
                    "urgent": p.urgent,
                    "no_results": p.no_results,
                    "errors": p.errors,
                }
                for p in report.patients
            ],
        },
        indent=2,
    )


def _report_text(report: BacktestReport) -> list[str]:
    lines = [
        f"Backtest of {report.bot} {report.version}: {len(report.patients)} patients, "
        f"{report.events} events (nothing written)",
        "",
        "Outcomes:",
    ]
    lines += [f"  {key:<55} {count:>6}" for key, count in sorted(report.outcomes.items())]
    lines += [
        "",
        f"  {'patient':<38} {'events':>6} {'proposals':>9} {'tasks':>5} {'urgent':>6} "
        f"{'no-result':>9}",
    ]
    lines += [
        f"  {p.patient_id:<38} {p.events:>6} {p.proposals:>9} {p.tasks:>5} {p.urgent:>6} "
        f"{p.no_results:>9}" + (f"  errors: {p.errors}" if p.errors else "")
        for p in report.patients
    ]
    return lines


_BURDEN_FIELDS = (
    "events",
    "opened",
    "updated",
    "open_at_end",
    "urgent",
    "withdrawn",
    "withdrawn_unseen",
    "expired",
    "listed",
)


def _burden_json(report: BurdenReport) -> str:
    return json.dumps(
        {
            "arrival": report.arrival,
            "bots": list(report.bots),
            "patients": len(report.patients),
            "totals": {name: report.total(name) for name in (*_BURDEN_FIELDS, "errors")},
            "per_patient": [
                {
                    "patient": p.patient_id,
                    **{name: getattr(p, name) for name in (*_BURDEN_FIELDS, "errors")},
                    "opened_by_protocol": dict(sorted(p.by_protocol.items())),
                }
                for p in report.patients
            ],
        },
        indent=2,
    )


def _burden_text(report: BurdenReport) -> list[str]:
    heads = (
        "events",
        "opened",
        "updated",
        "open-end",
        "urgent",
        "withdrawn",
        "unseen",
        "expired",
        "listed",
    )
    lines = [
        f"Alert burden of {', '.join(report.bots)} ({report.arrival} arrival): "
        f"{len(report.patients)} patients, nothing written",
        "",
        f"  {'patient':<38} " + " ".join(f"{h:>9}" for h in heads),
    ]
    lines += [
        f"  {p.patient_id:<38} "
        + " ".join(f"{getattr(p, name):>9}" for name in _BURDEN_FIELDS)
        + (f"  errors: {p.errors}" if p.errors else "")
        for p in report.patients
    ]
    lines.append(
        f"  {'total':<38} " + " ".join(f"{report.total(name):>9}" for name in _BURDEN_FIELDS)
    )
    return lines


def backtest(
    bot: Annotated[
        str,
        typer.Option(
            "--bot",
            help="The bot to evaluate, e.g. bmi; 'all' replays every bot through the live "
            "write plan and reports the clinician's alert burden per patient.",
        ),
    ] = "all",
    arrival: Annotated[
        str,
        typer.Option(
            help="With --bot all: 'live' (each result processed when taken) or 'bulk' (the "
            "whole history posted at once, the day after the newest result)."
        ),
    ] = "live",
    since: Annotated[
        str | None, typer.Option(help="Replay only events at or after this date (ISO 8601).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of FHIR patient bundles (*.json) or one bundle file "
            "[default: ../shared/data/synthea next to the repository]."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Replay a bot over patients' histories and report what it would have proposed; with
    --bot all (the default), what a clinician would have lived through."""
    if arrival not in ("live", "bulk"):
        raise _fail(f"--arrival must be live or bulk, got {arrival!r}")
    chosen = None
    if bot != "all":
        try:
            chosen = bot_by_name(bot)
        except KeyError as exc:
            raise _fail(str(exc.args[0])) from None
    start = _parse_since(since)
    folder = data if data is not None else DEFAULT_DATA
    if not folder.exists():
        hint = "" if data is not None else " (give --data DIR)"
        raise _fail(f"data folder {folder} does not exist{hint}")
    files = bundle_files(folder)
    if not files:
        raise _fail(f"no *.json bundle files in {folder}")

    histories: list[PatientHistory] = []
    for index, path in enumerate(files, start=1):
        typer.echo(f"[{index}/{len(files)}] reading {path.name}", err=True)
        try:
            history = load_history(path)
        except (BundleError, OSError) as exc:
            raise _fail(str(exc)) from None
        if history is not None:
            histories.append(history)

    done = 0

    def progress(history: PatientHistory) -> None:
        nonlocal done
        done += 1
        typer.echo(f"[{done}/{len(histories)}] replaying patient {history.patient_id}", err=True)

    if chosen is None:
        if start is not None:
            raise _fail("--since applies to one bot; the alert burden replays whole histories")
        mode: Arrival = "bulk" if arrival == "bulk" else "live"
        try:
            lived = burden(ALL_BOTS, histories, arrival=mode, progress=progress)
        except (ValueError, ConflictError) as exc:
            raise _fail(str(exc)) from None
        if as_json:
            typer.echo(_burden_json(lived))
        else:
            for line in _burden_text(lived):
                typer.echo(line)
        return
    try:
        report = run_backtest(chosen, histories, since=start, progress=progress)
    except ValueError as exc:  # a prefetch the backtest cannot emulate
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(_report_json(report))
    else:
        for line in _report_text(report):
            typer.echo(line)


def register(cli: typer.Typer) -> None:
    """Add ``replay`` and ``backtest`` to the development command line."""
    cli.command("replay")(replay)
    cli.command("backtest")(backtest)
