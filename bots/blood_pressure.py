"""Blood-pressure bot: average over recent occasions (ACC/AHA 2017) and hypertensive crisis.

Logic: docs/CLINICAL_LOGIC.md "Blood pressure" (``app.clinical.blood_pressure``).
Readings come from panels (85354-9, legacy 55284-4) with components 8480-6 / 8462-4, and from
single systolic / diastolic Observations paired by the domain's ``pair_readings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from app.botkit.declaration import (
    BotContext,
    BotDeclaration,
    BotEvent,
    Effect,
    Evidence,
    Interaction,
    NoResult,
    ObservationComponentValue,
    OpenReviewTask,
    Prefetch,
    ProposeObservation,
    Retract,
    SlotPolicy,
    Trigger,
)
from app.clinical.blood_pressure import (
    ACC_AHA_2017,
    AVERAGE_DECIMALS,
    AVERAGING_WINDOW,
    BP_PANEL_LOINC,
    DIASTOLIC_LOINC,
    MM_HG,
    PAIRING_TOLERANCE,
    SYSTOLIC_LOINC,
    BloodPressureAssessment,
    BloodPressureCategory,
    BloodPressureReading,
    assess_blood_pressure,
    hypertensive_crisis_suggestion,
    pair_readings,
)
from app.clinical.evidence import ADULT_AGE_YEARS, age_in_years
from app.clinical.plausibility import check
from app.clinical.result import round_half_up
from app.fhir.units import UnitConversionError, convert
from app.fhir.views import LOINC, ObservationView
from bots._observations import (
    INSUFFICIENT_EVIDENCE,
    INVALID_INPUT,
    NOT_APPLICABLE,
    TimedObservation,
    cite,
    day,
    deceased,
    merge_observations,
    notified_observation,
    observation_search,
    patient_birth_date,
    patient_reference,
    refusal_of,
    trigger_criteria,
    usable_measurements,
)

if TYPE_CHECKING:
    from datetime import datetime

# Blood pressure panel as coded by Synthea up to v2.4 (and older systems); same components.
LEGACY_BP_PANEL_LOINC = "55284-4"
PANEL_LOINCS = (BP_PANEL_LOINC, LEGACY_BP_PANEL_LOINC)
READINGS = "blood-pressure"
ENCOUNTERS = "encounters"
# The setting of a reading, from the class of its Encounter (HL7 v3 ActCode, the codes FHIR R4
# Encounter.class uses). ACC/AHA 2017 categories are for office readings (section 4.1);
# out-of-office readings have other corresponding values (Table 11) and inpatient or emergency
# readings do not diagnose hypertension, so the average uses office readings only. A reading
# without a resolvable Encounter counts as an office reading.
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "EMER", "OBSENC", "SS", "PRENC"})
HOME_CLASSES = frozenset({"HH", "VR"})

# The average is proposed as a 85354-9 panel (value in the components 8480-6 / 8462-4) whose
# category text says it is an average; LOINC has no dedicated code for a multi-day mean of
# office readings.
AVERAGE_DISPLAY = "Blood pressure panel with all children optional"
SYSTOLIC_DISPLAY = "Systolic blood pressure"
DIASTOLIC_DISPLAY = "Diastolic blood pressure"

AVERAGE_SLOT = "bp-average"
HYPERTENSION_SLOT = "hypertension"
CRISIS_SLOT = "hypertensive-crisis"
# Titles are read by people: "mmHg", not the UCUM code mm[Hg].
MM_HG_TEXT = "mmHg"
SEVERITY: dict[str, int] = {
    BloodPressureCategory.STAGE_1_HYPERTENSION: 1,
    BloodPressureCategory.STAGE_2_HYPERTENSION: 2,
}

CATEGORY_LABELS: dict[str, str] = {
    BloodPressureCategory.NORMAL: "normal",
    BloodPressureCategory.ELEVATED: "elevated",
    BloodPressureCategory.STAGE_1_HYPERTENSION: "stage 1 hypertension",
    BloodPressureCategory.STAGE_2_HYPERTENSION: "stage 2 hypertension",
}

DECLARATION = BotDeclaration(
    name="blood-pressure",
    version="1.2.0",
    title="Blood pressure average and hypertensive crisis",
    citation=ACC_AHA_2017,
    trigger=Trigger(
        resource_type="Observation",
        criteria=trigger_criteria(
            BP_PANEL_LOINC, LEGACY_BP_PANEL_LOINC, SYSTOLIC_LOINC, DIASTOLIC_LOINC
        ),
        interactions=(Interaction.CREATE, Interaction.UPDATE, Interaction.DELETE),
    ),
    prefetch=(
        Prefetch(
            READINGS,
            observation_search(
                BP_PANEL_LOINC, LEGACY_BP_PANEL_LOINC, SYSTOLIC_LOINC, DIASTOLIC_LOINC, count=50
            ),
        ),
        # The readings' settings (office, home, inpatient) from their Encounters' classes.
        Prefetch(ENCOUNTERS, "Encounter?patient={{patient}}&_sort=-date&_count=100"),
    ),
    description=(
        "Average per occasion of the readings of the 30 days ending at the newest one (at least "
        "2 occasions) with its ACC/AHA 2017 category: hypertension (stage 1 or 2) opens a review "
        "Task, a normal or elevated average is listed for approval; an urgent Task for a "
        "notified crisis reading."
    ),
    slots=(
        SlotPolicy(AVERAGE_SLOT, actionable=False, window=timedelta(days=90)),
        SlotPolicy(HYPERTENSION_SLOT, window=timedelta(days=90), snooze=timedelta(days=180)),
        # A crisis reading from days ago is not an emergency to act on now; a rejected crisis
        # alert never silences the next crisis reading (no snooze).
        SlotPolicy(CRISIS_SLOT, window=timedelta(days=2), snooze=timedelta(0)),
    ),
)


@dataclass(frozen=True, slots=True)
class SourcedReading:
    """A reading and the Observation(s) it was read from (a panel, or two singles)."""

    reading: BloodPressureReading
    sources: tuple[ObservationView, ...]


def _component(view: ObservationView, loinc: str) -> tuple[float, str] | None:
    """The component's exact, plausible value (a bound or an implausible value is none)."""
    for component in view.components:
        value = component.value
        if (
            component.has_code(LOINC, loinc)
            and value is not None
            and check(loinc, value.value, value.unit, value.comparator) is None
        ):
            return value.value, value.unit
    return None


