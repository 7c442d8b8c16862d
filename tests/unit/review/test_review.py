"""The clinician decision (pure): only a clinician acting as themselves approves or rejects;
anything else is refused, and a later or late decision never leaves the Task contradicting its
proposal. A property test drives random event sequences (proposals, supersessions, status
changes by every kind of actor, impersonation, role changes, notifications processed out of
order) through the same planners the worker uses, applied to an in-memory store with the seeded
Task writeConstraints, and checks that no result is ever ``final`` and no request ``active``
without a valid clinician's own approval recorded in a Provenance, and that every Task agrees
with its proposal once the notifications are processed."""

from __future__ import annotations

import contextlib
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
from app.botkit.identifiers import PROPOSAL_SYSTEM, TAG_CODE, TAG_SYSTEM, TASK_SYSTEM
from app.botkit.plan import plan_writes, withdraw_writes
from app.clinical.bmi import WHO_BMI_CLASSIFICATION
from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    get_object,
    get_objects,
    get_str,
    rewrite_resource,
)
from app.fhir.views import ResourceView, TaskView
from app.fhir.writes import PlannedWrite
from app.review.decisions import (
    Actor,
    clinician_relation,
    has_clinician_role,
    needs_no_answer,
    owner_before_decision,
    plan_review,
    previous_version,
    standing_decision,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLINICIAN = "Practitioner/clinician-alice"
SECOND = "Practitioner/clinician-bob"
CLINICIANS = (CLINICIAN, SECOND)
SERVICE = "ClientApplication/starvit-service"
ADMIN_CLIENT = "ClientApplication/ops-admin"
CODES = frozenset({"http://snomed.info/sct|158965000"})
ACTORS = {
    "clinician": CLINICIAN,
    "second clinician": SECOND,
    "ops practitioner": "Practitioner/ops-olivia",
    "service": SERVICE,
    "partner": "ClientApplication/partner-acme",
    "patient": "Patient/p1",
    "admin client": ADMIN_CLIENT,
}
# Identities whose Task writes Medplum runs under clinician-policy (its writeConstraint).
CLINICIAN_POLICY = {CLINICIAN, SECOND}
DECIDED = ("completed", "accepted", "rejected")
DECLARATION = BotDeclaration(
    name="bmi",
    version="1.0.0",
    title="BMI",
    citation=WHO_BMI_CLASSIFICATION,
    trigger=Trigger("Observation", "Observation?code=x"),
)


class Refused(Exception):
    """Medplum's answer to a write: 412 (If-Match) or 403 (a policy's writeConstraint)."""


def role_of(practitioner: str, **extra: JSONValue) -> JSONObject:
    return {
        "resourceType": "PractitionerRole",
        "id": f"role-{practitioner.split('/')[1]}",
        "active": True,
        "practitioner": {"reference": practitioner},
        "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "158965000"}]}],
        **extra,
    }


def person(practitioner: str, **extra: JSONValue) -> JSONObject:
    return {"resourceType": "Practitioner", "id": practitioner.split("/")[1], **extra}


ROLES: list[JSONObject] = [role_of(CLINICIAN)]
ALICE = person(CLINICIAN)


def service_may_write_task(before: JSONObject | None, after: JSONObject) -> bool:
    """The seeded starvit-service-policy Task writeConstraint (devserver/seed.json)."""
    if after.get("status") in ("requested", "ready", "cancelled", "in-progress", "draft"):
        return True
    return (
        before is not None
        and before.get("status") in ("completed", "accepted", "rejected", "cancelled")
        and ResourceView(before).author != SERVICE
        and after.get("status") in ("completed", "rejected")
    )


def clinician_may_write_task(before: JSONObject | None, after: JSONObject) -> bool:
    """The seeded clinician-policy Task writeConstraints: tag and identifier kept, no reopen."""
    if before is None:
        return True
    old, new = TaskView(before), TaskView(after)
    if old.tagged(TAG_SYSTEM, TAG_CODE) and not new.tagged(TAG_SYSTEM, TAG_CODE):
        return False
    if old.identifier_value(TASK_SYSTEM) != new.identifier_value(TASK_SYSTEM):
        return False
    return not (old.status in DECIDED and new.status not in (*DECIDED, "cancelled"))


@dataclass
class Store:
    """Just enough of a FHIR server: conditional creates, If-Match updates (atomic per plan),
    urn resolution, history, meta.author / meta.onBehalfOf as Medplum records them, and the
    seeded Task writeConstraints of the service and the clinicians."""

    resources: dict[str, JSONObject] = field(default_factory=dict[str, JSONObject])
    history: dict[str, list[JSONObject]] = field(default_factory=dict[str, list[JSONObject]])
    ids: itertools.count[int] = field(default_factory=itertools.count)
    # Provenance reference -> the clinicians who were valid when it was written.
    valid_when_written: dict[str, frozenset[str]] = field(default_factory=dict[str, frozenset[str]])
    # Decision notifications not processed yet: (Task reference, version id).
    queue: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])
    # Tasks someone changed with the service's own credentials (outside the threat model the
    # decision loop can repair: the service's policy forbids it to write over its own version).
    written_as_service: set[str] = field(default_factory=set[str])

    def __post_init__(self) -> None:
        for practitioner in CLINICIANS:
            self._put(
                f"Practitioner/{practitioner.split('/')[1]}", person(practitioner), ADMIN_CLIENT
            )
            role = role_of(practitioner)
            self._put(f"PractitionerRole/{role['id']}", role, ADMIN_CLIENT)

    def apply(self, writes: list[PlannedWrite], author: str) -> None:
        for write in writes:  # checked first: a transaction is all or nothing
            if write.method == "PUT":
                kind = str(write.resource["resourceType"])
                current = self.resources[f"{kind}/{write.resource['id']}"]
                if ResourceView(current).version_id != write.if_match_version:
                    raise Refused("412")
                if (
                    author == SERVICE
                    and kind == "Task"
                    and not service_may_write_task(current, write.resource)
                ):
                    raise AssertionError("the plan needs a write the service may not make")
        urns: dict[str, str] = {}
        for write in writes:
            resource = rewrite_resource(write.resource, urns)
            kind = str(resource["resourceType"])
            if write.method == "POST":
                existing = self._match(kind, write.if_none_exist)
                if existing is None:
                    ref = f"{kind}/{next(self.ids)}"
                    self._put(ref, resource, author)
                    if kind == "Provenance":
                        self.valid_when_written[ref] = self.valid_clinicians()
                else:
                    ref = existing
            else:
                ref = f"{kind}/{resource['id']}"
                self._put(ref, resource, author)
            if write.full_url:
                urns[write.full_url] = ref

    def _put(
        self, ref: str, resource: JSONObject, author: str, on_behalf_of: str | None = None
    ) -> bool:
        previous = self.resources.get(ref)
        version = int(ResourceView(previous).version_id) + 1 if previous else 1
        stored = dict(resource)
        stored["id"] = ref.split("/")[1]
        old_meta = stored.get("meta")
        # As Medplum: the candidate's own meta (tags), plus the server's fields.
        meta: JSONObject = (
            {"tag": old_meta["tag"]} if isinstance(old_meta, dict) and "tag" in old_meta else {}
        )
        meta["versionId"] = str(version)
        meta["author"] = {"reference": author}
        if on_behalf_of:
            meta["onBehalfOf"] = {"reference": on_behalf_of}
        stored["meta"] = meta
        if previous is not None and _same(previous, stored):
            return False  # a no-op update makes no version and fires nothing
        self.resources[ref] = stored
        self.history.setdefault(ref, []).append(stored)
        return True

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

    def version(self, ref: str, version_id: str) -> JSONObject:
        return next(v for v in self.history[ref] if ResourceView(v).version_id == version_id)

    def newest_first(self, ref: str) -> list[JSONObject]:
        return list(reversed(self.history[ref]))

    def valid_clinicians(self) -> frozenset[str]:
        """Computed here, independently of the code under test."""
        valid: set[str] = set()
        for practitioner in CLINICIANS:
            who = self.resources[f"Practitioner/{practitioner.split('/')[1]}"]
            role = self.resources[f"PractitionerRole/role-{practitioner.split('/')[1]}"]
            period = role.get("period")
            expired = isinstance(period, dict) and str(period.get("end", "9999")) < NOW.isoformat()
            coded = "158965000" in str(role.get("code"))
            active = who.get("active") is not False and role.get("active") is not False
            if active and coded and not expired:
                valid.add(practitioner)
        return frozenset(valid)


