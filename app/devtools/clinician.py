"""A scripted clinician: signs in like the Medplum provider app and works the review Tasks.

``login`` runs the authorization-code flow with PKCE (S256) against ``/oauth2/authorize`` and
``/oauth2/token`` as the public ClientApplication ``starvit-clinician-app``; on the Medplum
stand-in the sign-in page is "pressed" by posting the form with ``user=<Practitioner id>``.
Everything after that uses the clinician's own bearer token, so the clinician's AccessPolicy
applies (read clinical data, read and write Task).

``approve`` and ``reject`` write the way the provider app does: a full ``PUT`` of the Task
without ``If-Match`` (last writer wins), changing ``status`` (and ``owner``, ``statusReason``).

Used by the demo and the integration tests; not part of the running service.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx

from app.devtools.devserver import CLINICIAN_APP_CLIENT_ID, CLINICIAN_APP_REDIRECT
from app.domain.fhir_json import (
    JSONObject,
    JSONValue,
    get_array,
    get_number,
    get_object,
    get_objects,
    get_str,
    loads_object,
    version_id_of,
)
from app.integrations.medplum import OperationOutcomeSummary

FHIR_JSON = "application/fhir+json"
PENDING_STATUSES = ("requested", "ready")
DECIDED_STATUSES = ("completed", "accepted", "rejected", "cancelled", "failed")
BOT_VERSION_SUFFIX = "bot-version"
NONE_YET = "(none yet)"
_MAX_EVIDENCE_LINES = 12


class ClinicianError(RuntimeError):
    """A call made as the clinician failed: operation, HTTP status and issue codes only."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ClinicianLoginError(ClinicianError):
    """The authorization-code + PKCE sign-in failed."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """``(code_verifier, code_challenge)`` for S256 (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def jwt_claims(token: str) -> JSONObject:
    """The payload of a JWT, read without verifying it (the token came straight from the token
    endpoint over the connection we opened; only claims such as ``profile`` are read)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        raw = base64.urlsafe_b64decode(payload)
    except ValueError:
        return {}
    return loads_object(raw) or {}


def _failure(operation: str, response: httpx.Response) -> ClinicianError:
    outcome = loads_object(response.content)
    summary = OperationOutcomeSummary.from_json(outcome) if outcome else None
    codes = f" issues={','.join(summary.codes)}" if summary and summary.codes else ""
    return ClinicianError(
        f"{operation} failed: HTTP {response.status_code}{codes}", status_code=response.status_code
    )


@dataclass(slots=True)
class ClinicianSession:
    """A signed-in clinician: an ``httpx.AsyncClient`` on ``<base>/fhir/R4/`` carrying the
    bearer token, and who the clinician is (``practitioner`` = ``Practitioner/<id>``)."""

    base_url: str
    user: str
    practitioner: str
    client: httpx.AsyncClient
    access_token: str = field(repr=False)
    claims: JSONObject = field(repr=False)
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
        await self.client.aclose()

    @property
    def practitioner_id(self) -> str:
        return self.practitioner.split("/", 1)[1]

    async def read(self, reference: str) -> JSONObject:
        """``Type/id`` or ``Type/id/_history/v`` (a vread)."""
        response = await self.client.get(_path_of(reference))
        if response.status_code != 200:
            raise _failure(f"read {reference.split('/', 1)[0]}", response)
        return _object_or_fail(response, "read")

    async def search(
        self, resource_type: str, params: Sequence[tuple[str, str]]
    ) -> tuple[list[JSONObject], list[JSONObject]]:
        """One page: ``(matches, included)``."""
        response = await self.client.get(resource_type, params=list(params))
        if response.status_code != 200:
            raise _failure(f"search {resource_type}", response)
        bundle = _object_or_fail(response, "search")
        matches: list[JSONObject] = []
        included: list[JSONObject] = []
        for entry in get_objects(bundle, "entry"):
            resource = get_object(entry, "resource")
            if resource is None:
                continue
            search = get_object(entry, "search")
            mode = get_str(search, "mode") if search else None
            (included if mode == "include" else matches).append(resource)
        return matches, included

    async def put(self, resource: JSONObject) -> tuple[JSONObject, str]:
        """Full update without ``If-Match`` (as the provider app); returns the stored resource
        and its new version id."""
        reference = f"{get_str(resource, 'resourceType')}/{get_str(resource, 'id')}"
        response = await self.client.put(
            reference, json=resource, headers={"Content-Type": FHIR_JSON}
        )
        if response.status_code != 200:
            raise _failure(f"update {reference.split('/', 1)[0]}", response)
        stored = _object_or_fail(response, "update")
        version = _version_from_etag(response.headers.get("etag")) or version_id_of(stored)
        if not version:
            raise ClinicianError("update answered without a version")
        return stored, version


def _object_or_fail(response: httpx.Response, operation: str) -> JSONObject:
    body = loads_object(response.content)
    if body is None:
        raise ClinicianError(f"{operation} answered without JSON", status_code=response.status_code)
    return body


def _version_from_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    value = etag.removeprefix("W/").strip('"')
    return value or None


def _path_of(reference: str) -> str:
    parts = [p for p in reference.split("/") if p]
    if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
        raise ValueError("expected Type/id or Type/id/_history/version")
    return "/".join(parts)


async def login(
    base_url: str,
    user: str = "clinician-alice",
    *,
    client_id: str = CLINICIAN_APP_CLIENT_ID,
    redirect_uri: str = CLINICIAN_APP_REDIRECT,
    request_timeout: float = 10.0,
) -> ClinicianSession:
    """Sign ``user`` in (authorization code + PKCE S256) and return the session."""
    root = base_url.rstrip("/") + "/"
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    async with httpx.AsyncClient(
        base_url=root, timeout=request_timeout, follow_redirects=False, trust_env=False
    ) as http:
        answer = await http.post(
            "oauth2/authorize",
            data={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid",
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "user": user,
            },
        )
        location: str = answer.headers.get("location") or ""
        if answer.status_code != 302 or not location.startswith(redirect_uri):
            raise ClinicianLoginError(
                f"authorize did not redirect to the app (HTTP {answer.status_code})",
                status_code=answer.status_code,
            )
        query = httpx.URL(location).params
        if query.get("state") != state:
            raise ClinicianLoginError("authorize returned a different state")
        code = query.get("code")
        if not code:
            raise ClinicianLoginError("authorize returned no code")
        answer = await http.post(
            "oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "client_id": client_id,
                "redirect_uri": redirect_uri,
            },
        )
        body = loads_object(answer.content) or {}
        token = get_str(body, "access_token")
        if answer.status_code != 200 or not token:
            error = get_str(body, "error") or "no access token"
            raise ClinicianLoginError(
                f"token exchange failed: HTTP {answer.status_code} {error}",
                status_code=answer.status_code,
            )
    claims = jwt_claims(token)
    profile = get_object(body, "profile")
    practitioner = (get_str(profile, "reference") if profile else None) or get_str(
        claims, "profile"
    )
    if not practitioner or not practitioner.startswith("Practitioner/"):
        raise ClinicianLoginError("the signed-in profile is not a Practitioner")
    client = httpx.AsyncClient(
        base_url=root + "fhir/R4/",
        headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON},
        timeout=request_timeout,
        follow_redirects=False,
        trust_env=False,
    )
    session = ClinicianSession(
        base_url=root,
        user=user,
        practitioner=practitioner,
        client=client,
        access_token=token,
        claims=claims,
        display=get_str(profile, "display") if profile else None,
    )
    if session.display is None:
        try:
            session.display = human_name(await session.read(practitioner))
        except ClinicianError:
            session.display = None
    return session


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
