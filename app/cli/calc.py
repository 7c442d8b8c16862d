"""``starvit calc``: the bots' clinical calculators on values typed on the command line.

Every number comes from ``app.clinical`` (the code the bots run); this module only
parses arguments and prints. Exit status: 0 when the calculation ran (also when it gives no
result for a clinical reason, e.g. an age under 20 for BMI, which is printed with its reason),
2 for bad input (unknown or mismatched unit, non-positive value, malformed or missing option)
and for a value the bots would refuse too: outside the plausible range of its kind
(``app.clinical.plausibility``: an age of 140, a creatinine of 0.01 mg/dL), or plausible only
in another unit (an HbA1c of 45 %).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from app.clinical.blood_pressure import (
    MM_HG,
    BloodPressureAssessment,
    BloodPressureReading,
    assess_blood_pressure,
    hypertensive_crisis_suggestion,
)
from app.clinical.bmi import BMI_ADULT_AGE_YEARS, BMI_DECIMALS, bmi
from app.clinical.egfr import EGFR_DECIMALS, egfr_ckd_epi_2021
from app.clinical.hba1c import HBA1C_DECIMALS, diabetes_evaluation_suggestion, hba1c
from app.clinical.obesity import weight_management_suggestion
from app.clinical.plausibility import (
    BODY_HEIGHT,
    BODY_WEIGHT,
    CREATININE,
    DIASTOLIC,
    HBA1C,
    SYSTOLIC,
    Refusal,
    check_age,
    check_value,
)
from app.clinical.result import Outcome

if TYPE_CHECKING:
    from app.clinical.result import Citation, MetricResult, Suggestion

calc_app = typer.Typer(
    name="calc",
    help=(
        "Run the bots' clinical calculators on values given on the command line. Units are "
        "UCUM codes (kg, g, [lb_av]; cm, m, [in_i]; mg/dL, umol/L; mm[Hg], kPa; %, mmol/mol)."
    ),
    no_args_is_help=True,
    add_completion=False,
    # UCUM codes such as [lb_av] and mm[Hg] must not be read as rich markup tags.
    rich_markup_mode=None,
)

type JsonValue = str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

_READING = re.compile(r"^\s*(?P<systolic>[^/@]+)/(?P<diastolic>[^/@]+)(?:@(?P<when>.+))?$")


@calc_app.command("bmi")
def bmi_command(
    *,
    weight: Annotated[float, typer.Option(help="Body weight.")],
    height: Annotated[float, typer.Option(help="Body height.")],
    weight_unit: Annotated[str, typer.Option(help="UCUM mass unit, e.g. kg, g, [lb_av].")] = "kg",
    height_unit: Annotated[str, typer.Option(help="UCUM length unit, e.g. cm, m, [in_i].")] = "cm",
    age: Annotated[
        int | None,
        typer.Option(help="Age in whole years; omit for an adult (the adult categories apply)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Adult body mass index (kg/m2) with its WHO category.

    Example: --weight 180 --weight-unit [lb_av] --height 70 --height-unit [in_i]
    """
    _refuse(
        check_value(BODY_WEIGHT, weight, weight_unit),
        check_value(BODY_HEIGHT, height, height_unit),
        check_age(age) if age is not None else None,
    )
    result = bmi(
        weight=weight,
        weight_unit=weight_unit,
        height=height,
        height_unit=height_unit,
        age_years=BMI_ADULT_AGE_YEARS if age is None else age,
    )
    _print_metric(
        "BMI", result, BMI_DECIMALS, [weight_management_suggestion(result)], as_json=as_json
    )


@calc_app.command("egfr")
def egfr_command(
    *,
    creatinine: Annotated[float, typer.Option(help="Serum or plasma creatinine.")],
    age: Annotated[int, typer.Option(help="Age in whole years at the specimen's time.")],
    sex: Annotated[str, typer.Option(help="female or male (CKD-EPI 2021 coefficients).")],
    unit: Annotated[
        str, typer.Option(help="UCUM unit of the creatinine, e.g. mg/dL, umol/L.")
    ] = "mg/dL",
    as_json: JsonOption = False,
) -> None:
    """eGFR by CKD-EPI 2021 (creatinine, no race) with its KDIGO G stage.

    Example: --creatinine 1.2 --unit mg/dL --age 60 --sex female
    """
    _refuse(check_value(CREATININE, creatinine, unit), check_age(age))
    result = egfr_ckd_epi_2021(
        creatinine=creatinine, creatinine_unit=unit, age_years=age, sex=sex.strip().lower()
    )
    _print_metric("eGFR", result, EGFR_DECIMALS, [], as_json=as_json)