def _same(a: JSONObject, b: JSONObject) -> bool:
    def bare(r: JSONObject) -> JSONObject:
        meta = r.get("meta")
        kept = {k: v for k, v in meta.items() if k != "versionId"} if isinstance(meta, dict) else {}
        return {**r, "meta": kept}

    return bare(a) == bare(b)


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
    store.apply(writes, SERVICE)


def change_status(
    store: Store, actor: str, status: str, task_index: int, on_behalf_of: str | None = None
) -> None:
    """A person or client edits a review Task in the Medplum app (a full PUT, no If-Match)."""
    tasks = sorted(store.of_type("Task"), key=lambda t: int(str(t["id"])))
    if not tasks:
        return
    before = tasks[task_index % len(tasks)]
    task = dict(before)
    task["status"] = status
    if status in ("rejected", "cancelled"):
        task["statusReason"] = {"text": "not indicated"}
    if actor.startswith("Practitioner/"):
        task["owner"] = {"reference": actor}
    # Medplum applies the impersonated identity's policy to an On-Behalf-Of write.
    policy_of = on_behalf_of or actor
    if policy_of in CLINICIAN_POLICY and not clinician_may_write_task(before, task):
        return  # 403
    if actor == SERVICE and not service_may_write_task(before, task):
        return  # 403
    ref = f"Task/{task['id']}"
    if actor == SERVICE:
        store.written_as_service.add(ref)
    if store._put(ref, task, actor, on_behalf_of):
        store.queue.append((ref, ResourceView(store.resources[ref]).version_id))


