"""The bots on the Synthea patients in ../shared/data/synthea, against values computed here.

Every expected value is computed in this file with the published formula written out (not by
calling ``app.domain``): BMI = kg / m^2 (WHO), CKD-EPI 2021 (Inker et al. 2021), the ACC/AHA
2017 average over 30 days / 2 occasions and the crisis thresholds. Synthea's own eGFR
(33914-3) is never used. Each bundle is read once per module.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

from app.botkit.declaration import (
    BotContext,
    BotEvent,
    Effect,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
)
from app.fhir.views import ObservationView, PatientView
from bots.blood_pressure import BOT as BLOOD_PRESSURE
from bots.bmi import BOT as BMI
from bots.egfr import BOT as EGFR
from devtools.synthea import bundle_resources, read_bundle

SYNTHEA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "synthea"

Resource = dict[str, Any]


def bundle_path(prefix: str) -> Path:
    [path] = SYNTHEA.glob(f"{prefix}*.json")
    return path


@cache
def load(prefix: str) -> tuple[Resource, tuple[Resource, ...]]:
    """(Patient, Observations) with subject rewritten to Patient/<id> and versionId "1"."""
    resources: list[Resource] = bundle_resources(read_bundle(bundle_path(prefix)))
    [patient] = [r for r in resources if r["resourceType"] == "Patient"]
    patient["meta"] = {**patient.get("meta", {}), "versionId": "1"}
    observations = []
    for resource in resources:
        if resource["resourceType"] != "Observation":
            continue
        obs = dict(resource)
        obs["subject"] = {"reference": f"Patient/{patient['id']}"}
        obs["meta"] = {**obs.get("meta", {}), "versionId": "1"}
        observations.append(obs)
    return patient, tuple(observations)


def code_of(obs: Resource) -> str:
    return obs["code"]["coding"][0]["code"]


def when(obs: Resource) -> datetime:
    return datetime.fromisoformat(obs["effectiveDateTime"])


def with_code(prefix: str, *codes: str) -> list[Resource]:
    _, observations = load(prefix)
    return sorted((o for o in observations if code_of(o) in codes), key=when)


def half_up(value: float, places: int) -> float:
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def replay(bot: Any, prefix: str, notified: Resource, **prefetched: list[Resource]) -> list[Effect]:
    patient, _ = load(prefix)
    view = ObservationView(notified)
    event = BotEvent(Interaction.CREATE, view, view.reference, "1", f"Patient/{patient['id']}")
    at = when(notified)
    return bot.compute(event, BotContext(as_of(patient, at), prefetched, now=at))


def as_of(patient: Resource, moment: datetime) -> PatientView:
    """The Patient as it was at ``moment``: a death recorded later had not happened yet."""
    died = patient.get("deceasedDateTime")
    if died is not None and datetime.fromisoformat(died) > moment:
        patient = {k: v for k, v in patient.items() if k != "deceasedDateTime"}
    return PatientView(patient)


def up_to(moment: datetime, observations: list[Resource]) -> list[Resource]:
    return [o for o in observations if when(o) <= moment]


def first(
    effects: list[Effect], kind: type, predicate: Callable[[Any], bool] = lambda _: True
) -> Any:
    return next((e for e in effects if isinstance(e, kind) and predicate(e)), None)


# ------------------------------------------------------------------------------------ BMI

BMI_PATIENTS = ["098fc002", "1363ed76", "2ad91c08", "e1404dc3", "8dd4ed1f", "18be282b"]


def test_bmi_matches_weight_over_height_squared() -> None:
    checked = not_adult = 0
    for prefix in BMI_PATIENTS:
        patient, _ = load(prefix)
        birth = date.fromisoformat(patient["birthDate"])
        weights = with_code(prefix, "29463-7")
        heights = with_code(prefix, "8302-2")
        synthea_bmi = {when(o): o["valueQuantity"]["value"] for o in with_code(prefix, "39156-5")}
        for w in weights:
            at = when(w)
            effects = replay(BMI, prefix, w, weights=up_to(at, weights), heights=up_to(at, heights))
            candidates = [h for h in heights if at - timedelta(days=365) <= when(h) <= at]
            if age(birth, at.date()) < 20:  # adult BMI categories from 20 (WHO, CDC)
                assert effects == [NoResult(effects[0].reason, "not_applicable")]  # type: ignore[union-attr]
                not_adult += 1
                continue
            if not candidates:
                assert isinstance(effects[0], NoResult)
                continue
            h = max(candidates, key=when)
            assert w["valueQuantity"]["code"] == "kg"
            assert h["valueQuantity"]["code"] == "cm"
            metres = h["valueQuantity"]["value"] / 100
            expected = half_up(w["valueQuantity"]["value"] / (metres * metres), 1)
            proposal = first(effects, ProposeObservation)
            assert proposal is not None, (prefix, w["id"], effects)
            assert proposal.value == expected, (prefix, w["id"])
            assert proposal.effective == at
            assert [e.reference for e in proposal.evidence] == [
                f"Observation/{w['id']}",
                f"Observation/{h['id']}",
            ]
            # Synthea's own BMI (2 decimals, from its unrounded weight and height) agrees to
            # within our 1-decimal rounding (0.05) plus its input rounding (0.02).
            if at in synthea_bmi:
                assert abs(proposal.value - synthea_bmi[at]) <= 0.07 + 1e-9
            task = first(effects, OpenReviewTask)
            assert task.title.startswith(f"Review BMI {expected:.1f} kg/m2")
            checked += 1
    assert checked >= 50
    assert not_adult >= 1  # 18be282b's weights at 17


# ------------------------------------------------------------------------------------ eGFR

EGFR_PATIENTS = ["098fc002", "7a8faea5", "f92fdc8c", "b08d10a2", "a47131c6", "ad0b4b7a"]
CREATININE = ("2160-0", "14682-9", "38483-4")


def ckd_epi_2021(scr_mg_dl: float, age_years: int, female: bool) -> float:
    """Inker et al., N Engl J Med 2021: 142 x min(Scr/k,1)^a x max(Scr/k,1)^-1.200 x
    0.9938^age x 1.012 [female]; k 0.7 / 0.9, a -0.241 / -0.302."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = scr_mg_dl / kappa
    value = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.200 * 0.9938**age_years
    return value * (1.012 if female else 1.0)


