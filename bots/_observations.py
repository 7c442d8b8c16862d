"""Shared FHIR-to-evidence mapping for the bots (no clinical formulas here).

Every bot reads the notified Observation plus its prefetched searches; this module merges
them (the notified version wins over a prefetched copy of the same resource), keeps the usable
ones (status final, amended or corrected, a value and an effective time), and maps them onto
the plain :class:`~app.clinical.evidence.Measurement` the calculators take. A result with a
``dataAbsentReason``, a comparator (``<0.2``) or a value outside the plausible range of its
code (``app.clinical.plausibility``) is no evidence either: the notified one is answered with
a NoResult saying why, prefetched ones are left out. The BMI evaluation is shared by the
``bmi`` and ``obesity`` bots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from app.botkit.declaration import BotEvent, Effect, Interaction, NoResult, Prefetch, Trigger
from app.clinical.bmi import (
    BODY_HEIGHT_LOINC,
    BODY_WEIGHT_LOINC,
    HEIGHT_LOOKBACK,
    bmi_for_weight,
)
from app.clinical.bmi import height_for_weight as _height_for_weight
from app.clinical.evidence import Measurement
from app.clinical.plausibility import RANGES_BY_LOINC, check
from app.clinical.result import Citation, MetricResult, Outcome
from app.fhir.resource_json import get_object
from app.fhir.views import LOINC, ObservationView, PatientView, codings

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import date, datetime

    from app.botkit.declaration import BotContext

# NoResult outcome codes used by the bots beyond the calculators' own (``Outcome``).
INVALID_INPUT: Final = Outcome.INVALID_INPUT.value
NOT_APPLICABLE: Final = Outcome.NOT_APPLICABLE.value
INSUFFICIENT_EVIDENCE: Final = Outcome.INSUFFICIENT_EVIDENCE.value
NOT_USABLE: Final = "not_usable"  # the notified result is preliminary, cancelled, in error...
DECEASED: Final = "patient_deceased"

# Prefetch names shared by the BMI and obesity bots.
WEIGHTS = "weights"
HEIGHTS = "heights"


def observation_search(*loincs: str, count: int) -> str:
    """A prefetch query for the patient's Observations with these LOINC codes, newest first."""
    codes = ",".join(f"http://loinc.org|{code}" for code in loincs)
    return f"Observation?subject={{{{patient}}}}&code={codes}&_sort=-date&_count={count}"


def trigger_criteria(*loincs: str) -> str:
    """A Subscription criteria on Observation codes (a token search, matched in memory)."""
    return "Observation?code=" + ",".join(f"http://loinc.org|{code}" for code in loincs)


def bmi_trigger() -> Trigger:
    """What the BMI-based bots (``bmi``, ``obesity``) watch: body weights and heights."""
    return Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(BODY_WEIGHT_LOINC, BODY_HEIGHT_LOINC),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    )


def bmi_prefetch() -> tuple[Prefetch, ...]:
    """The patient's newest weights and heights, for the BMI-based bots."""
    return (
        Prefetch(WEIGHTS, observation_search(BODY_WEIGHT_LOINC, count=20)),
        Prefetch(HEIGHTS, observation_search(BODY_HEIGHT_LOINC, count=20)),
    )


def notified_observation(event: BotEvent) -> ObservationView | list[Effect]:
    """The notified Observation, or the effects to return at once: ``[]`` for a delete (the
    framework retracts what was derived from it), a ``NoResult`` for anything else."""
    if event.interaction is Interaction.DELETE:
        return []
    resource = event.resource
    if resource is None or resource.resource_type != "Observation":
        kind = resource.resource_type if resource is not None else "nothing"
        return [
            NoResult(
                f"the notified resource is {kind or 'untyped'}, not an Observation", INVALID_INPUT
            )
        ]
    return ObservationView(resource.json)