def process(store: Store, index: int) -> None:
    """The review handler for one queued notification, as the worker runs it (in any order)."""
    if not store.queue:
        return
    ref, version_id = store.queue.pop(index % len(store.queue))
    for _attempt in range(3):  # a 412 is retried from the start, like the job queue does
        try:
            run_review(store, ref, version_id)
            return
        except Refused:
            continue
    raise AssertionError("a decision kept conflicting")


def run_review(store: Store, ref: str, version_id: str) -> None:
    version = TaskView(store.version(ref, version_id))
    current = TaskView(store.resources[ref])
    if current.version_id != version.version_id:
        if (current.status, current.author, current.on_behalf_of) != (
            version.status,
            version.author,
            version.on_behalf_of,
        ):
            return  # stale: the newer version's own notification answers it
        version, version_id = current, current.version_id  # a later edit kept the decision
    history = store.newest_first(ref)
    decider = version.author
    practitioner = store.resources.get(decider or "")
    roles = [r for r in store.of_type("PractitionerRole") if decider and decider in str(r)]
    is_clinician = decider is not None and has_clinician_role(
        roles, decider, CODES, practitioner_resource=practitioner, now=NOW
    )
    focus = store.resources.get(version.focus or "")
    if needs_no_answer(version, focus, SERVICE):
        return  # as the handler: the service's own version is no decision
    standing = None
    if focus is not None:
        provenances = [p for p in store.of_type("Provenance") if ResourceView(p).author == SERVICE]
        withdrawal = next(
            (
                TaskView(v)
                for v in history
                if ResourceView(v).author == SERVICE and v.get("status") == "cancelled"
            ),
            None,
        )
        standing = standing_decision(ResourceView(focus), provenances, withdrawal)
    plan = plan_review(
        version,
        actor=Actor(decider, version.on_behalf_of, is_clinician),
        focus=focus,
        now=NOW,
        standing=standing,
        previous=previous_version(history, version_id),
    )
    store.apply(plan.writes, SERVICE)


def withdraw(store: Store) -> None:
    tasks = [TaskView(t) for t in store.of_type("Task")]
    focus = {ResourceView(r).reference: r for r in store.resources.values()}
    # Refused (412) when a clinician's edit came first: the bot's job would re-read and retry.
    with contextlib.suppress(Refused):
        store.apply(
            withdraw_writes(tasks, focus, code="evidence-withdrawn", text="withdrawn", now=NOW),
            SERVICE,
        )


