"""eGFR and HbA1c bots on hand-built FHIR JSON."""

import pytest

from app.botkit.declaration import (
    Effect,
    Evidence,
    Interaction,
    NoResult,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
    Retract,
)
from app.fhir.resource_json import JSONObject
from bots.egfr import BOT as EGFR
from bots.hba1c import BOT as HBA1C

from .fhir import condition, context, event, observation, patient, run

# Born 1964-05-01: 60 on 2024-05-01.
WOMAN_60 = patient(birth_date="1964-05-01", gender="female")


def creatinine(
    oid: str, value: float, when: str, code: str = "2160-0", unit: str = "mg/dL", **kw: str
) -> JSONObject:
    return observation(oid, code, value, unit, when, **kw)


def egfr(
    notified: JSONObject,
    *series: JSONObject,
    who: JSONObject = WOMAN_60,
    conditions: tuple[JSONObject, ...] = (),
) -> list[Effect]:
    """The eGFR bot's effects without its ``Retract`` effects (tested on their own)."""
    effects = run(EGFR, notified, who, creatinine=[notified, *series], conditions=list(conditions))
    return [e for e in effects if not isinstance(e, Retract)]


def egfr_all(notified: JSONObject, *series: JSONObject) -> list[Effect]:
    return run(EGFR, notified, WOMAN_60, creatinine=[notified, *series])