def notified_refusal(notified: ObservationView) -> NoResult | None:
    """Why the notified reading cannot be used: its value (a single systolic or diastolic)
    or a panel component is inexact, implausible or in a mislabelled unit."""
    if not (notified.usable and notified.has_loinc(*PANEL_LOINCS, SYSTOLIC_LOINC, DIASTOLIC_LOINC)):
        return None
    if not notified.has_loinc(*PANEL_LOINCS):
        return refusal_of(notified)
    for component in notified.components:
        value = component.value
        for loinc in (SYSTOLIC_LOINC, DIASTOLIC_LOINC):
            if value is None or not component.has_code(LOINC, loinc):
                continue
            refusal = check(loinc, value.value, value.unit, value.comparator)
            if refusal is not None:
                return NoResult(f"{notified.reference}: {refusal.reason}", refusal.outcome.value)
    return None


def panel_readings(views: list[ObservationView]) -> list[SourcedReading]:
    readings: list[SourcedReading] = []
    for view in views:
        if not (view.usable and view.has_loinc(*PANEL_LOINCS)):
            continue
        systolic = _component(view, SYSTOLIC_LOINC)
        diastolic = _component(view, DIASTOLIC_LOINC)
        effective = view.effective
        if systolic is None or diastolic is None or effective is None:
            continue
        reading = BloodPressureReading(
            systolic=systolic[0],
            diastolic=diastolic[0],
            taken_at=effective,
            systolic_unit=systolic[1],
            diastolic_unit=diastolic[1],
        )
        readings.append(SourcedReading(reading, (view,)))
    return readings


def single_readings(views: list[ObservationView]) -> list[SourcedReading]:
    """Single systolic / diastolic Observations paired by the domain rule, each reading traced
    back to the two Observations it came from."""
    singles = [view for view in views if not view.has_loinc(*PANEL_LOINCS)]
    systolics = usable_measurements(singles, SYSTOLIC_LOINC)
    diastolics = usable_measurements(singles, DIASTOLIC_LOINC)
    paired = pair_readings(
        [item.measurement for item in systolics], [item.measurement for item in diastolics]
    )
    used: set[str] = set()
    readings: list[SourcedReading] = []
    for reading in paired:
        systolic = _find(
            systolics, used, reading.systolic, reading.systolic_unit, reading, exact_time=True
        )
        diastolic = _find(
            diastolics, used, reading.diastolic, reading.diastolic_unit, reading, exact_time=False
        )
        if systolic is not None and diastolic is not None:
            readings.append(SourcedReading(reading, (systolic.view, diastolic.view)))
    return readings


