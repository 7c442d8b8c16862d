"""One living suggestion per patient and protocol (issue 14, findings 1, 3, 4, 7 and 9).

The plan's writes are applied to the backtest's in-memory chart, which keeps ids, versions,
conditional creates and version-guarded updates as Medplum does, so each test reads what the
clinician's worklist would hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.botkit.declaration import Bot
from app.botkit.handler import task_is_for_bot
from app.botkit.identifiers import EVIDENCE_TIME_URL
from app.botkit.plan import (
    ALREADY_ORDERED,
    OLDER_THAN_PENDING,
    OUTSIDE_WINDOW,
    SNOOZED,
    PlanSettings,
    WritePlan,
    plan_writes,
    task_evidence_time,
    withdraw_listed,
)
from app.botkit.review_list import is_results_review, list_items
from app.botkit.statuses import OPEN_TASK_STATUSES
from app.fhir.resource_json import JSONObject, get_object, get_objects, get_str
from app.fhir.views import ResourceView, TaskView
from bots.blood_pressure import BOT as BLOOD_PRESSURE
from bots.bmi import BOT as BMI
from bots.egfr import BOT as EGFR
from bots.hba1c import BOT as HBA1C
from bots.obesity import BOT as OBESITY
from devtools.backtest_live import Chart

from .fhir import PATIENT_REF, bp_panel, condition, context, event, height, observation, patient
from .fhir import weight as weight_obs

WOMAN_60 = patient(birth_date="1964-05-01", gender="female")


class Worklist:
    """A patient's chart as the service's writes leave it."""

    def __init__(self) -> None:
        self.chart = Chart()

    def run(
        self,
        bot: Bot,
        notified: JSONObject,
        *,
        now: datetime,
        who: JSONObject = WOMAN_60,
        decided: list[TaskView] | None = None,
        **prefetched: list[JSONObject],
    ) -> WritePlan:
        tasks = self.chart.tasks()
        plan = plan_writes(
            declaration=bot.declaration,
            event=event(notified),
            effects=bot.compute(event(notified), context(who, **prefetched)),
            patient=PATIENT_REF,
            pending_tasks=[
                t
                for t in tasks
                if t.status in OPEN_TASK_STATUSES and task_is_for_bot(t, bot.declaration.name)
            ],
            pending_focus=self.chart.resources,
            decided_tasks=decided or [],
            review_list=next(
                (t for t in tasks if t.status in OPEN_TASK_STATUSES and is_results_review(t)),
                None,
            ),
            pending_items={
                ref: r
                for ref, r in self.chart.resources.items()
                if r.get("resourceType") == "Observation" and r.get("status") == "preliminary"
            },
            now=now,
            settings=PlanSettings(due_days=7, urgent_due_hours=4),
        )
        for slot in plan.slots:
            self.chart.apply(slot.writes)
        return plan

    def tasks(self, code: str | None = None) -> list[TaskView]:
        return [
            t
            for t in self.chart.tasks()
            if code is None
            or any(
                get_str(c, "code") == code
                for c in get_objects(get_object(t.json, "code") or {}, "coding")
            )
        ]

    def open(self, code: str | None = None) -> list[TaskView]:
        return [t for t in self.tasks(code) if t.status in OPEN_TASK_STATUSES]

    def focus(self, task: TaskView) -> ResourceView:
        return ResourceView(self.chart.resources[task.focus or ""])


def creatinine(cid: str, mg_dl: float, when: str, **kwargs: str) -> JSONObject:
    return observation(cid, "2160-0", mg_dl, "mg/dL", when, **kwargs)


JUNE = datetime(2024, 6, 11, tzinfo=UTC)


def test_a_late_older_creatinine_never_replaces_a_newer_pending_referral() -> None:
    """Finding 1: a June G4 referral pending; a May G2 creatinine arrives later."""
    worklist = Worklist()
    june = creatinine("c-june", 3.0, "2024-06-10T08:00:00Z")
    worklist.run(EGFR, june, now=JUNE, creatinine=[june])
    [pending] = worklist.open("egfr.ckd-referral")
    assert task_evidence_time(pending) == datetime(2024, 6, 10, 8, tzinfo=UTC)
    may = creatinine("c-may", 0.8, "2024-05-10T08:00:00Z")
    late = worklist.run(EGFR, may, now=JUNE, creatinine=[may, june])
    assert [p.id for p in worklist.open("egfr.ckd-referral")] == [pending.id]
    assert worklist.open("egfr.ckd-referral")[0].version_id == pending.version_id
    assert "G4" in str(worklist.open("egfr.ckd-referral")[0].json["code"])
    # The kidney actions rest on the newest result held (June): the same suggestion, a replay.
    assert "ckd-referral" in late.unchanged
    assert not [s for s in late.slots if s.slot == "ckd-referral"]


def test_newer_evidence_updates_the_one_open_task_in_place() -> None:
    worklist = Worklist()
    may = creatinine("c-may", 2.0, "2024-05-10T08:00:00Z")  # G4
    worklist.run(EGFR, may, now=JUNE, creatinine=[may])
    [first] = worklist.open("egfr.ckd-referral")
    request_id = worklist.focus(first).id
    june = creatinine("c-june", 4.0, "2024-06-10T08:00:00Z")  # G5
    plan = worklist.run(EGFR, june, now=JUNE, creatinine=[may, june])
    assert [s.action for s in plan.slots if s.slot == "ckd-referral"] == ["updated"]
    [task] = worklist.open("egfr.ckd-referral")
    assert task.id == first.id  # the same Task, a new version
    assert int(task.version_id) > int(first.version_id)
    assert "G5" in (get_str(get_object(task.json, "code") or {}, "text") or "")
    assert worklist.focus(task).id == request_id  # the draft referral updated in place
    assert worklist.focus(task).status == "draft"
    assert len(worklist.tasks("egfr.ckd-referral")) == 1  # nothing written and cancelled
    # A corrected version of the same specimen (same clinical time) updates it too.
    corrected = creatinine("c-june", 3.9, "2024-06-10T08:00:00Z", status="corrected", version="2")
    worklist.run(EGFR, corrected, now=JUNE, creatinine=[may, corrected])
    assert len(worklist.tasks("egfr.ckd-referral")) == 1


def test_a_corrected_weight_withdraws_the_obesity_referral_with_the_reason() -> None:
    """Finding 9: weight 95 kg (BMI 31) corrected to 70 kg (BMI 22.9)."""
    worklist = Worklist()
    tall = height("h1", 175, "2024-05-01T08:00:00Z")
    heavy = weight_obs("w1", 95, "2024-05-02T08:00:00Z")
    worklist.run(OBESITY, heavy, now=JUNE, weights=[heavy], heights=[tall])
    [referral] = worklist.open("obesity.weight-management")
    assert worklist.focus(referral).status == "draft"
    corrected = weight_obs("w1", 70, "2024-05-02T08:00:00Z", status="corrected", version="2")
    plan = worklist.run(OBESITY, corrected, now=JUNE, weights=[corrected], heights=[tall])
    assert [s.action for s in plan.slots] == ["withdrawn"]
    assert worklist.open("obesity.weight-management") == []
    [withdrawn] = worklist.tasks("obesity.weight-management")
    assert withdrawn.status == "cancelled"
    assert withdrawn.status_reason_code == "no-longer-supported"
    assert "22.9" in (withdrawn.status_reason or "")
    assert worklist.focus(withdrawn).status == "revoked"


def test_evidence_older_than_the_protocols_window_opens_nothing() -> None:
    """Finding 3: 2009 evidence must not open a Task due next week."""
    worklist = Worklist()
    old = creatinine("c1", 3.0, "2009-06-10T08:00:00Z")
    plan = worklist.run(EGFR, old, now=JUNE, creatinine=[old])
    assert worklist.tasks() == []
    assert any(n.outcome == OUTSIDE_WINDOW for n in plan.no_results)


def test_a_normal_bmi_opens_no_task_of_its_own_but_joins_the_review_list() -> None:
    """Finding 4: normal BMIs each opened a Task."""
    worklist = Worklist()
    tall = height("h1", 175, "2024-05-01T08:00:00Z")
    first = weight_obs("w1", 70, "2024-05-02T08:00:00Z")
    worklist.run(BMI, first, now=JUNE, weights=[first], heights=[tall])
    assert worklist.tasks("bmi.bmi") == []
    [review] = worklist.open("results-review")
    assert review.json["priority"] == "routine"
    [item] = list_items(review)
    assert item.code == "bmi.bmi"
    observation_v1 = ResourceView(worklist.chart.resources[item.reference])
    assert observation_v1.status == "preliminary"
    # A newer weight replaces the item in place: same Observation, same list Task.
    second = weight_obs("w2", 72, "2024-05-20T08:00:00Z")
    worklist.run(BMI, second, now=JUNE, weights=[first, second], heights=[tall])
    [review_again] = worklist.open("results-review")
    assert review_again.id == review.id
    [item_again] = list_items(review_again)
    assert item_again.reference == item.reference
    updated = worklist.chart.resources[item.reference]
    assert (get_object(updated, "valueQuantity") or {}).get("value") == 23.5
    provenances = [
        r for r in worklist.chart.resources.values() if r["resourceType"] == "Provenance"
    ]
    assert len(provenances) == 2  # each item version has its own Provenance


def test_a_rejected_referral_is_snoozed_unless_the_evidence_is_worse() -> None:
    worklist = Worklist()
    g4 = creatinine("c1", 2.0, "2024-05-10T08:00:00Z")
    worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    [task] = worklist.open("egfr.ckd-referral")
    rejected = TaskView(
        {
            **task.json,
            "status": "rejected",
            "statusReason": {"text": "seen by nephrology last month"},
            "meta": {"versionId": "2", "lastUpdated": "2024-06-01T00:00:00Z"},
        }
    )
    worklist.chart.resources[task.reference] = rejected.json
    again = creatinine("c2", 2.1, "2024-06-02T08:00:00Z")  # G4 still
    plan = worklist.run(EGFR, again, now=JUNE, creatinine=[g4, again], decided=[rejected])
    [snoozed] = [n for n in plan.no_results if n.outcome == SNOOZED]
    assert "seen by nephrology last month" in snoozed.reason
    assert worklist.open("egfr.ckd-referral") == []
    # G5 crosses into a worse category (9 days later: not an AKI-like rise).
    worse = creatinine("c3", 4.0, "2024-06-11T08:00:00Z")
    worklist.run(EGFR, worse, now=JUNE, creatinine=[g4, again, worse], decided=[rejected])
    assert len(worklist.open("egfr.ckd-referral")) == 1


def test_an_approved_referral_is_not_repeated_while_its_order_is_active() -> None:
    worklist = Worklist()
    g4 = creatinine("c1", 2.0, "2024-05-10T08:00:00Z")
    worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    [task] = worklist.open("egfr.ckd-referral")
    order = worklist.focus(task)
    worklist.chart.resources[order.reference] = {**order.json, "status": "active"}
    approved = TaskView({**task.json, "status": "completed"})
    worklist.chart.resources[task.reference] = approved.json
    later = creatinine("c2", 2.2, "2024-06-10T08:00:00Z")
    plan = worklist.run(EGFR, later, now=JUNE, creatinine=[g4, later], decided=[approved])
    assert any(n.outcome == ALREADY_ORDERED for n in plan.no_results)
    assert worklist.open("egfr.ckd-referral") == []


def test_urgent_tasks_are_due_in_hours_and_record_the_evidence_time() -> None:
    worklist = Worklist()
    crisis = bp_panel("bp1", 182, 121, "2024-06-11T08:00:00Z")
    now = datetime(2024, 6, 11, 9, tzinfo=UTC)
    readings = {"blood-pressure": [crisis]}
    worklist.run(BLOOD_PRESSURE, crisis, now=now, **readings)  # pyright: ignore[reportArgumentType]
    [task] = worklist.open("blood-pressure.hypertensive-crisis")
    assert task.json["priority"] == "urgent"
    period = get_object(get_object(task.json, "restriction") or {}, "period") or {}
    due = datetime.fromisoformat(get_str(period, "end") or "")
    assert due - now == timedelta(hours=4)
    assert {
        "url": EVIDENCE_TIME_URL,
        "valueDateTime": "2024-06-11T08:00:00+00:00",
    } in get_objects(task.json, "extension")


def test_pregnancy_or_recorded_obesity_suppresses_the_referral() -> None:
    tall = height("h1", 175, "2024-05-01T08:00:00Z")
    heavy = weight_obs("w1", 100, "2024-05-02T08:00:00Z")
    for code in ("72892002", "162864005"):  # normal pregnancy; BMI 30+ obesity (finding)
        worklist = Worklist()
        plan = worklist.run(
            OBESITY,
            heavy,
            now=JUNE,
            weights=[heavy],
            heights=[tall],
            conditions=[condition("c1", code)],
        )
        assert worklist.open() == []
        assert {n.outcome for n in plan.no_results} & {"pregnant", "condition_recorded"}
    icd = condition("c2", "E66.01", system="http://hl7.org/fhir/sid/icd-10-cm")
    worklist = Worklist()
    worklist.run(OBESITY, heavy, now=JUNE, weights=[heavy], heights=[tall], conditions=[icd])
    assert worklist.open() == []


def test_a_replayed_event_writes_nothing_new() -> None:
    worklist = Worklist()
    g4 = creatinine("c1", 2.0, "2024-05-10T08:00:00Z")
    worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    before = {ref: ResourceView(r).version_id for ref, r in worklist.chart.resources.items()}
    plan = worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    assert [s for s in plan.slots if s.writes] == []
    after = {ref: ResourceView(r).version_id for ref, r in worklist.chart.resources.items()}
    assert after == before


def test_a_deceased_patients_pending_suggestions_are_withdrawn() -> None:
    worklist = Worklist()
    g4 = creatinine("c1", 2.0, "2024-05-10T08:00:00Z")
    worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    [task] = worklist.open("egfr.ckd-referral")
    dead = {**WOMAN_60, "deceasedDateTime": "2024-06-01"}
    later = creatinine("c2", 2.1, "2024-06-10T08:00:00Z")
    worklist.run(EGFR, later, now=JUNE, who=dead, creatinine=[g4, later])
    assert worklist.open() == []
    withdrawn = TaskView(worklist.chart.resources[task.reference])
    assert withdrawn.status_reason_code == "patient-deceased"
    assert worklist.focus(withdrawn).status == "revoked"


def test_a_second_diabetes_range_hba1c_updates_the_task_to_criteria_met() -> None:
    """Finding 6: the second result >= 6.5 % no longer asks for a confirmatory test."""
    worklist = Worklist()
    first = observation("a1", "4548-4", 7.0, "%", "2024-05-01T08:00:00Z")
    worklist.run(HBA1C, first, now=JUNE, hba1c=[first])
    [task] = worklist.open("hba1c.diabetes-evaluation")
    assert worklist.focus(task).resource_type == "ServiceRequest"
    second = observation("a2", "4548-4", 7.2, "%", "2024-06-01T08:00:00Z")
    worklist.run(HBA1C, second, now=JUNE, hba1c=[first, second])
    [updated] = worklist.open("hba1c.diabetes-evaluation")
    assert updated.id == task.id
    title = get_str(get_object(updated.json, "code") or {}, "text") or ""
    assert "confirm" not in title.lower() or "criteria met" in title.lower()
    assert "second test" not in title.lower()
    # The draft confirmatory test is withdrawn: two abnormal results meet the ADA criterion.
    assert ResourceView(worklist.chart.resources[task.focus or ""]).status == "revoked"


def test_deleted_evidence_takes_its_item_off_the_results_list() -> None:
    worklist = Worklist()
    tall = height("h1", 175, "2024-05-01T08:00:00Z")
    first = weight_obs("w1", 70, "2024-05-02T08:00:00Z")
    worklist.run(BMI, first, now=JUNE, weights=[first], heights=[tall])
    [review] = worklist.open("results-review")
    [item] = list_items(review)
    items = {item.reference: worklist.chart.resources[item.reference]}
    assert withdraw_listed(review, items, "Observation/w1", bot="egfr", text="x", now=JUNE) == []
    writes = withdraw_listed(review, items, "Observation/w1", bot="bmi", text="deleted", now=JUNE)
    worklist.chart.apply(writes)
    assert worklist.open() == []
    assert ResourceView(worklist.chart.resources[item.reference]).status == "cancelled"


def test_a_protocols_snooze_is_configurable() -> None:
    """``STARVIT_SUGGESTION_SNOOZE_DAYS`` overrides a protocol's declared snooze."""
    worklist = Worklist()
    g4 = creatinine("c1", 2.0, "2024-05-10T08:00:00Z")
    worklist.run(EGFR, g4, now=JUNE, creatinine=[g4])
    [task] = worklist.open("egfr.ckd-referral")
    rejected = TaskView(
        {
            **task.json,
            "status": "rejected",
            "statusReason": {"text": "not now"},
            "meta": {"versionId": "2", "lastUpdated": "2024-06-01T00:00:00Z"},
        }
    )
    worklist.chart.resources[task.reference] = rejected.json
    again = creatinine("c2", 2.1, "2024-06-02T08:00:00Z")
    effects = EGFR.compute(event(again), context(WOMAN_60, creatinine=[g4, again]))
    common = {
        "declaration": EGFR.declaration,
        "event": event(again),
        "effects": effects,
        "patient": PATIENT_REF,
        "pending_tasks": [],
        "pending_focus": worklist.chart.resources,
        "decided_tasks": [rejected],
        "now": JUNE,
    }
    declared = plan_writes(**common, settings=PlanSettings())  # pyright: ignore[reportArgumentType]
    assert any(n.outcome == SNOOZED for n in declared.no_results)
    overridden = plan_writes(
        **common,  # pyright: ignore[reportArgumentType]
        settings=PlanSettings(snooze_days={"egfr.ckd-referral": 5}),
    )
    assert not any(n.outcome == SNOOZED for n in overridden.no_results)
    assert [s.action for s in overridden.slots if s.slot == "ckd-referral"] == ["created"]


def test_a_late_older_result_never_replaces_a_newer_pending_task_by_clinical_time() -> None:
    """The plan's own guard, for a bot that acts on the notified result (a BMI of a weight
    taken before the pending referral's)."""
    worklist = Worklist()
    tall = height("h1", 175, "2024-01-01T08:00:00Z")
    june = weight_obs("w2", 100, "2024-06-01T08:00:00Z")
    worklist.run(OBESITY, june, now=JUNE, weights=[june], heights=[tall])
    [pending] = worklist.open("obesity.weight-management")
    may = weight_obs("w1", 110, "2024-05-01T08:00:00Z")
    # The May weight arrives later and, in this context, is the only weight the bot sees.
    late = worklist.run(OBESITY, may, now=JUNE, weights=[may], heights=[tall])
    assert [n.outcome for n in late.no_results] == [OLDER_THAN_PENDING]
    [still] = worklist.open("obesity.weight-management")
    assert (still.id, still.version_id) == (pending.id, pending.version_id)
