"""The clinician decision (pure): only a clinician's approval finalises, only a clinician's
rejection retracts; anything else is refused. A property test drives random event sequences
(proposals, supersessions, status changes by every kind of actor) through the same planners
the worker uses, applied to an in-memory store, and checks that no result is ever ``final`` and
no request ``active`` without a clinician's approving decision recorded in a Provenance."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from app.botkit.declaration import (
    BotDeclaration,
    BotEvent,
    Evidence,
    Interaction,
    OpenReviewTask,
    ProposeObservation,
    ProposeRequest,
    Trigger,
)
from app.botkit.identifiers import PROPOSAL_SYSTEM, TASK_SYSTEM
from app.botkit.plan import plan_writes, withdraw_writes
from app.clinical.bmi import WHO_BMI_CLASSIFICATION
from app.fhir.resource_json import JSONObject, get_object, get_str, rewrite_resource
from app.fhir.views import ResourceView, TaskView
from app.fhir.writes import PlannedWrite
from app.review.decisions import has_clinician_role, plan_review

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLINICIAN = "Practitioner/clinician-alice"
ROLES: list[JSONObject] = [
    {
        "resourceType": "PractitionerRole",
        "active": True,
        "practitioner": {"reference": CLINICIAN},
        "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}]}],
    }
]
CODES = frozenset({"http://snomed.info/sct|158965000"})
ACTORS = {
    "clinician": CLINICIAN,
    "ops practitioner": "Practitioner/ops-olivia",
    "service": "ClientApplication/starvit-service",
    "partner": "ClientApplication/partner-acme",
    "patient": "Patient/p1",
}
DECLARATION = BotDeclaration(
    name="bmi",
    version="1.0.0",
    title="BMI",
    citation=WHO_BMI_CLASSIFICATION,
    trigger=Trigger("Observation", "Observation?code=x"),
)


@dataclass
class Store:
    """Just enough of a FHIR server: conditional creates, If-Match updates, urn resolution."""

    resources: dict[str, JSONObject] = field(default_factory=dict[str, JSONObject])
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def apply(self, writes: list[PlannedWrite], author: str) -> None:
        urns: dict[str, str] = {}
        for write in writes:
            resource = rewrite_resource(write.resource, urns)
            kind = str(resource["resourceType"])
            if write.method == "POST":
                existing = self._match(kind, write.if_none_exist)
                if existing is None:
                    ref = f"{kind}/{next(self.ids)}"
                    self._put(ref, resource, author)
                else:
                    ref = existing
            else:
                ref = f"{kind}/{resource['id']}"
                current = self.resources[ref]
                assert ResourceView(current).version_id == write.if_match_version
                self._put(ref, resource, author)
            if write.full_url:
                urns[write.full_url] = ref

    def _put(self, ref: str, resource: JSONObject, author: str) -> None:
        previous = self.resources.get(ref)
        version = int(ResourceView(previous).version_id) + 1 if previous else 1
        stored = dict(resource)
        stored["id"] = ref.split("/")[1]
        old_meta = stored.get("meta")
        meta: JSONObject = dict(old_meta) if isinstance(old_meta, dict) else {}
        meta["versionId"] = str(version)
        meta["author"] = {"reference": author}
        stored["meta"] = meta
        self.resources[ref] = stored

    def _match(self, kind: str, criteria: str | None) -> str | None:
        assert criteria is not None
        name, _, value = criteria.partition("=")
        system, _, code = value.partition("|")
        for ref, resource in self.resources.items():
            if resource["resourceType"] != kind:
                continue
            view = ResourceView(resource)
            if name == "identifier" and view.identifier_value(system) == code:
                return ref
            if name == "_tag" and view.tagged(system, code):
                return ref
        return None

    def of_type(self, kind: str) -> list[JSONObject]:
        return [r for r in self.resources.values() if r["resourceType"] == kind]


def propose(store: Store, evidence_version: int, with_request: bool) -> None:
    evidence = (Evidence("Observation/w", str(evidence_version)),)
    effects = [
        ProposeObservation("bmi", "39156-5", "BMI", 31.0, "kg/m2", NOW, evidence),
        OpenReviewTask("bmi", "Review BMI", "why", "routine", evidence, WHO_BMI_CLASSIFICATION),
    ]
    if with_request:
        effects.insert(
            1, ProposeRequest("bmi", "ServiceRequest", "http://snomed.info/sct", "1", "x", evidence)
        )
    event = BotEvent(Interaction.UPDATE, None, "Observation/w", str(evidence_version), "Patient/p1")
    pending = [TaskView(t) for t in store.of_type("Task")]
    plan = plan_writes(
        declaration=DECLARATION,
        event=event,
        effects=effects,
        patient="Patient/p1",
        pending_tasks=pending,
        now=NOW,
        due_days=7,
        pending_focus={ResourceView(r).reference: r for r in store.resources.values()},
    )
    writes = [w for slot in plan.slots for w in slot.writes]
    for write in writes:
        assert write.resource.get("status") not in ("final", "active", "completed", "accepted")
    store.apply(writes, ACTORS["service"])


def decide(store: Store, actor: str, status: str, task_index: int) -> None:
    tasks = sorted(store.of_type("Task"), key=lambda t: str(t["id"]))
    if not tasks:
        return
    task = dict(tasks[task_index % len(tasks)])
    task["status"] = status
    if status in ("rejected", "cancelled"):
        task["statusReason"] = {"text": "not indicated"}
    store._put(f"Task/{task['id']}", task, ACTORS[actor])
    version = TaskView(store.resources[f"Task/{task['id']}"])
    decider = version.author
    is_clinician = decider is not None and has_clinician_role(ROLES, decider, CODES)
    focus = store.resources.get(version.focus or "")
    plan = plan_review(
        version, decider=decider, decider_is_clinician=is_clinician, focus=focus, now=NOW
    )
    store.apply(plan.writes, ACTORS["service"])


def withdraw(store: Store) -> None:
    tasks = [TaskView(t) for t in store.of_type("Task")]
    focus = {ResourceView(r).reference: r for r in store.resources.values()}
    store.apply(
        withdraw_writes(tasks, focus, code="evidence-withdrawn", text="withdrawn", now=NOW),
        ACTORS["service"],
    )


def approvals_by_clinician(store: Store) -> set[str]:
    """Targets of Provenances naming the clinician as verifier of an approval."""
    approved: set[str] = set()
    for provenance in store.of_type("Provenance"):
        activity = provenance.get("activity")
        if not isinstance(activity, dict) or activity.get("text") != "approved by clinician":
            continue
        agents = provenance.get("agent")
        assert isinstance(agents, list)
        verifiers = [
            get_str(get_object(a, "who") or {}, "reference")
            for a in agents
            if isinstance(a, dict) and "verifier" in str(a.get("type"))
        ]
        if verifiers != [CLINICIAN]:
            continue
        targets = provenance.get("target")
        assert isinstance(targets, list)
        approved |= {str(t["reference"]) for t in targets if isinstance(t, dict)}  # pyright: ignore[reportArgumentType]
    return approved


ACTION = st.one_of(
    st.tuples(st.just("propose"), st.integers(1, 4), st.booleans()),
    st.tuples(
        st.just("decide"),
        st.sampled_from(sorted(ACTORS)),
        st.sampled_from(["completed", "accepted", "rejected", "cancelled", "in-progress"]),
        st.integers(0, 5),
    ),
    st.tuples(st.just("withdraw")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTION, min_size=1, max_size=25))
def test_nothing_is_final_or_active_without_a_clinicians_approval(
    actions: list[tuple[object, ...]],
) -> None:
    store = Store()
    for action in actions:
        match action:
            case ("propose", int(version), bool(with_request)):
                propose(store, version, with_request)
            case ("decide", str(actor), str(status), int(index)):
                decide(store, actor, status, index)
            case _:
                withdraw(store)
    approved = approvals_by_clinician(store)
    for resource in store.resources.values():
        view = ResourceView(resource)
        if (view.resource_type, view.status) in (
            ("Observation", "final"),
            ("ServiceRequest", "active"),
            ("CarePlan", "active"),
        ):
            assert view.reference in approved, f"{view.reference} is {view.status} without approval"


def _one_task_store(with_request: bool = False) -> Store:
    store = Store()
    propose(store, 1, with_request)
    return store


def test_clinician_approval_finalises_and_records_the_verifier() -> None:
    store = _one_task_store(with_request=True)
    decide(store, "clinician", "completed", 0)
    [observation] = store.of_type("Observation")
    [request] = store.of_type("ServiceRequest")
    task = TaskView(store.of_type("Task")[0])
    assert task.focus == ResourceView(request).reference  # the request is the last proposal
    assert request["status"] == "active"
    assert observation["status"] == "preliminary"  # only the Task's focus is decided
    assert ResourceView(request).reference in approvals_by_clinician(store)


def test_clinician_rejection_retracts_and_keeps_the_reason() -> None:
    store = _one_task_store()
    decide(store, "clinician", "rejected", 0)
    [observation] = store.of_type("Observation")
    assert observation["status"] == "cancelled"
    assert "not indicated" in str(observation["note"])
    provenances = [p for p in store.of_type("Provenance") if "rejected" in str(p.get("activity"))]
    assert len(provenances) == 1
    assert CLINICIAN in str(provenances[0]["agent"])


def test_non_clinicians_are_refused() -> None:
    for actor in ("service", "partner", "patient", "ops practitioner"):
        store = _one_task_store()
        task = TaskView(store.of_type("Task")[0])
        approved = dict(task.json)
        approved["status"] = "completed"
        approved["meta"] = {**task.json["meta"], "author": {"reference": ACTORS[actor]}}  # pyright: ignore[reportGeneralTypeIssues, reportUnknownMemberType]
        view = TaskView(approved)
        plan = plan_review(
            view,
            decider=ACTORS[actor],
            decider_is_clinician=has_clinician_role(ROLES, ACTORS[actor], CODES),
            focus=store.of_type("Observation")[0],
            now=NOW,
        )
        assert plan.outcome == "refused"
        # Nothing but the Task is written: it goes back to the clinicians' list.
        [restored] = plan.writes
        assert restored.method == "PUT"
        assert restored.resource["resourceType"] == "Task"
        assert restored.resource["status"] == "requested"
        assert restored.if_match_version == view.version_id


def test_replayed_decision_writes_nothing_new() -> None:
    store = _one_task_store()
    decide(store, "clinician", "completed", 0)
    before = {ref: ResourceView(r).version_id for ref, r in store.resources.items()}
    task = TaskView(store.of_type("Task")[0])
    plan = plan_review(
        task,
        decider=CLINICIAN,
        decider_is_clinician=True,
        focus=store.resources[task.focus or ""],
        now=NOW,
    )
    assert plan.outcome == "already_decided"
    store.apply(plan.writes, ACTORS["service"])
    assert {ref: ResourceView(r).version_id for ref, r in store.resources.items()} == before


def test_supersession_leaves_one_live_task() -> None:
    store = Store()
    propose(store, 1, False)
    propose(store, 2, False)
    live = [t for t in store.of_type("Task") if t["status"] == "requested"]
    cancelled = [t for t in store.of_type("Task") if t["status"] == "cancelled"]
    assert len(live) == 1
    assert len(cancelled) == 1
    assert "superseded" in str(cancelled[0]["statusReason"])
    observations = {str(o["status"]) for o in store.of_type("Observation")}
    assert observations == {"preliminary", "cancelled"}  # the old proposal is withdrawn
    successor = TaskView(live[0]).identifier_value(TASK_SYSTEM)
    assert successor is not None
    assert successor in str(cancelled[0]["extension"])
    assert all(
        ResourceView(o).identifier_value(PROPOSAL_SYSTEM) for o in store.of_type("Observation")
    )