def g_stage(egfr: float) -> str:
    for bound, stage in ((90, "G1"), (60, "G2"), (45, "G3a"), (30, "G3b"), (15, "G4")):
        if egfr >= bound:
            return stage
    return "G5"


def test_egfr_matches_ckd_epi_2021_and_the_ckd_rule() -> None:
    checked = reviews = 0
    for prefix in EGFR_PATIENTS:
        patient, _ = load(prefix)
        birth = date.fromisoformat(patient["birthDate"])
        female = patient["gender"] == "female"
        series = with_code(prefix, *CREATININE)
        history: list[tuple[datetime, float]] = []
        for c in series:
            at = when(c)
            assert c["valueQuantity"]["code"] == "mg/dL"
            expected = half_up(
                ckd_epi_2021(c["valueQuantity"]["value"], age(birth, at.date()), female), 0
            )
            history.append((at, expected))
            effects = replay(EGFR, prefix, c, creatinine=up_to(at, series))
            proposal = first(effects, ProposeObservation)
            assert proposal is not None, (prefix, c["id"], effects)
            assert proposal.value == expected, (prefix, c["id"])
            assert proposal.category == g_stage(expected)
            assert proposal.loinc == "98979-8"
            # KDIGO persistence, written out: the run since the latest value >= 60 starts at
            # least 90 days before this result.
            past = [item for item in history if item[0] <= at]
            normal_times = [t for t, v in past if v >= 60]
            run = [t for t, _ in past if not normal_times or t > max(normal_times)]
            persistent = bool(run) and at - min(run) >= timedelta(days=90)
            # KDIGO actions, written out: a referral for G4-G5 (rec. 5.1.1), else a staging
            # review (no referral) while below 60 for 90 days, unless an AKI-like rise.
            # The actions rest on the newest result Medplum holds (by time, then id), which
            # is not the notified one when two results share its time.
            newest = max(up_to(at, series), key=lambda o: (when(o), o["id"]))
            newest_egfr = half_up(
                ckd_epi_2021(newest["valueQuantity"]["value"], age(birth, at.date()), female), 0
            )
            aki = first(effects, OpenReviewTask, lambda e: e.slot == "aki")
            referral = first(effects, ProposeRequest, lambda e: e.slot == "ckd-referral")
            staging = first(effects, OpenReviewTask, lambda e: e.slot == "ckd-staging")
            if aki is None:
                assert (referral is not None) == (newest_egfr < 30), (prefix, c["id"])
                wants_staging = newest_egfr >= 30 and newest_egfr < 60 and persistent
                if first(effects, NoResult, lambda e: e.outcome == "condition_recorded"):
                    wants_staging = False
                assert (staging is not None) == wants_staging, (prefix, c["id"], past[-3:])
            reviews += staging is not None or referral is not None
            checked += 1
    assert checked >= 60
    assert reviews >= 1