def change_role(store: Store, change: str, practitioner: str) -> None:
    """An administrator changes who is a clinician (allowed: only admins may)."""
    pid = practitioner.split("/")[1]
    who = dict(store.resources[f"Practitioner/{pid}"])
    role = dict(store.resources[f"PractitionerRole/role-{pid}"])
    match change:
        case "deactivate":
            who["active"] = False
        case "role out of period":
            role["period"] = {"start": "2020-01-01", "end": "2025-06-30"}
        case "role not yet started":
            role["period"] = {"start": "2027-01-01"}
        case "demote":
            role["code"] = [{"text": "Nurse"}]
        case "role inactive":
            role["active"] = False
        case _:
            who.pop("active", None)
            role = role_of(practitioner)
    store._put(f"Practitioner/{pid}", who, ADMIN_CLIENT)
    store._put(f"PractitionerRole/role-{pid}", role, ADMIN_CLIENT)


def approvals_by_clinician(store: Store) -> set[str]:
    """Targets of the service's Provenances naming, as verifier of an approval, a clinician who
    was valid when it was written and who made the named Task version as themselves."""
    approved: set[str] = set()
    for provenance in store.of_type("Provenance"):
        activity = provenance.get("activity")
        if not isinstance(activity, dict) or activity.get("text") != "approved by clinician":
            continue
        if ResourceView(provenance).author != SERVICE:
            continue
        agents = provenance.get("agent")
        assert isinstance(agents, list)
        verifiers = [
            get_str(get_object(a, "who") or {}, "reference")
            for a in agents
            if isinstance(a, dict) and "verifier" in str(a.get("type"))
        ]
        if len(verifiers) != 1 or verifiers[0] not in CLINICIANS:
            continue
        verifier = verifiers[0]
        if verifier not in store.valid_when_written[ResourceView(provenance).reference]:
            continue
        decided = [
            get_str(what, "reference") or ""
            for e in get_objects(provenance, "entity")
            if (what := get_object(e, "what")) is not None
            and "/_history/" in str(get_str(what, "reference"))
        ]
        ref, _, version_id = decided[0].partition("/_history/")
        decision = TaskView(store.version(ref, version_id))
        if decision.author != verifier or decision.on_behalf_of is not None:
            continue
        targets = provenance.get("target")
        assert isinstance(targets, list)
        approved |= {str(t["reference"]) for t in targets if isinstance(t, dict)}  # pyright: ignore[reportArgumentType]
    return approved


def assert_task_and_proposal_agree(store: Store) -> None:
    for resource in store.of_type("Task"):
        task = TaskView(resource)
        focus = store.resources.get(task.focus or "")
        if focus is None or task.reference in store.written_as_service:
            # With the service's own credentials a Task's status can be set over a decision
            # the service cannot write back; what must still hold (nothing final or active
            # without a clinician) is checked for every resource.
            continue
        proposal = ResourceView(focus)
        note = str(resource.get("businessStatus"))
        if proposal.status in ("final", "active"):
            agrees = task.status in ("completed", "accepted")
        elif proposal.status in ("cancelled", "revoked"):
            agrees = task.status in ("rejected", "cancelled")
        else:
            agrees = task.status not in ("completed", "accepted", "rejected", "cancelled")
        # The one documented exception: an administrator (no policy) reopened a decided Task;
        # the service may not complete an open Task, so it answers with a note.
        reopened = "has no effect" in note and task.status in ("requested", "in-progress")
        assert agrees or reopened, (
            f"{task.reference} is {task.status} over a {proposal.status} proposal ({note})"
        )