class TestEgfr:
    def test_declaration(self) -> None:
        d = EGFR.declaration
        assert (d.name, d.version) == ("egfr", "1.2.0")
        assert d.trigger.criteria == (
            "Observation?code=http://loinc.org|2160-0,http://loinc.org|14682-9,"
            "http://loinc.org|38483-4"
        )
        prefetch, conditions = d.prefetch
        assert conditions.name == "conditions"
        assert d.policy("egfr").actionable is False
        assert d.policy("aki").actionable is True
        assert prefetch.name == "creatinine"
        assert prefetch.query.endswith("_sort=-date&_count=100")
        assert "Inker" in d.citation.source

    def test_golden_female_60(self) -> None:
        c = creatinine("c1", 1.2, "2024-05-01T08:00:00+02:00", version="4")
        proposal, task = egfr(c)
        assert isinstance(proposal, ProposeObservation)
        assert (proposal.slot, proposal.loinc, proposal.unit) == (
            "egfr",
            "98979-8",
            "mL/min/{1.73_m2}",
        )
        assert proposal.value == 52
        assert proposal.category == "G3a"
        assert proposal.evidence == (Evidence("Observation/c1", "4"),)
        assert proposal.effective.isoformat() == "2024-05-01T08:00:00+02:00"
        assert isinstance(task, OpenReviewTask)
        assert task.title == "Review eGFR 52 mL/min/1.73 m2 (KDIGO G3a)"
        assert task.priority == "routine"
        assert "age 60" in task.rationale
        assert "Inker" in task.rationale

    @pytest.mark.parametrize(
        ("code", "value", "unit"),
        [("14682-9", 106.1, "umol/L"), ("38483-4", 1.2, "mg/dL"), ("2160-0", 12, "mg/L")],
    )
    def test_codes_and_units(self, code: str, value: float, unit: str) -> None:
        c = creatinine("c1", value, "2024-05-01T08:00:00Z", code=code, unit=unit)
        proposal = egfr(c)[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.value == 52

    def test_age_at_the_specimen_date(self) -> None:
        # 1.19 mg/dL: 52.34 at 60 (-> 52), 52.67 at 59 (-> 53), the day before the birthday.
        on_birthday = egfr(creatinine("c1", 1.19, "2024-05-01T08:00:00Z"))[0]
        day_before = egfr(creatinine("c1", 1.19, "2024-04-30T23:00:00Z"))[0]
        assert isinstance(on_birthday, ProposeObservation)
        assert isinstance(day_before, ProposeObservation)
        assert (on_birthday.value, day_before.value) == (52, 53)

    def test_staging_review_after_90_days_below_60_drafts_no_referral(self) -> None:
        first = creatinine("c1", 1.2, "2024-01-31T08:00:00Z")
        last = creatinine("c2", 1.2, "2024-05-01T08:00:00Z")
        effects = egfr(last, first)
        kinds = [(type(e).__name__, getattr(e, "slot", None)) for e in effects]
        assert kinds == [
            ("ProposeObservation", "egfr"),
            ("OpenReviewTask", "egfr"),
            ("OpenReviewTask", "ckd-staging"),
        ]
        task = effects[2]
        assert isinstance(task, OpenReviewTask)
        assert "approving places no referral" in task.title
        assert "KDIGO" in task.rationale
        assert {e.reference for e in task.evidence} == {"Observation/c1", "Observation/c2"}

    def test_recorded_ckd_suppresses_the_staging_review(self) -> None:
        first = creatinine("c1", 1.2, "2024-01-31T08:00:00Z")
        last = creatinine("c2", 1.2, "2024-05-01T08:00:00Z")
        ckd = condition("k1", "431856006", system="http://snomed.info/sct")
        effects = egfr(last, first, conditions=(ckd,))
        assert not any(isinstance(e, OpenReviewTask) and e.slot == "ckd-staging" for e in effects)
        assert any(isinstance(e, NoResult) and e.outcome == "condition_recorded" for e in effects)
        icd = condition("k2", "N18.3", system="http://hl7.org/fhir/sid/icd-10-cm")
        effects = egfr(last, first, conditions=(icd,))
        assert not any(isinstance(e, OpenReviewTask) and e.slot == "ckd-staging" for e in effects)

    @pytest.mark.parametrize(("value", "stage", "severity"), [(2.0, "G4", 1), (4.0, "G5", 2)])
    def test_g4_g5_drafts_a_referral_kdigo_5_1_1(
        self, value: float, stage: str, severity: int
    ) -> None:
        c = creatinine("c1", value, "2024-05-01T08:00:00Z")
        effects = egfr(c)
        request = next(e for e in effects if isinstance(e, ProposeRequest))
        task = next(e for e in effects if isinstance(e, OpenReviewTask) and e.slot != "egfr")
        assert (request.slot, request.code) == ("ckd-referral", "306286007")
        assert isinstance(task, OpenReviewTask)
        assert task.slot == "ckd-referral"
        assert stage in task.title
        assert "approving places a referral" in task.title
        assert task.severity == severity
        assert "5.1.1" in task.rationale

    def test_g3_without_90_days_opens_nothing_but_withdraws_what_no_longer_holds(self) -> None:
        c = creatinine("c1", 1.2, "2024-05-01T08:00:00Z")
        retracts = [e for e in egfr_all(c) if isinstance(e, Retract)]
        assert {r.slot for r in retracts} == {"ckd-referral", "ckd-staging"}
        assert all(not isinstance(e, OpenReviewTask) or e.slot == "egfr" for e in egfr(c))

    def test_aki_like_rise_is_urgent_and_stages_nothing(self) -> None:
        baseline = creatinine("c1", 0.9, "2024-05-01T08:00:00Z")
        rise = creatinine("c2", 1.3, "2024-05-02T20:00:00Z")  # +0.4 mg/dL within 48 h
        effects = egfr(rise, baseline)
        [aki] = [e for e in effects if isinstance(e, OpenReviewTask) and e.slot == "aki"]
        assert aki.priority == "urgent"
        assert "KDIGO AKI" in aki.title
        assert {e.reference for e in aki.evidence} == {"Observation/c1", "Observation/c2"}
        assert not any(isinstance(e, ProposeRequest) for e in effects)

    def test_a_fall_from_96_to_15_in_15_days_is_urgent(self) -> None:
        before = creatinine("c1", 0.7, "2024-05-01T08:00:00Z")
        after = creatinine("c2", 3.3, "2024-05-06T08:00:00Z")
        effects = egfr(after, before)
        assert any(isinstance(e, OpenReviewTask) and e.priority == "urgent" for e in effects)

    def test_no_staging_under_90_days_or_after_a_normal_value(self) -> None:
        first = creatinine("c1", 1.2, "2024-02-15T08:00:00Z")
        last = creatinine("c2", 1.2, "2024-05-01T08:00:00Z")
        assert len(egfr(last, first)) == 2
        older = creatinine("c0", 1.2, "2023-12-01T08:00:00Z")
        normal = creatinine("c1", 0.7, "2024-02-15T08:00:00Z")
        assert len(egfr(last, older, normal)) == 2

    def test_a_late_older_specimen_acts_on_the_newest_result(self) -> None:
        """An imported older result is listed with its own eGFR, but the kidney actions rest
        on the newest result held: it never opens what the newest does not support."""
        first = creatinine("c1", 1.2, "2024-01-31T08:00:00Z")
        later = creatinine("c2", 1.2, "2024-05-01T08:00:00Z")
        effects = egfr(first, later)
        proposal = effects[0]
        assert isinstance(proposal, ProposeObservation)
        assert proposal.evidence == (Evidence("Observation/c1", "1"),)
        [staging] = [e for e in effects if isinstance(e, OpenReviewTask) and e.slot != "egfr"]
        assert staging.slot == "ckd-staging"
        assert staging.evidence_time is not None
        assert staging.evidence_time.isoformat() == "2024-05-01T08:00:00+00:00"
        normal_now = creatinine("c3", 0.6, "2024-05-02T08:00:00Z")
        late = egfr_all(first, later, normal_now)
        assert not any(isinstance(e, OpenReviewTask) and e.slot != "egfr" for e in late)
        assert {e.slot for e in late if isinstance(e, Retract)} == {"ckd-referral", "ckd-staging"}

    @pytest.mark.parametrize("gender", ["other", "unknown", None])
    def test_sex_outside_the_equation(self, gender: str | None) -> None:
        c = creatinine("c1", 1.2, "2024-05-01T08:00:00Z")
        [no_result] = egfr(c, who=patient(birth_date="1964-05-01", gender=gender))
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_applicable"

    def test_child(self) -> None:
        c = creatinine("c1", 0.5, "2024-05-01T08:00:00Z")
        [no_result] = egfr(c, who=patient(birth_date="2010-01-01"))
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_applicable"

    def test_specimen_before_birth(self) -> None:
        c = creatinine("c1", 1.0, "1960-05-01T08:00:00Z")
        [no_result] = egfr(c)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    def test_bad_unit(self) -> None:
        c = creatinine("c1", 1.2, "2024-05-01T08:00:00Z", unit="kg")
        [no_result] = egfr(c)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    @pytest.mark.parametrize("status", ["preliminary", "cancelled", "entered-in-error"])
    def test_unusable_status(self, status: str) -> None:
        c = creatinine("c1", 1.2, "2024-05-01T08:00:00Z", status=status)
        [no_result] = egfr(c)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_usable"

    def test_missing_value(self) -> None:
        c = observation("c1", "2160-0", None, "mg/dL", "2024-05-01T08:00:00Z")
        [no_result] = egfr(c)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    def test_delete(self) -> None:
        assert (
            EGFR.compute(event(None, Interaction.DELETE, "Observation/c1"), context(WOMAN_60)) == []
        )


def a1c(value: float, unit: str = "%", *conditions: JSONObject) -> list[Effect]:
    notified = observation("a1", "4548-4", value, unit, "2024-05-01T08:00:00+02:00", version="2")
    return run(HBA1C, notified, None, conditions=list(conditions))


class TestHba1c:
    def test_declaration(self) -> None:
        d = HBA1C.declaration
        assert (d.name, d.version) == ("hba1c", "1.2.0")
        assert d.trigger.criteria == (
            "Observation?code=http://loinc.org|4548-4,http://loinc.org|17856-6,"
            "http://loinc.org|4549-2,http://loinc.org|59261-8"
        )
        history, prefetch = d.prefetch
        assert history.name == "hba1c"
        assert "http://loinc.org|59261-8" in history.query
        assert prefetch.query.startswith("Condition?subject={{patient}}&clinical-status=active")
        # Every active condition: value sets match descendants and ICD-10 prefixes in code.
        assert "code=" not in prefetch.query
        assert "ADA" in d.citation.title or "Diabetes" in d.citation.title

    def test_diabetes_range_without_known_diabetes(self) -> None:
        request, task = a1c(6.5)
        assert isinstance(request, ProposeRequest)
        assert request.slot == "diabetes-evaluation"
        assert (request.code_system, request.code) == ("http://snomed.info/sct", "43396009")
        assert request.evidence == (Evidence("Observation/a1", "2"),)
        assert isinstance(task, OpenReviewTask)
        assert task.slot == "diabetes-evaluation"
        assert "6.5" in task.title
        assert "ADA" in task.rationale

    def test_ifcc_units(self) -> None:
        request = a1c(48, "mmol/mol")[0]  # 6.54 % NGSP
        assert isinstance(request, ProposeRequest)

    @pytest.mark.parametrize("code", ["44054006", "46635009", "73211009", "127013003"])
    def test_known_diabetes_suppresses(self, code: str) -> None:
        assert a1c(7.2, "%", condition("c1", code)) == []
        assert a1c(6.0, "%", condition("c1", code)) == []

    @pytest.mark.parametrize(
        ("code", "system"),
        [
            # A descendant of 44054006 (finding 3): "Type 2 diabetes mellitus without
            # complication".
            ("313436004", "http://snomed.info/sct"),
            ("E11.9", "http://hl7.org/fhir/sid/icd-10-cm"),
            ("E119", "http://hl7.org/fhir/sid/icd-10"),
        ],
    )
    def test_diabetes_recorded_as_a_descendant_or_icd10_suppresses(
        self, code: str, system: str
    ) -> None:
        assert a1c(7.2, "%", condition("c1", code, system=system)) == []

    def test_unreliability_caveat_with_anaemia(self) -> None:
        _, task = a1c(7.2, "%", condition("c1", "271737000"))
        assert isinstance(task, OpenReviewTask)
        assert "Anemia" in task.rationale or "271737000" in task.rationale
        assert "A1C may be unreliable" in task.rationale

    def test_resolved_diabetes_does_not_suppress(self) -> None:
        effects = a1c(7.2, "%", condition("c1", "44054006", status="resolved"))
        assert isinstance(effects[0], ProposeRequest)

    def test_prediabetes_task(self) -> None:
        [task] = a1c(5.7)
        assert isinstance(task, OpenReviewTask)
        assert (task.slot, task.priority) == ("prediabetes", "routine")
        assert task.title == "Review HbA1c 5.7 %: prediabetes range"
        assert "5.7-6.4 %" in task.rationale
        [task] = a1c(6.44)  # reported 6.4
        assert isinstance(task, OpenReviewTask)

    def test_known_prediabetes_suppresses_the_task(self) -> None:
        assert a1c(6.1, "%", condition("c1", "15777000")) == []

    def test_normal_writes_nothing(self) -> None:
        assert a1c(5.6) == []

    def test_bad_unit(self) -> None:
        [no_result] = a1c(6.8, "mg/dL")
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "invalid_input"

    def test_unusable(self) -> None:
        notified = observation("a1", "4548-4", 8, "%", "2024-05-01T08:00:00Z", status="preliminary")
        [no_result] = run(HBA1C, notified)
        assert isinstance(no_result, NoResult)
        assert no_result.outcome == "not_usable"

    def test_delete(self) -> None:
        assert HBA1C.compute(event(None, Interaction.DELETE, "Observation/a1"), context(None)) == []
