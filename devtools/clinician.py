"""A scripted clinician: signs in like the Medplum app and works the review Tasks.

``login`` signs a user in the way the Medplum app does on a real server (``medplum-facts.md``
§7 "Sign-in"): ``POST /auth/login`` with the email, the password and a PKCE (S256) challenge,
then ``POST /oauth2/token`` with the code and the verifier, as the public ClientApplication
``starvit-clinician-app``. Every call after that goes through
:class:`~app.integrations.medplum.MedplumClient` with the clinician's own token, so the
clinician's AccessPolicy applies (read clinical data, read and write Task).

``approve`` and ``reject`` write the way the provider app does: a full ``PUT`` of the Task
without ``If-Match`` (last writer wins), changing ``status`` (and ``owner``, ``statusReason``).

Used by the demo and the integration tests; not part of the running service.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from app.botkit.review_list import is_results_review, list_items
from app.fhir.resource_json import (
    JSONObject,
    JSONValue,
    get_array,
    get_number,
    get_object,
    get_objects,
    get_str,
    version_id_of,
)
from app.fhir.views import TaskView
from app.integrations.medplum import (
    AuthorizationCodeTokenSource,
    MedplumClient,
    MedplumClientConfig,
    MedplumError,
    PasswordSignIn,
    pkce_pair,
    unverified_claims,
)
from devtools.devserver import CLINICIAN_APP_CLIENT_ID

__all__ = [
    "SEEDED_USERS",
    "ClinicianError",
    "ClinicianLoginError",
    "ClinicianSession",
    "TaskRow",
    "approve",
    "describe",
    "human_name",
    "jwt_claims",
    "login",
    "pending_tasks",
    "pkce_pair",
    "provenance_chain",
    "reject",
    "render_rows",
    "task_row",
]

PENDING_STATUSES = ("requested", "ready")
DECIDED_STATUSES = ("completed", "accepted", "rejected", "cancelled", "failed")
BOT_VERSION_SUFFIX = "bot-version"
NONE_YET = "(none yet)"
_MAX_EVIDENCE_LINES = 12

# The users seeded in the Medplum stand-in (devserver/README.md, "Seeded identities"): profile
# id -> (email, password). Development values published in the repository, never credentials.
SEEDED_USERS: dict[str, tuple[str, str]] = {
    "clinician-alice": ("alice.clinician@starvit.example", "alice-dev-password"),
    "clinician-bob": ("bob.clinician@starvit.example", "bob-dev-password"),
    "ops-olivia": ("olivia.ops@starvit.example", "olivia-dev-password"),
    "researcher-ravi": ("ravi.researcher@starvit.example", "ravi-dev-password"),
    "patient-portal-pat": ("pat.portal@starvit.example", "pat-dev-password"),
}

# The claims of a token, read without verifying it (Medplum verifies it on every request).
jwt_claims = unverified_claims


def _credentials(user: str, password: str | None) -> tuple[str, str]:
    """``(email, password)`` for ``user``: an email address, or a seeded user's name."""
    seeded = SEEDED_USERS.get(user) or next(
        (known for known in SEEDED_USERS.values() if known[0] == user.lower()), None
    )
    email = user if "@" in user else (seeded[0] if seeded else None)
    if email is None:
        known = ", ".join(SEEDED_USERS)
        raise ClinicianLoginError(
            f"{user!r} is neither an email address nor a seeded user ({known})"
        )
    if password is not None:
        return email, password
    if seeded is None:
        raise ClinicianLoginError(f"no password for {user}: pass password=")
    return email, seeded[1]