ACTION = st.one_of(
    st.tuples(st.just("propose"), st.integers(1, 4), st.booleans()),
    st.tuples(
        st.just("decide"),
        st.sampled_from(sorted(ACTORS)),
        st.sampled_from(["completed", "accepted", "rejected", "cancelled", "in-progress"]),
        st.integers(0, 5),
    ),
    # An admin client impersonating a clinician (X-Medplum-On-Behalf-Of).
    st.tuples(
        st.just("impersonate"),
        st.sampled_from(CLINICIANS),
        st.sampled_from(["completed", "accepted", "rejected"]),
        st.integers(0, 5),
    ),
    st.tuples(
        st.just("role"),
        st.sampled_from(
            [
                "deactivate",
                "role out of period",
                "role not yet started",
                "demote",
                "role inactive",
                "restore",
            ]
        ),
        st.sampled_from(CLINICIANS),
    ),
    st.tuples(st.just("process"), st.integers(0, 5)),
    st.tuples(st.just("withdraw")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ACTION, min_size=1, max_size=30))
def test_nothing_is_final_or_active_without_a_clinician_acting_as_themselves(
    actions: list[tuple[object, ...]],
) -> None:
    """Over any sequence of proposals, withdrawals, status changes by every kind of actor,
    impersonation, role changes and notifications processed in any order: nothing becomes
    final or active except by a valid clinician acting as themselves, and once every
    notification is processed the Task's status agrees with its proposal's."""
    store = Store()
    for action in actions:
        match action:
            case ("propose", int(version), bool(with_request)):
                propose(store, version, with_request)
            case ("decide", str(actor), str(status), int(index)):
                change_status(store, ACTORS[actor], status, index)
            case ("impersonate", str(clinician), str(status), int(index)):
                change_status(store, ADMIN_CLIENT, status, index, on_behalf_of=clinician)
            case ("role", str(change), str(clinician)):
                change_role(store, change, clinician)
            case ("process", int(index)):
                process(store, index)
            case _:
                withdraw(store)
    while store.queue:
        process(store, 0)
    approved = approvals_by_clinician(store)
    for resource in store.resources.values():
        view = ResourceView(resource)
        if (view.resource_type, view.status) in (
            ("Observation", "final"),
            ("ServiceRequest", "active"),
            ("CarePlan", "active"),
        ):
            assert view.reference in approved, f"{view.reference} is {view.status} without approval"
    assert_task_and_proposal_agree(store)


def test_the_service_rewriting_a_decided_task_is_not_answered() -> None:
    """Found by the property below: a clinician completes, the service then writes the
    completed Task again as itself. Answering that version would need a write the service's
    policy refuses; it is the service's own write, not a decision."""
    store = Store()
    propose(store, 1, False)
    change_status(store, ACTORS["clinician"], "completed", 0)
    process(store, 0)
    change_status(store, ACTORS["service"], "completed", 0)
    assert store.queue  # the model delivers it, as a sweep could
    while store.queue:
        process(store, 0)  # raised before: the answer needed a write the policy refuses
    [task] = store.of_type("Task")
    assert task["status"] == "completed"
    [proposal] = [r for r in store.of_type("Observation") if r["status"] == "final"]
    assert ResourceView(proposal).reference in approvals_by_clinician(store)


def decide(store: Store, actor: str, status: str, task_index: int) -> None:
    change_status(store, ACTORS[actor], status, task_index)
    while store.queue:
        process(store, 0)


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


def _decided_version(store: Store, actor: str, status: str, **meta: JSONValue) -> TaskView:
    task = TaskView(store.of_type("Task")[0])
    changed = dict(task.json)
    changed["status"] = status
    changed["meta"] = {
        **(get_object(task.json, "meta") or {}),
        "author": {"reference": actor},
        **meta,
    }
    return TaskView(changed)


def _clinician(reference: str | None) -> bool:
    return reference is not None and has_clinician_role(
        ROLES, reference, CODES, practitioner_resource=ALICE, now=NOW
    )


def test_non_clinicians_are_refused() -> None:
    for actor in ("service", "partner", "patient", "ops practitioner", "admin client"):
        store = _one_task_store()
        view = _decided_version(store, ACTORS[actor], "completed")
        plan = plan_review(
            view,
            actor=Actor(ACTORS[actor], None, _clinician(ACTORS[actor])),
            focus=store.of_type("Observation")[0],
            now=NOW,
        )
        assert plan.outcome == "refused"
        # Nothing but the Task is written: it goes back to the clinicians' list, saying why.
        [restored] = plan.writes
        assert restored.method == "PUT"
        assert restored.resource["resourceType"] == "Task"
        assert restored.resource["status"] == "requested"
        assert "refused" in str(restored.resource["note"])
        assert restored.if_match_version == view.version_id