@calc_app.command("hba1c")
def hba1c_command(
    *,
    value: Annotated[float, typer.Option(help="HbA1c result.")],
    unit: Annotated[str, typer.Option(help="% (NGSP) or mmol/mol (IFCC).")] = "%",
    has_diabetes: Annotated[
        bool,
        typer.Option("--has-diabetes", help="An active diabetes condition is recorded."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """HbA1c with its ADA category and the diabetes-evaluation suggestion.

    Example: --value 6.7 (or --value 50 --unit mmol/mol; add --has-diabetes when known)
    """
    _refuse(check_value(HBA1C, value, unit))
    result = hba1c(value=value, unit=unit)
    suggestion = diabetes_evaluation_suggestion(result, has_active_diabetes=has_diabetes)
    _print_metric("HbA1c", result, HBA1C_DECIMALS, [suggestion], as_json=as_json)


@calc_app.command("bp")
def bp_command(
    *,
    reading: Annotated[
        list[str],
        typer.Option(
            metavar="SYS/DIA[@DATE]",
            help=(
                "A reading SYSTOLIC/DIASTOLIC, optionally @DATE (ISO 8601), e.g. 142/91 or "
                "142/91@2024-05-01; repeat for each reading. Give a date for every reading or "
                "for none: undated readings count as separate occasions, one day apart."
            ),
        ),
    ],
    unit: Annotated[str, typer.Option(help="UCUM pressure unit, e.g. mm[Hg], kPa.")] = MM_HG,
    as_json: JsonOption = False,
) -> None:
    """Average blood pressure, its ACC/AHA 2017 category and the crisis flag.

    The average needs readings on at least 2 occasions (days) within 30 days.
    Example: --reading 142/91@2024-05-01 --reading 138/88@2024-05-08
    """
    readings, note = _parse_readings(reading, unit)
    for parsed in readings:
        _refuse(
            check_value(SYSTOLIC, parsed.systolic, unit),
            check_value(DIASTOLIC, parsed.diastolic, unit),
        )
        # The average leaves a bad reading out; a reading typed here is refused instead.
        alone = assess_blood_pressure([parsed])
        if alone.outcome is Outcome.INVALID_INPUT:
            _fail(alone.reason or "invalid blood pressure reading")
    assessment = assess_blood_pressure(readings)
    if assessment.outcome is Outcome.INVALID_INPUT:
        _fail(assessment.reason or "invalid blood pressure reading")
    suggestion = hypertensive_crisis_suggestion(assessment)
    if as_json:
        _echo_json(_assessment_json(assessment, suggestion, note))
        return
    if assessment.systolic is not None and assessment.diastolic is not None:
        typer.echo(
            f"Average blood pressure: {assessment.systolic:.0f}/{assessment.diastolic:.0f} "
            f"{assessment.unit} ({len(assessment.readings)} readings on "
            f"{assessment.occasions} occasions)"
        )
        typer.echo(f"Category: {assessment.category}")
    else:
        typer.echo(f"No average: {assessment.reason}")
    typer.echo(f"Hypertensive crisis: {'yes (urgent)' if suggestion is not None else 'no'}")
    if note is not None:
        typer.echo(f"Note: {note}")
    _echo_citation("Source", assessment.citation)
    _echo_suggestion(suggestion)


def _parse_readings(specs: list[str], unit: str) -> tuple[list[BloodPressureReading], str | None]:
    parsed: list[tuple[float, float, datetime | None]] = []
    for spec in specs:
        match = _READING.match(spec)
        if match is None:
            _fail(f"reading {spec!r} is not SYSTOLIC/DIASTOLIC[@DATE], e.g. 142/91@2024-05-01")
        try:
            systolic = float(match["systolic"])
            diastolic = float(match["diastolic"])
        except ValueError:
            _fail(f"reading {spec!r}: systolic and diastolic must be numbers")
        when = match["when"]
        parsed.append((systolic, diastolic, None if when is None else _parse_time(spec, when)))
    dated = [taken_at for _, _, taken_at in parsed if taken_at is not None]
    if dated and len(dated) != len(parsed):
        _fail("give a date (@DATE) for every reading or for none")
    note = None
    if not dated:
        # A calculator user typing undated readings means separate visits; say so in the output.
        note = "readings without dates are taken as separate occasions, one day apart"
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        count = len(parsed)
        parsed = [
            (systolic, diastolic, today - timedelta(days=count - 1 - index))
            for index, (systolic, diastolic, _) in enumerate(parsed)
        ]
    readings = [
        BloodPressureReading(
            systolic=systolic,
            diastolic=diastolic,
            taken_at=taken_at,
            systolic_unit=unit,
            diastolic_unit=unit,
        )
        for systolic, diastolic, taken_at in parsed
        if taken_at is not None
    ]
    return readings, note


def _parse_time(spec: str, when: str) -> datetime:
    try:
        taken_at = datetime.fromisoformat(when.strip())
    except ValueError:
        _fail(f"reading {spec!r}: {when!r} is not an ISO 8601 date, e.g. 2024-05-01")
    return taken_at if taken_at.tzinfo is not None else taken_at.replace(tzinfo=UTC)


def _print_metric(
    label: str,
    result: MetricResult,
    decimals: int,
    suggestions: list[Suggestion | None],
    *,
    as_json: bool,
) -> None:
    if result.outcome is Outcome.INVALID_INPUT:
        _fail(result.reason or "invalid input")
    suggestion = next((item for item in suggestions if item is not None), None)
    if as_json:
        document: dict[str, JsonValue] = {
            "value": _json_number(result.value, decimals),
            "unit": result.unit,
            "category": result.category,
            "outcome": str(result.outcome),
        }
        if result.value is None:
            document["reason"] = result.reason
        document["citation"] = _citation_json(result.citation)
        if result.supporting_citations:
            document["supporting_citations"] = [
                _citation_json(citation) for citation in result.supporting_citations
            ]
        document["suggestion"] = _suggestion_json(suggestion)
        _echo_json(document)
        return
    if result.value is None:
        typer.echo(f"{label}: no result: {result.reason}")
    else:
        typer.echo(f"{label}: {result.value:.{decimals}f} {result.unit}")
        typer.echo(f"Category: {result.category}")
    _echo_citation("Source", result.citation)
    for citation in result.supporting_citations:
        _echo_citation("Also", citation)
    _echo_suggestion(suggestion)


def _assessment_json(
    assessment: BloodPressureAssessment, suggestion: Suggestion | None, note: str | None
) -> dict[str, JsonValue]:
    value: JsonValue = None
    if assessment.systolic is not None and assessment.diastolic is not None:
        value = {
            "systolic": _json_number(assessment.systolic, 0),
            "diastolic": _json_number(assessment.diastolic, 0),
        }
    document: dict[str, JsonValue] = {
        "value": value,
        "unit": assessment.unit,
        "category": assessment.category,
        "outcome": str(assessment.outcome),
    }
    if value is None:
        document["reason"] = assessment.reason
    document |= {
        "occasions": assessment.occasions,
        "readings": len(assessment.readings),
        "crisis": suggestion is not None,
        "citation": _citation_json(assessment.citation),
        "suggestion": _suggestion_json(suggestion),
    }
    if note is not None:
        document["note"] = note
    return document


def _json_number(value: float | None, decimals: int) -> JsonValue:
    if value is None:
        return None
    return round(value) if decimals == 0 else value


def _citation_json(citation: Citation) -> dict[str, JsonValue]:
    return {"title": citation.title, "source": citation.source, "url": citation.url}


def _suggestion_json(suggestion: Suggestion | None) -> JsonValue:
    if suggestion is None:
        return None
    return {
        "title": suggestion.title,
        "rationale": suggestion.rationale,
        "urgent": suggestion.urgent,
        "citation": _citation_json(suggestion.citation),
    }


def _echo_citation(label: str, citation: Citation) -> None:
    typer.echo(f"{label}: {citation.source}. {citation.title}. {citation.url}")


def _echo_suggestion(suggestion: Suggestion | None) -> None:
    if suggestion is None:
        return
    typer.echo(f"Suggestion: {suggestion.title}")
    typer.echo(f"  {suggestion.rationale}")


def _echo_json(document: dict[str, JsonValue]) -> None:
    typer.echo(json.dumps(document, ensure_ascii=False))


def _refuse(*refusals: Refusal | None) -> None:
    """Exit 2 with the first refusal's reason: the value is not computed from, as in the bots."""
    for refusal in refusals:
        if refusal is not None:
            _fail(f"{refusal.outcome}: {refusal.reason}")


def _fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2 (the usage-error status)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=2)