def _find(
    items: list[TimedObservation],
    used: set[str],
    value: float,
    unit: str,
    reading: BloodPressureReading,
    *,
    exact_time: bool,
) -> TimedObservation | None:
    for item in items:
        gap = abs(item.effective_at - reading.taken_at)
        if (
            item.view.reference not in used
            and item.measurement.value == value
            and item.measurement.unit == unit
            and (gap.total_seconds() == 0 if exact_time else gap <= PAIRING_TOLERANCE)
        ):
            used.add(item.view.reference)
            return item
    return None


def all_readings(views: list[ObservationView]) -> list[SourcedReading]:
    """Panel readings plus paired singles (a pair repeating a panel reading is dropped),
    oldest first."""
    panels = panel_readings(views)
    seen = {sourced.reading for sourced in panels}
    singles = [sourced for sourced in single_readings(views) if sourced.reading not in seen]
    return sorted(
        [*panels, *singles],
        key=lambda sourced: (sourced.reading.taken_at, sourced.sources[0].id),
    )


def in_mm_hg(value: float, unit: str) -> float | None:
    try:
        return round_half_up(convert(value, unit, MM_HG), AVERAGE_DECIMALS)
    except UnitConversionError:
        return None


def _evidence(readings: list[SourcedReading]) -> tuple[Evidence, ...]:
    seen: dict[str, Evidence] = {}
    for sourced in readings:
        for view in sourced.sources:
            seen.setdefault(view.reference, Evidence.of(view))
    return tuple(seen.values())


def crisis_task(notified_reading: SourcedReading, notified: ObservationView) -> Effect | None:
    """An urgent Task when the notified reading is at crisis level."""
    suggestion = hypertensive_crisis_suggestion(assess_blood_pressure([notified_reading.reading]))
    if suggestion is None:
        return None
    reading = notified_reading.reading
    systolic = in_mm_hg(reading.systolic, reading.systolic_unit)
    diastolic = in_mm_hg(reading.diastolic, reading.diastolic_unit)
    shown = (
        f"{systolic:g}/{diastolic:g} {MM_HG_TEXT}"
        if systolic is not None and diastolic is not None
        else f"{reading.systolic:g} {reading.systolic_unit}/{reading.diastolic:g} "
        f"{reading.diastolic_unit}"
    )
    # The notified Observation first: a Task without a proposal focuses on its first evidence.
    evidence = (
        Evidence.of(notified),
        *(Evidence.of(v) for v in notified_reading.sources if v.reference != notified.reference),
    )
    return OpenReviewTask(
        slot=CRISIS_SLOT,
        title=f"URGENT: BP {shown} — hypertensive crisis range",
        rationale=(
            f"Reading {shown} taken {reading.taken_at.isoformat()} "
            f"({', '.join(v.reference for v in notified_reading.sources)}). "
            f"{suggestion.rationale} {cite(suggestion.citation)}"
        ),
        priority="urgent",
        evidence=evidence,
        citation=suggestion.citation,
        evidence_time=reading.taken_at,
    )


def average_effects(
    assessment: BloodPressureAssessment,
    systolic: float,
    diastolic: float,
    window: list[SourcedReading],
) -> list[Effect]:
    label = CATEGORY_LABELS.get(assessment.category or "", str(assessment.category))
    count = len(assessment.readings)
    occasions = assessment.occasions
    evidence = _evidence(window)
    newest = window[-1].reading.taken_at
    oldest = window[0].reading.taken_at
    value = f"{systolic:g}/{diastolic:g} {MM_HG_TEXT}"
    hypertensive = assessment.category in SEVERITY
    slot = HYPERTENSION_SLOT if hypertensive else AVERAGE_SLOT
    other = AVERAGE_SLOT if hypertensive else HYPERTENSION_SLOT
    return [
        Retract(
            other,
            f"Withdrawn: the newer average BP {value} of {day(newest)} is {label}",
            newest,
        ),
        ProposeObservation(
            slot=slot,
            loinc=BP_PANEL_LOINC,
            display=AVERAGE_DISPLAY,
            value=None,
            unit=MM_HG,
            effective=newest,
            evidence=evidence,
            category=f"{label}; average of {count} readings on {occasions} occasions",
            components=(
                ObservationComponentValue(SYSTOLIC_LOINC, SYSTOLIC_DISPLAY, systolic, MM_HG),
                ObservationComponentValue(DIASTOLIC_LOINC, DIASTOLIC_DISPLAY, diastolic, MM_HG),
            ),
        ),
        OpenReviewTask(
            slot=slot,
            title=f"Review average BP {value} ({label})",
            rationale=(
                f"Average blood pressure {value} over {count} readings on {occasions} "
                f"occasions from {day(oldest)} to {day(newest)} (the 30 days ending at the "
                f"newest reading). ACC/AHA 2017 (Whelton et al. 2018, Table 6): {label}; BP "
                f"is estimated from an average of >= 2 readings on >= 2 occasions. "
                f"{cite(ACC_AHA_2017)}"
            ),
            priority="routine",
            evidence=evidence,
            citation=ACC_AHA_2017,
            evidence_time=newest,
            severity=SEVERITY.get(assessment.category or "", 0),
        ),
    ]