def test_an_admin_acting_on_behalf_of_a_clinician_is_refused() -> None:
    """Medplum records the real caller as meta.author and the clinician as meta.onBehalfOf."""
    store = _one_task_store()
    view = _decided_version(store, ADMIN_CLIENT, "completed", onBehalfOf={"reference": CLINICIAN})
    assert view.on_behalf_of == CLINICIAN
    plan = plan_review(
        view,
        actor=Actor(ADMIN_CLIENT, CLINICIAN, False),
        focus=store.of_type("Observation")[0],
        now=NOW,
    )
    assert plan.outcome == "refused"
    [restored] = plan.writes
    assert restored.resource["status"] == "requested"
    assert f"made on behalf of {CLINICIAN} by {ADMIN_CLIENT}" in str(restored.resource["note"])


def test_a_version_carrying_on_behalf_of_is_refused_whatever_its_author() -> None:
    store = _one_task_store()
    view = _decided_version(store, CLINICIAN, "completed", onBehalfOf={"reference": SECOND})
    plan = plan_review(
        view, actor=Actor(CLINICIAN, SECOND, True), focus=store.of_type("Observation")[0], now=NOW
    )
    assert plan.outcome == "refused"
    assert "made on behalf of" in plan.reasons[0]


def test_inactive_practitioners_and_roles_out_of_period_are_not_clinicians() -> None:
    def check(roles: list[JSONObject], who: JSONObject | None) -> bool:
        return has_clinician_role(roles, CLINICIAN, CODES, practitioner_resource=who, now=NOW)

    assert check(ROLES, ALICE)
    assert not check(ROLES, person(CLINICIAN, active=False))
    assert not check(ROLES, None), "an unreadable Practitioner is not a clinician"
    assert not check(ROLES, person(SECOND)), "someone else's Practitioner"
    assert not check([role_of(CLINICIAN, period={"end": "2025-12-31"})], ALICE)
    assert check([role_of(CLINICIAN, period={"end": "2026-01-01"})], ALICE), "the whole last day"
    assert not check([role_of(CLINICIAN, period={"start": "2026-01-02"})], ALICE)
    assert check([role_of(CLINICIAN, period={"start": "2025-01-01", "end": "2026"})], ALICE)
    assert not check([role_of(CLINICIAN, active=False)], ALICE)
    assert not check([role_of(CLINICIAN, code=[{"text": "Doctor"}])], ALICE)
    assert not check([role_of(SECOND)], ALICE)


def test_a_demoted_or_deactivated_clinician_cannot_approve() -> None:
    for change in ("deactivate", "role out of period", "demote", "role inactive"):
        store = _one_task_store()
        change_role(store, change, CLINICIAN)
        decide(store, "clinician", "completed", 0)
        assert store.of_type("Observation")[0]["status"] == "preliminary", change
        assert store.of_type("Task")[0]["status"] == "requested", change


def test_replayed_decision_writes_nothing_new() -> None:
    store = _one_task_store()
    decide(store, "clinician", "completed", 0)
    before = {ref: ResourceView(r).version_id for ref, r in store.resources.items()}
    task = TaskView(store.of_type("Task")[0])
    focus = store.resources[task.focus or ""]
    standing = standing_decision(ResourceView(focus), store.of_type("Provenance"))
    plan = plan_review(
        task, actor=Actor(CLINICIAN, None, True), focus=focus, now=NOW, standing=standing
    )
    assert plan.outcome == "already_decided"
    store.apply(plan.writes, SERVICE)
    assert {ref: ResourceView(r).version_id for ref, r in store.resources.items()} == before