class ClinicianError(RuntimeError):
    """A call made as the clinician failed: operation, HTTP status and issue codes only."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ClinicianLoginError(ClinicianError):
    """The sign-in (``/auth/login`` + authorization code with PKCE) failed."""


def _failure(operation: str, error: MedplumError) -> ClinicianError:
    status = f"HTTP {error.status_code}" if error.status_code is not None else error.error_code
    outcome = error.operation_outcome
    codes = f" issues={','.join(outcome.codes)}" if outcome and outcome.codes else ""
    cause = f" cause={error.cause}" if error.cause else ""
    return ClinicianError(
        f"{operation} failed: {status}{codes}{cause}", status_code=error.status_code
    )


@dataclass(slots=True)
class ClinicianSession:
    """A signed-in clinician: a :class:`MedplumClient` carrying the clinician's token, and who
    the clinician is (``practitioner`` = ``Practitioner/<id>``)."""

    base_url: str
    user: str
    practitioner: str
    medplum: MedplumClient
    display: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.medplum.aclose()

    @property
    def claims(self) -> JSONObject:
        """The current access token's claims (``profile``, ``aud``, ``login_id``, ...)."""
        source = self.medplum.token_source
        return source.claims if isinstance(source, AuthorizationCodeTokenSource) else {}

    async def read(self, reference: str) -> JSONObject:
        """``Type/id`` or ``Type/id/_history/v`` (a vread)."""
        parts = _path_of(reference)
        try:
            if len(parts) == 4:
                result = await self.medplum.vread(parts[0], parts[1], parts[3])
            else:
                result = await self.medplum.read(parts[0], parts[1])
        except MedplumError as error:
            raise _failure(f"read {parts[0]}", error) from None
        return result.resource

    async def search(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> tuple[list[JSONObject], list[JSONObject]]:
        """One page: ``(matches, included)``."""
        try:
            page = await self.medplum.search(resource_type, params)
        except MedplumError as error:
            raise _failure(f"search {resource_type}", error) from None
        return page.resources, page.included

    async def put(self, resource: JSONObject) -> tuple[JSONObject, str]:
        """Full update without ``If-Match`` (as the provider app); returns the stored resource
        and its new version id."""
        resource_type = get_str(resource, "resourceType") or "?"
        try:
            result = await self.medplum.update(resource)
        except MedplumError as error:
            raise _failure(f"update {resource_type}", error) from None
        if not result.version_id:
            raise ClinicianError("update answered without a version")
        return result.resource, result.version_id


def _path_of(reference: str) -> list[str]:
    parts = [p for p in reference.split("/") if p]
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
        raise ValueError("expected Type/id or Type/id/_history/version")
    return parts


async def login(
    base_url: str,
    user: str = "clinician-alice",
    *,
    password: str | None = None,
    client_id: str = CLINICIAN_APP_CLIENT_ID,
    profile: str | None = None,
    redirect_uri: str | None = None,
    request_timeout: float = 10.0,
) -> ClinicianSession:
    """Sign ``user`` in and return the session. ``user`` is an email address (then give
    ``password``), or the name of a user seeded in the Medplum stand-in (``clinician-alice``:
    its Practitioner id, see :data:`SEEDED_USERS`), who signs in with the stand-in's
    development password unless ``password`` says otherwise. ``profile`` picks one profile of
    a user who has several. Raises :class:`ClinicianLoginError` when the sign-in fails."""
    root = base_url.rstrip("/") + "/"
    email, secret = _credentials(user, password)
    config = MedplumClientConfig(
        base_url=root,
        client_id=client_id,
        connect_timeout=request_timeout,
        read_timeout=request_timeout,
    )
    medplum = MedplumClient(
        config,
        token_source=PasswordSignIn(
            email=email,
            password=secret,
            client_id=client_id,
            profile=profile,
            redirect_uri=redirect_uri,
        ),
    )
    try:
        practitioner = await _signed_in_practitioner(medplum, user, root)
    except BaseException:
        await medplum.aclose()
        raise
    session = ClinicianSession(base_url=root, user=user, practitioner=practitioner, medplum=medplum)
    try:
        session.display = human_name(await session.read(practitioner))
    except ClinicianError:
        session.display = None
    return session


async def _signed_in_practitioner(medplum: MedplumClient, user: str, root: str) -> str:
    source = medplum.token_source
    assert isinstance(source, AuthorizationCodeTokenSource)
    try:
        await source.get_token()
    except MedplumError as error:
        raise ClinicianLoginError(
            f"{user} could not sign in to Medplum at {root}: {error}",
            status_code=error.status_code,
        ) from None
    practitioner = source.profile
    if not practitioner or not practitioner.startswith("Practitioner/"):
        raise ClinicianLoginError(
            f"{user} signed in as {practitioner or 'no profile'}, not as a Practitioner"
        )
    return practitioner


# --- the task list -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One review Task as the provider app lists it."""

    id: str
    title: str
    patient: str  # display name (or the reference when the Patient cannot be read)
    patient_reference: str | None
    priority: str
    due: str | None  # restriction.period.end
    rationale: str | None  # description
    focus: str | None
    version: str
    status: str

    @property
    def reference(self) -> str:
        return f"Task/{self.id}"


def human_name(resource: JSONObject) -> str | None:
    """``Mr. Armando772 Cortés936``: the official (else first) name's text or its parts."""
    names = get_objects(resource, "name")
    if not names:
        return None
    name = next((n for n in names if get_str(n, "use") == "official"), names[0])
    text = get_str(name, "text")
    if text:
        return text
    parts = [
        *(p for p in get_array(name, "prefix") if isinstance(p, str)),
        *(g for g in get_array(name, "given") if isinstance(g, str)),
        *([family] if (family := get_str(name, "family")) else []),
        *(s for s in get_array(name, "suffix") if isinstance(s, str)),
    ]
    return " ".join(parts) or None


def _ref(value: JSONObject | None) -> str | None:
    return get_str(value, "reference") if value is not None else None


def _unversioned(reference: str) -> str:
    return reference.split("/_history/", 1)[0]


def task_row(task: JSONObject, patient_names: dict[str, str]) -> TaskRow:
    """A :class:`TaskRow` from a Task and the display names of Patients by reference."""
    code = get_object(task, "code")
    title = (get_str(code, "text") if code else None) or "(untitled task)"
    patient_reference = _ref(get_object(task, "for"))
    patient = (
        patient_names.get(_unversioned(patient_reference), patient_reference)
        if patient_reference
        else "(no patient)"
    )
    restriction = get_object(task, "restriction")
    period = get_object(restriction, "period") if restriction else None
    return TaskRow(
        id=get_str(task, "id") or "",
        title=title,
        patient=patient,
        patient_reference=patient_reference,
        priority=get_str(task, "priority") or "routine",
        due=get_str(period, "end") if period else None,
        rationale=get_str(task, "description"),
        focus=_ref(get_object(task, "focus")),
        version=version_id_of(task) or "",
        status=get_str(task, "status") or "",
    )


async def pending_tasks(
    session: ClinicianSession, patient: str | None = None, *, count: int = 50
) -> list[TaskRow]:
    """Open review Tasks, newest first (``Task?status=requested,ready&_sort=-_lastUpdated``),
    optionally for one patient (``Patient/<id>`` or the id), with the Patients included in the
    same search (``_include=Task:patient``; a Patient not included is read once)."""
    params = [
        ("status", ",".join(PENDING_STATUSES)),
        ("_sort", "-_lastUpdated"),
        ("_count", str(count)),
        ("_include", "Task:patient"),
    ]
    if patient:
        params.append(("patient", patient if "/" in patient else f"Patient/{patient}"))
    tasks, included = await session.search("Task", params)
    names: dict[str, str] = {}
    for resource in included:
        if get_str(resource, "resourceType") == "Patient" and (rid := get_str(resource, "id")):
            names[f"Patient/{rid}"] = human_name(resource) or f"Patient/{rid}"
    for task in tasks:
        reference = _ref(get_object(task, "for"))
        if reference and reference.startswith("Patient/"):
            key = _unversioned(reference)
            if key not in names:
                try:
                    names[key] = human_name(await session.read(key)) or key
                except (ClinicianError, ValueError):
                    names[key] = key
    return [task_row(task, names) for task in tasks]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_rows(rows: Sequence[TaskRow], *, width: int = 100) -> str:
    """A fixed-width table (title, patient, priority, due) with each Task's rationale below."""
    if not rows:
        return "No pending review tasks."
    headers = ("Title", "Patient", "Priority", "Due")
    cells = [(r.title, r.patient, r.priority, (r.due or "-")[:10]) for r in rows]
    gap = "   "
    due_width = 10
    priority_width = max(len(headers[2]), *(len(c[2]) for c in cells))
    patient_width = min(28, max(len(headers[1]), *(len(c[1]) for c in cells)))
    room = width - priority_width - due_width - patient_width - 3 * len(gap)
    title_width = max(20, min(max(len(headers[0]), *(len(c[0]) for c in cells)), room))
    widths = (title_width, patient_width, priority_width, due_width)

    def line(*values: str) -> str:
        padded = [f"{_clip(v, w):<{w}}" for v, w in zip(values, widths, strict=True)]
        return gap.join(padded).rstrip()

    out = [line(*headers), line(*("-" * w for w in widths))]
    for row, cell in zip(rows, cells, strict=True):
        out.append(line(*cell))
        if row.rationale:
            out.extend(
                textwrap.wrap(
                    row.rationale,
                    width=width,
                    initial_indent="    why: ",
                    subsequent_indent="         ",
                )
            )
    return "\n".join(out)


# --- decisions ---------------------------------------------------------------------------------


def _owner(session: ClinicianSession) -> JSONObject:
    owner: JSONObject = {"reference": session.practitioner}
    if session.display:
        owner["display"] = session.display
    return owner


async def approve(session: ClinicianSession, task_id: str) -> str:
    """Mark the Task completed, owned by this clinician; returns the new version id."""
    task = await session.read(f"Task/{task_id}")
    task["status"] = "completed"
    task["owner"] = _owner(session)
    _, version = await session.put(task)
    return version


async def reject(session: ClinicianSession, task_id: str, reason: str) -> str:
    """Mark the Task rejected with ``statusReason.text`` = ``reason``, owned by this
    clinician; returns the new version id."""
    if not reason.strip():
        raise ValueError("a rejection needs a reason")
    task = await session.read(f"Task/{task_id}")
    task["status"] = "rejected"
    task["statusReason"] = {"text": reason}
    task["owner"] = _owner(session)
    _, version = await session.put(task)
    return version


# --- provenance --------------------------------------------------------------------------------


def _concept_text(concept: JSONObject | None) -> str | None:
    if concept is None:
        return None
    text = get_str(concept, "text")
    if text:
        return text
    for coding in get_objects(concept, "coding"):
        code, display = get_str(coding, "code"), get_str(coding, "display")
        if code or display:
            return " ".join(p for p in (code, display) if p)
    return None


def _quantity_text(quantity: JSONObject | None) -> str | None:
    if quantity is None:
        return None
    value = get_number(quantity, "value")
    if value is None:
        return None
    unit = get_str(quantity, "unit") or get_str(quantity, "code") or ""
    return f"{value:g} {unit}".strip()


def _value_text(resource: JSONObject) -> str | None:
    value = _quantity_text(get_object(resource, "valueQuantity"))
    if value is None:
        value = get_str(resource, "valueString") or _concept_text(
            get_object(resource, "valueCodeableConcept")
        )
    components = [
        f"{_concept_text(get_object(c, 'code')) or '?'} "
        f"{_quantity_text(get_object(c, 'valueQuantity')) or '?'}"
        for c in get_objects(resource, "component")
    ]
    if components:
        value = "; ".join([*([value] if value else []), *components])
    return value


def describe(resource: JSONObject) -> str:
    """One line: type/id, status, code, value, date."""
    resource_type = get_str(resource, "resourceType") or "?"
    parts = [f"{resource_type}/{get_str(resource, 'id')}"]
    version = version_id_of(resource)
    if version:
        parts[0] += f" (version {version})"
    status = get_str(resource, "status")
    if status:
        parts.append(f"status={status}")
    intent = get_str(resource, "intent")
    if intent:
        parts.append(f"intent={intent}")
    code = _concept_text(get_object(resource, "code"))
    if code is None:
        categories = get_objects(resource, "category")
        code = _concept_text(categories[0]) if categories else get_str(resource, "title")
    if code:
        parts.append(f"code={code}")
    value = _value_text(resource)
    if value:
        parts.append(f"value={value}")
    when = (
        get_str(resource, "effectiveDateTime")
        or get_str(resource, "authoredOn")
        or get_str(resource, "created")
    )
    if when:
        parts.append(f"at {when}")
    return " ".join(parts)


def _agent_type(agent: JSONObject) -> str:
    return _concept_text(get_object(agent, "type")) or "agent"


def _agent_codes(agent: JSONObject) -> set[str]:
    concept = get_object(agent, "type")
    codes: set[str] = set()
    if concept is not None:
        codes.update(c for c in (get_str(x, "code") for x in get_objects(concept, "coding")) if c)
        text = get_str(concept, "text")
        if text:
            codes.add(text)
    return codes


def _who(reference: JSONObject | None) -> str:
    if reference is None:
        return "(unknown)"
    ref = get_str(reference, "reference")
    identifier = get_object(reference, "identifier")
    value = get_str(identifier, "value") if identifier else None
    display = get_str(reference, "display")
    main = ref or (f"{get_str(reference, 'type') or 'identifier'} {value}" if value else None)
    main = main or display or "(unknown)"
    return f"{main} ({display})" if display and display != main else main


def _evidence_references(
    task: JSONObject, focus: JSONObject | None, provenances: list[JSONObject]
) -> list[str]:
    found: list[str] = []
    sources: list[JSONValue] = []
    sources.append(task.get("reasonReference"))
    sources.extend(get_object(i, "valueReference") for i in get_objects(task, "input"))
    if focus is not None:
        for key in ("derivedFrom", "reasonReference", "supportingInfo", "hasMember", "basedOn"):
            sources.append(focus.get(key))
    for provenance in provenances:
        sources.extend(get_object(e, "what") for e in get_objects(provenance, "entity"))
    for source in sources:
        items = source if isinstance(source, list) else [source]
        for item in items:
            if isinstance(item, dict):
                ref = get_str(item, "reference")
                if ref and "/" in ref and not ref.startswith(("urn:", "#")) and ref not in found:
                    found.append(ref)
    return found


def _bot_identifiers(
    task: JSONObject, focus: JSONObject | None, provenances: list[JSONObject]
) -> list[tuple[str | None, str]]:
    """``(system, value)`` of the bot: the Task's ``...bot-version`` extension, Provenance
    agents' and the Task requester's / focus device's identifiers."""
    found: list[tuple[str | None, str]] = []

    def add(system: str | None, value: str | None) -> None:
        if not value:
            return
        for i, (known_system, known_value) in enumerate(found):
            if known_value == value:
                if known_system is None and system:
                    found[i] = (system, value)
                return
        found.append((system, value))

    for extension in get_objects(task, "extension"):
        if (get_str(extension, "url") or "").endswith(BOT_VERSION_SUFFIX):
            add(None, get_str(extension, "valueString"))
    candidates: list[JSONObject | None] = [get_object(task, "requester")]
    if focus is not None:
        candidates.append(get_object(focus, "device"))
    for provenance in provenances:
        for agent in get_objects(provenance, "agent"):
            if not _agent_codes(agent) & {"verifier"}:
                candidates.append(get_object(agent, "who"))
    for candidate in candidates:
        identifier = get_object(candidate, "identifier") if candidate else None
        if identifier:
            add(get_str(identifier, "system"), get_str(identifier, "value"))
    return found


async def _try_read(
    session: ClinicianSession, reference: str
) -> tuple[JSONObject | None, str | None]:
    try:
        return await session.read(reference), None
    except ClinicianError as error:
        return None, f"HTTP {error.status_code}" if error.status_code else str(error)
    except ValueError:
        return None, "not a readable reference"


def _provenance_lines(provenances: list[JSONObject]) -> list[str]:
    if not provenances:
        return [f"Provenance: {NONE_YET}"]
    lines = [f"Provenance ({len(provenances)}):"]
    for provenance in provenances:
        activity = _concept_text(get_object(provenance, "activity"))
        recorded = get_str(provenance, "recorded") or "?"
        line = f"  Provenance/{get_str(provenance, 'id')} recorded {recorded}"
        lines.append(line + (f" activity {activity}" if activity else ""))
        for agent in get_objects(provenance, "agent"):
            roles = (_concept_text(r) for r in get_objects(agent, "role"))
            role = ", ".join(r for r in roles if r)
            who = _who(get_object(agent, "who"))
            lines.append(f"    agent {_agent_type(agent)}{f' [{role}]' if role else ''}: {who}")
        for entity in get_objects(provenance, "entity"):
            what = _who(get_object(entity, "what"))
            lines.append(f"    entity {get_str(entity, 'role') or '?'}: {what}")
    return lines


async def _evidence_lines(session: ClinicianSession, evidence: list[str]) -> list[str]:
    if not evidence:
        return [f"Evidence: {NONE_YET}"]
    lines = [f"Evidence ({len(evidence)}):"]
    for reference in evidence[:_MAX_EVIDENCE_LINES]:
        resource, problem = await _try_read(session, reference)
        lines.append(
            f"  {describe(resource)}" if resource else f"  {reference} (not readable: {problem})"
        )
    if len(evidence) > _MAX_EVIDENCE_LINES:
        lines.append(f"  ... and {len(evidence) - _MAX_EVIDENCE_LINES} more")
    return lines


async def _bot_lines(session: ClinicianSession, bots: list[tuple[str | None, str]]) -> list[str]:
    if not bots:
        return [f"Bot: {NONE_YET}"]
    lines: list[str] = []
    for system, value in bots:
        device = ""
        token = f"{system}|{value}" if system else value
        try:
            devices, _ = await session.search("Device", [("identifier", token), ("_count", "1")])
        except ClinicianError:
            devices = []
        if devices:
            versions = [get_str(v, "value") for v in get_objects(devices[0], "version")]
            shown = ", ".join(v for v in versions if v)
            device = f" -> Device/{get_str(devices[0], 'id')}"
            device += f" version {shown}" if shown else ""
        else:
            device = " (no Device found)"
        lines.append(f"Bot: {value}{device}")
    return lines


def _decision_lines(task: JSONObject, provenances: list[JSONObject]) -> list[str]:
    status = get_str(task, "status") or "?"
    owner_ref = get_object(task, "owner")
    owner = _who(owner_ref) if owner_ref else None
    lines: list[str] = []
    if status in DECIDED_STATUSES:
        reason = _concept_text(get_object(task, "statusReason"))
        meta = get_object(task, "meta")
        when = get_str(meta, "lastUpdated") if meta else None
        lines.append(
            f"Decision: {status}"
            + (f" by {owner}" if owner else "")
            + (f" at {when}" if when else "")
            + (f" - reason: {reason}" if reason else "")
        )
    else:
        lines.append(f"Decision: {NONE_YET} (Task status {status})")
    verified = False
    for provenance in provenances:
        for agent in get_objects(provenance, "agent"):
            if "verifier" in _agent_codes(agent):
                verified = True
                recorded = get_str(provenance, "recorded") or "?"
                lines.append(
                    f"Verified: {_who(get_object(agent, 'who'))} in "
                    f"Provenance/{get_str(provenance, 'id')} recorded {recorded}"
                )
    if not verified:
        lines.append(f"Verified (Provenance agent verifier): {NONE_YET}")
    return lines


async def provenance_chain(session: ClinicianSession, task_id: str) -> list[str]:
    """Readable lines from the Task to its proposal (focus), the Provenance of the proposal
    (and of the Task), the evidence, the bot (Device and version) and the clinician's decision;
    ``(none yet)`` wherever an element is absent."""
    task = await session.read(f"Task/{task_id}")
    row = task_row(task, {})
    lines = [
        f"Task/{row.id} (version {row.version}): {row.title!r} status={row.status} "
        f"priority={row.priority} due={row.due or '-'} for {row.patient_reference or '-'}"
    ]
    if row.rationale:
        lines.append(f"  rationale: {row.rationale}")

    focus: JSONObject | None = None
    if row.focus:
        focus, problem = await _try_read(session, row.focus)
        lines.append(
            f"Focus: {describe(focus)}"
            if focus
            else f"Focus: {row.focus} (not readable: {problem})"
        )
    else:
        lines.append(f"Focus: {NONE_YET}")

    targets = [f"Task/{row.id}"]
    if row.focus:
        versioned = [row.focus] if "/_history/" in row.focus else []
        targets = [_unversioned(row.focus), *versioned, *targets]
    view = TaskView(task)
    if is_results_review(view):
        # A results-review list's decision Provenances name each listed result.
        targets.extend(
            item.reference for item in list_items(view) if item.reference.count("/") == 1
        )
    provenances: list[JSONObject] = []
    try:
        provenances, _ = await session.search(
            "Provenance", [("target", ",".join(targets)), ("_count", "50")]
        )
        lines.extend(_provenance_lines(provenances))
    except ClinicianError as error:
        lines.append(f"Provenance: search failed (HTTP {error.status_code})")

    lines.extend(await _evidence_lines(session, _evidence_references(task, focus, provenances)))
    lines.extend(await _bot_lines(session, _bot_identifiers(task, focus, provenances)))
    lines.extend(_decision_lines(task, provenances))
    return lines