def not_evidence(notified: ObservationView) -> NoResult | None:
    """Only final, amended or corrected results are evidence (a preliminary one may change)."""
    if notified.usable:
        return None
    return NoResult(
        f"{notified.reference} has status {notified.status!r}: only final, amended or corrected "
        "results are evidence",
        NOT_USABLE,
    )


def deceased(patient: PatientView | None) -> NoResult | None:
    """No new suggestion for a deceased patient (``deceasedBoolean`` or ``deceasedDateTime``)."""
    if patient is not None and patient.deceased:
        return NoResult(
            "patient deceased: no new suggestions are made (Patient.deceased is set)", DECEASED
        )
    return None


def _range_code(view: ObservationView) -> str | None:
    """The view's first LOINC code with a plausible range, else its first LOINC code."""
    loincs = [c.code for c in codings(view.code) if c.system == LOINC and c.code]
    return next((code for code in loincs if code in RANGES_BY_LOINC), loincs[0] if loincs else "")


def refusal_of(view: ObservationView) -> NoResult | None:
    """Why a result with a value cannot be used as an exact value: a ``dataAbsentReason``, a
    comparator, or a value outside the plausible range of its code (or in a mislabelled
    unit). None when it can be used."""
    if "dataAbsentReason" in view.json:
        absent = get_object(view.json, "dataAbsentReason")
        text = ", ".join(c.code or "" for c in codings(absent))
        return NoResult(
            f"{view.reference} carries a dataAbsentReason ({text or 'uncoded'}): no value to use",
            NOT_USABLE,
        )
    quantity = view.value_quantity
    if quantity is None:
        return None
    refusal = check(_range_code(view) or "", quantity.value, quantity.unit, quantity.comparator)
    if refusal is None:
        return None
    return NoResult(f"{view.reference}: {refusal.reason}", refusal.outcome.value)


def patient_reference(event: BotEvent, notified: ObservationView) -> str | None:
    return event.patient or notified.subject


def merge_observations(
    notified: ObservationView, prefetched: Iterable[ObservationView], patient: str | None
) -> list[ObservationView]:
    """The notified Observation plus the prefetched ones, one per resource (the notified
    version replaces a prefetched copy), other patients' resources left out."""
    merged: dict[str, ObservationView] = {}
    for view in prefetched:
        if patient is not None and view.subject is not None and view.subject != patient:
            continue
        merged.setdefault(view.reference, view)
    merged[notified.reference] = notified
    return sorted(merged.values(), key=lambda view: view.reference)


def measurement_of(view: ObservationView) -> Measurement | None:
    """The Observation's ``valueQuantity`` at its effective time, or None when either is
    missing (an Observation without them is no evidence)."""
    quantity = view.value_quantity
    effective = view.effective
    if quantity is None or effective is None:
        return None
    return Measurement(value=quantity.value, unit=quantity.unit, effective_at=effective)


@dataclass(frozen=True, slots=True)
class TimedObservation:
    """A usable Observation with its measurement (``Timed`` for the domain's evidence rules)."""

    view: ObservationView
    measurement: Measurement

    @property
    def effective_at(self) -> datetime:
        return self.measurement.effective_at


def usable_measurements(views: Iterable[ObservationView], *loincs: str) -> list[TimedObservation]:
    """Usable Observations with one of ``loincs`` and an exact, plausible value, oldest first
    (ties by id)."""
    timed = [
        TimedObservation(view, measurement)
        for view in views
        if view.usable
        and view.has_loinc(*loincs)
        and (measurement := measurement_of(view)) is not None
        and refusal_of(view) is None
    ]
    return sorted(timed, key=lambda item: (item.effective_at, item.view.id))


def refused_in(
    views: Iterable[ObservationView], *loincs: str, since: datetime | None = None
) -> list[NoResult]:
    """The refusals of usable results with ``loincs`` (taken at ``since`` or later), to say
    why a result was left out when nothing else could be used."""
    return [
        refusal
        for view in views
        if view.usable
        and view.has_loinc(*loincs)
        and (since is None or (view.effective is not None and view.effective >= since))
        and (refusal := refusal_of(view)) is not None
    ]