def test_a_later_rejection_does_not_undo_an_approval() -> None:
    """Alice approves, Bob rejects two seconds later: the approval stands, the Task says so."""
    store = _one_task_store()
    decide(store, "clinician", "completed", 0)
    decide(store, "second clinician", "rejected", 0)
    [task] = store.of_type("Task")
    [observation] = store.of_type("Observation")
    assert observation["status"] == "final"
    assert task["status"] == "completed"
    assert "statusReason" not in task
    note = str(task["note"])
    assert f"already approved by {CLINICIAN}" in note
    assert f"later rejection by {SECOND} was not applied" in note
    verifiers = [str(p["agent"]) for p in store.of_type("Provenance") if "verifier" in str(p)]
    assert len(verifiers) == 1
    assert CLINICIAN in verifiers[0]


def test_a_later_approval_does_not_undo_a_rejection() -> None:
    store = _one_task_store()
    decide(store, "clinician", "rejected", 0)
    decide(store, "second clinician", "completed", 0)
    [task] = store.of_type("Task")
    assert store.of_type("Observation")[0]["status"] == "cancelled"
    assert task["status"] == "rejected"
    assert task["statusReason"] == {"text": "not indicated"}
    assert f"already rejected by {CLINICIAN}" in str(task["note"])


def test_decisions_processed_out_of_order_leave_no_contradiction() -> None:
    """Bob's later rejection is processed before Alice's approval: Alice's version is stale,
    Bob's decision is the one carried out, and the Task agrees."""
    store = _one_task_store()
    change_status(store, CLINICIAN, "completed", 0)
    change_status(store, SECOND, "rejected", 0)
    process(store, 1)
    process(store, 0)
    assert store.of_type("Observation")[0]["status"] == "cancelled"
    assert store.of_type("Task")[0]["status"] == "rejected"
    assert_task_and_proposal_agree(store)


def test_an_approval_after_withdrawal_changes_nothing_and_says_so() -> None:
    store = Store()
    propose(store, 1, False)
    withdraw(store)
    [withdrawn] = store.of_type("Task")
    decide(store, "clinician", "completed", 0)
    task = TaskView(store.resources[f"Task/{withdrawn['id']}"])
    assert task.status == "cancelled"
    assert task.status_reason_code == "evidence-withdrawn"
    assert "before your decision; nothing was changed" in str(task.json["note"])
    assert store.resources[task.focus or ""]["status"] == "cancelled"
    assert not [p for p in store.of_type("Provenance") if "verifier" in str(p)]


def test_a_refused_change_of_a_decided_task_puts_the_decision_back() -> None:
    store = _one_task_store()
    decide(store, "clinician", "completed", 0)
    decide(store, "ops practitioner", "rejected", 0)
    [task] = store.of_type("Task")
    assert task["status"] == "completed"
    assert "was refused" in str(task["note"])
    assert store.of_type("Observation")[0]["status"] == "final"


def test_reopening_a_decided_task_is_answered_on_the_task() -> None:
    store = _one_task_store()
    decide(store, "clinician", "completed", 0)
    decide(store, "ops practitioner", "in-progress", 0)
    [task] = store.of_type("Task")
    assert task["status"] == "in-progress"  # the service may not complete an open Task
    assert "has no effect" in str(task["businessStatus"])
    assert store.of_type("Observation")[0]["status"] == "final"


def test_a_task_whose_identifier_was_removed_is_refused_and_restored() -> None:
    store = _one_task_store()
    [task] = store.of_type("Task")
    stripped = {k: v for k, v in task.items() if k != "identifier"}
    stripped["status"] = "completed"
    store._put(f"Task/{task['id']}", stripped, CLINICIAN)
    history = store.newest_first(f"Task/{task['id']}")
    version = TaskView(history[0])
    plan = plan_review(
        version,
        actor=Actor(CLINICIAN, None, True),
        focus=store.of_type("Observation")[0],
        now=NOW,
        previous=previous_version(history, version.version_id),
    )
    assert plan.outcome == "refused"
    [restored] = plan.writes
    assert TaskView(restored.resource).identifier_value(TASK_SYSTEM) is not None
    assert TaskView(restored.resource).tagged(TAG_SYSTEM, TAG_CODE)
    assert restored.resource["status"] == "requested"