def test_egfr_anchor_from_source_md() -> None:
    # SOURCE.md: 098fc002 (male, 34) on 2020-08-09, creatinine 1.38 mg/dL -> about 68.8.
    [c] = [
        o
        for o in with_code("098fc002", *CREATININE)
        if o["effectiveDateTime"].startswith("2020-08-09")
    ]
    proposal = first(replay(EGFR, "098fc002", c, creatinine=[c]), ProposeObservation)
    assert proposal.value == 69
    assert proposal.category == "G2"


# ------------------------------------------------------------------------------------ BP

BP_PATIENTS = ["ad0b4b7a", "fbe5ba5b", "b9590b16", "1363ed76", "99e6bacf"]


def components(panel: Resource) -> tuple[float, float]:
    values = {
        c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in panel["component"]
    }
    return values["8480-6"], values["8462-4"]


def acc_aha(systolic: float, diastolic: float) -> str:
    if systolic >= 140 or diastolic >= 90:
        return "stage 2 hypertension"
    if systolic >= 130 or diastolic >= 80:
        return "stage 1 hypertension"
    if systolic >= 120:
        return "elevated"
    return "normal"


def test_bp_average_and_crisis_match_acc_aha_2017() -> None:
    averages = insufficient = 0
    for prefix in BP_PATIENTS:
        panels = with_code(prefix, "85354-9")
        for panel in panels:
            at = when(panel)
            effects = replay(BLOOD_PRESSURE, prefix, panel, **{"blood-pressure": up_to(at, panels)})
            window = [p for p in up_to(at, panels) if when(p) >= at - timedelta(days=30)]
            occasions = len({when(p).date() for p in window})
            systolic, diastolic = components(panel)
            crisis = first(effects, OpenReviewTask, lambda e: e.slot == "hypertensive-crisis")
            assert (crisis is not None) == (systolic >= 180 or diastolic >= 120)
            if crisis is not None:
                assert crisis.priority == "urgent"
                assert crisis.title.startswith(f"URGENT: BP {systolic:g}/{diastolic:g} mmHg")
            proposal = first(effects, ProposeObservation)
            if occasions < 2:
                assert proposal is None
                assert first(effects, NoResult).outcome == "insufficient_evidence"
                insufficient += 1
                continue
            pairs = [components(p) for p in window]
            # ACC/AHA 2017: each occasion (calendar day) averaged, then the occasions.
            days: dict[object, list[tuple[float, float]]] = {}
            for p in window:
                days.setdefault(when(p).date(), []).append(components(p))
            means = [
                (sum(s for s, _ in v) / len(v), sum(d for _, d in v) / len(v))
                for v in days.values()
            ]
            mean_s = half_up(sum(s for s, _ in means) / len(means), 0)
            mean_d = half_up(sum(d for _, d in means) / len(means), 0)
            assert proposal is not None, (prefix, panel["id"], effects)
            assert [c.value for c in proposal.components] == [mean_s, mean_d]
            assert proposal.category == (
                f"{acc_aha(mean_s, mean_d)}; average of {len(pairs)} readings on "
                f"{occasions} occasions"
            )
            assert {e.reference for e in proposal.evidence} == {
                f"Observation/{p['id']}" for p in window
            }
            averages += 1
    assert averages >= 10
    assert insufficient >= 10


def test_a_deceased_patient_gets_no_new_suggestion() -> None:
    # 7a8faea5 died (Patient.deceasedDateTime): a result processed after that proposes nothing.
    patient, _ = load("7a8faea5")
    assert patient.get("deceasedDateTime")
    c = with_code("7a8faea5", *CREATININE)[-1]
    view = ObservationView(c)
    event = BotEvent(Interaction.CREATE, view, view.reference, "1", f"Patient/{patient['id']}")
    effects = EGFR.compute(event, BotContext(PatientView(patient), {"creatinine": [c]}))
    assert effects == [
        NoResult(
            "patient deceased: no new suggestions are made (Patient.deceased is set)",
            "patient_deceased",
        )
    ]