def setting_of(sourced: SourcedReading, classes: dict[str, str]) -> str:
    """``office``, ``home`` or ``inpatient``: the class of the reading's Encounter (matched on
    the reference's last segment, so ``Encounter/1`` and ``urn:uuid:1`` both resolve)."""
    for view in sourced.sources:
        reference = view.reference_of("encounter")
        code = classes.get(reference.rsplit("/", 1)[-1].rsplit(":", 1)[-1]) if reference else None
        if code in INPATIENT_CLASSES:
            return "inpatient"
        if code in HOME_CLASSES:
            return "home"
    return "office"


def encounter_classes(context: BotContext) -> dict[str, str]:
    classes: dict[str, str] = {}
    for encounter in context.resources(ENCOUNTERS):
        kind = encounter.get("class")
        code = kind.get("code") if isinstance(kind, dict) else None
        identifier = encounter.get("id")
        if isinstance(code, str) and isinstance(identifier, str):
            classes[identifier] = code
    return classes


@dataclass(frozen=True, slots=True)
class BloodPressureBot:
    declaration: BotDeclaration = DECLARATION

    def compute(self, event: BotEvent, context: BotContext) -> list[Effect]:
        notified = notified_observation(event)
        if isinstance(notified, list):
            return notified
        if (refused := notified_refusal(notified)) is not None:
            return [refused]
        if (dead := deceased(context.patient)) is not None:
            return [dead]
        views = merge_observations(
            notified, context.observations(READINGS), patient_reference(event, notified)
        )
        readings = all_readings(views)
        if not readings:
            return [NoResult("no usable blood pressure reading", INSUFFICIENT_EVIDENCE)]
        newest_at = readings[-1].reading.taken_at
        window = [s for s in readings if s.reading.taken_at >= newest_at - AVERAGING_WINDOW]
        effects: list[Effect] = []
        notified_reading = next(
            (s for s in window if any(v.reference == notified.reference for v in s.sources)),
            None,
        )
        if (
            notified_reading is not None
            and (task := crisis_task(notified_reading, notified)) is not None
        ):
            effects.append(task)
        adult = self._adult_at(context, newest_at)
        if adult is not None:
            return [*effects, adult]
        # Settings kept apart: the crisis check above reads every reading; the average only
        # office readings, over the 30 days ending at the newest office reading.
        classes = encounter_classes(context)
        office = [s for s in readings if setting_of(s, classes) == "office"]
        if not office:
            return [
                *effects,
                NoResult(
                    "no office reading: home and inpatient readings are not averaged with the "
                    "ACC/AHA office categories",
                    INSUFFICIENT_EVIDENCE,
                ),
            ]
        office_newest = office[-1].reading.taken_at
        window = [s for s in office if s.reading.taken_at >= office_newest - AVERAGING_WINDOW]
        assessment = assess_blood_pressure([s.reading for s in window])
        if assessment.systolic is None or assessment.diastolic is None:
            return [*effects, NoResult(assessment.reason or "no average", assessment.outcome.value)]
        return [
            *effects,
            *average_effects(
                assessment,
                assessment.systolic,
                assessment.diastolic,
                # Only the readings the average used: a bad one is excluded on its own.
                [s for s in window if s.reading in assessment.readings],
            ),
        ]

    @staticmethod
    def _adult_at(context: BotContext, newest_at: datetime) -> NoResult | None:
        """None when the patient is an adult at the newest reading, else why not."""
        birth_date = patient_birth_date(context.patient)
        if isinstance(birth_date, NoResult):
            return birth_date
        try:
            age = age_in_years(birth_date, newest_at.date())
        except ValueError as exc:
            return NoResult(f"blood pressure reading: {exc}", INVALID_INPUT)
        if age < ADULT_AGE_YEARS:
            return NoResult(
                "ACC/AHA 2017 categories are for adults; children need BP percentiles",
                NOT_APPLICABLE,
            )
        return None


BOT = BloodPressureBot()