def test_related_scope_owner_gp_and_care_team() -> None:
    patient: JSONObject = {"resourceType": "Patient", "id": "p1"}
    role = role_of(CLINICIAN)

    def related(
        owner: str | None = None,
        gp: list[str] | None = None,
        teams: list[JSONObject] | None = None,
    ) -> str | None:
        who = {**patient, "generalPractitioner": [{"reference": r} for r in gp or []]}
        return clinician_relation(
            CLINICIAN,
            decider_roles=[role],
            owner=owner,
            patient=who,
            care_teams=teams or [],
            now=NOW,
        )

    def team(status: str = "active", **participant: JSONValue) -> JSONObject:
        return {
            "resourceType": "CareTeam",
            "id": "t1",
            "status": status,
            "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": CLINICIAN}, **participant}],
        }

    assert related(owner=CLINICIAN) == "the Task's owner"
    assert related(gp=[CLINICIAN]) == "the patient's general practitioner"
    assert related(gp=["PractitionerRole/role-clinician-alice"]) is not None
    assert related(teams=[team()]) == "a participant of the patient's active care team"
    assert related(teams=[team("inactive")]) is None
    assert related(teams=[team(period={"end": "2025-01-01"})]) is None
    assert related(owner=SECOND, gp=[SECOND]) is None
    assert related() is None


def test_self_assignment_does_not_make_the_decider_the_owner() -> None:
    store = _one_task_store()
    [task] = store.of_type("Task")
    ref = f"Task/{task['id']}"
    store._put(ref, {**task, "owner": {"reference": CLINICIAN}}, CLINICIAN)
    store._put(ref, {**store.resources[ref], "status": "completed"}, CLINICIAN)
    history = store.newest_first(ref)
    assert owner_before_decision(history, ResourceView(history[0]).version_id, CLINICIAN) is None
    # Assigned by someone else (a coordinator), then decided: the owner counts.
    store._put(
        ref,
        {**store.resources[ref], "status": "requested", "owner": {"reference": SECOND}},
        CLINICIAN,
    )
    store._put(
        ref, {**store.resources[ref], "owner": {"reference": CLINICIAN}}, "Practitioner/coordinator"
    )
    store._put(ref, {**store.resources[ref], "status": "completed"}, CLINICIAN)
    history = store.newest_first(ref)
    assert (
        owner_before_decision(history, ResourceView(history[0]).version_id, CLINICIAN) == CLINICIAN
    )


def test_related_scope_refuses_an_unrelated_clinician_and_says_why() -> None:
    store = _one_task_store()
    view = _decided_version(store, CLINICIAN, "completed")
    focus = store.of_type("Observation")[0]
    refused = plan_review(
        view, actor=Actor(CLINICIAN, None, True), focus=focus, now=NOW, scope="related"
    )
    assert refused.outcome == "refused"
    [restored] = refused.writes
    assert restored.resource["status"] == "requested"
    assert "not related to the patient" in str(restored.resource["businessStatus"])
    allowed = plan_review(
        view,
        actor=Actor(CLINICIAN, None, True, relation="the Task's owner"),
        focus=focus,
        now=NOW,
        scope="related",
    )
    assert allowed.outcome == "finalised"
    project = plan_review(view, actor=Actor(CLINICIAN, None, True), focus=focus, now=NOW)
    assert project.outcome == "finalised", "scope project: any clinician of the project"


def test_newer_evidence_updates_the_one_live_task_in_place() -> None:
    store = Store()
    propose(store, 1, False)
    [first] = store.of_type("Task")
    propose(store, 2, False)
    [task] = store.of_type("Task")  # no second Task, nothing cancelled
    assert task["id"] == first["id"]
    assert task["status"] == "requested"
    assert ResourceView(task).version_id == "2"
    assert "Observation/w/_history/2" in str(task["input"])
    [observation] = store.of_type("Observation")  # the proposal updated in place
    assert observation["status"] == "preliminary"
    assert "Observation/w/_history/2" in str(observation["derivedFrom"])
    assert TaskView(task).identifier_value(TASK_SYSTEM) is not None
    assert ResourceView(observation).identifier_value(PROPOSAL_SYSTEM)
    # Each content has its own Provenance.
    assert len(store.of_type("Provenance")) == 2