def malformed_notified(notified: ObservationView, *loincs: str) -> NoResult | None:
    """A usable notified result of the bot's codes that carries no exact, plausible value or no
    time cannot be evidence: say so rather than silently compute from older data."""
    if not (notified.usable and notified.has_loinc(*loincs)):
        return None
    if (refusal := refusal_of(notified)) is not None:
        return refusal
    if measurement_of(notified) is None:
        return NoResult(
            f"{notified.reference} has no valueQuantity (value and unit) or no effective time",
            INVALID_INPUT,
        )
    return None


def patient_birth_date(patient: PatientView | None) -> date | NoResult:
    if patient is None:
        return NoResult("the Patient was not available to the bot", INSUFFICIENT_EVIDENCE)
    birth_date = patient.birth_date
    if birth_date is None:
        return NoResult(
            "Patient.birthDate is missing or partial: the age cannot be computed",
            INSUFFICIENT_EVIDENCE,
        )
    return birth_date


def no_result_of(result: MetricResult) -> NoResult:
    return NoResult(result.reason or "no result", result.outcome.value)


def day(moment: datetime) -> str:
    """The calendar date of an evidence time, in the evidence's own offset."""
    return moment.date().isoformat()


def quantity_text(measurement: Measurement) -> str:
    return f"{measurement.value:g} {measurement.unit}"


def cite(citation: Citation) -> str:
    return f"Source: {citation.source}. {citation.url}"


# ------------------------------------------------------------------------ BMI (bmi, obesity)


@dataclass(frozen=True, slots=True)
class BmiEvaluation:
    """A computed adult BMI and the exact weight and height it comes from."""

    result: MetricResult
    value: float  # the reported BMI (``result.value``), kg/m2
    weight: TimedObservation
    height: TimedObservation


def evaluate_bmi(event: BotEvent, context: BotContext) -> BmiEvaluation | list[Effect]:
    """The BMI of the newest usable weight (the notified one included), paired with a height
    by the domain's evidence rule; otherwise the effects to return (``[]`` or a NoResult)."""
    notified = notified_observation(event)
    if isinstance(notified, list):
        return notified
    if (
        malformed := malformed_notified(notified, BODY_WEIGHT_LOINC, BODY_HEIGHT_LOINC)
    ) is not None:
        return [malformed]
    views = merge_observations(
        notified,
        [*context.observations(WEIGHTS), *context.observations(HEIGHTS)],
        patient_reference(event, notified),
    )
    weights = usable_measurements(views, BODY_WEIGHT_LOINC)
    if not weights:
        return [
            NoResult(
                "no usable body weight (29463-7): final, amended or corrected, with a value",
                INSUFFICIENT_EVIDENCE,
            )
        ]
    weight = weights[-1]
    if (dead := deceased(context.patient)) is not None:
        return [dead]
    birth_date = patient_birth_date(context.patient)
    if isinstance(birth_date, NoResult):
        return [birth_date]
    # Heights by id, so that among heights taken at the same instant the choice is stable.
    heights = sorted(usable_measurements(views, BODY_HEIGHT_LOINC), key=lambda h: h.view.id)
    height = _height_for_weight(weight.effective_at, heights)
    result = bmi_for_weight(
        weight.measurement,
        [height.measurement] if height is not None else [],
        birth_date=birth_date,
    )
    if result.value is None or height is None:
        left_out = refused_in(views, BODY_HEIGHT_LOINC, since=weight.effective_at - HEIGHT_LOOKBACK)
        if height is None and left_out:
            # Say which heights were refused, rather than only "no height".
            reasons = "; ".join(n.reason for n in left_out)
            return [NoResult(f"{result.reason}. Left out: {reasons}", left_out[0].outcome)]
        return [no_result_of(result)]
    return BmiEvaluation(result=result, value=result.value, weight=weight, height=height)
