"""The checks of a posted bundle that need nothing but the bundle, the partner's registry entry
and the clock (pure: no I/O). What needs Medplum (references to existing resources, Medplum's
own ``$validate``) is done by the service with the partner's token.

FHIR R4 structure is checked with the ``fhir.resources`` R4B models (the library has no R4
package): for the types partners post they accept what R4 accepts (every resource of the shipped
Synthea R4 data passes) and refuse unknown elements and wrong types. They do not check required
bindings (``status: "bogus"`` passes), so Medplum's ``$validate`` runs on every entry after them.

Every problem names its entry (index, the partner's ``fullUrl``), the element path and a stable
code; never a value from the resource. A problem is either *forbidden* (403: the partner may not
do this, whatever the data) or *invalid* (422: the data is wrong).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from typing import Literal, Protocol, cast

import orjson
import ucumvert  # pyright: ignore[reportMissingTypeStubs]
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from app.fhir.resource_json import (
    FHIR_ID,
    RESOURCE_TYPE,
    JSONObject,
    JSONValue,
    get_array,
    get_object,
    get_objects,
    get_str,
)
from app.partners.registry import NEVER_WRITABLE, Interaction, Partner

type Severity = Literal["forbidden", "invalid"]

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MEDPLUM_CONDITIONAL_TRANSACTION_CAP = 8

# Elements Medplum sets itself: a partner setting them would forge who wrote a resource, move it
# to another project or change its access labels.
FORBIDDEN_META = ("author", "project", "security", "account", "compartment", "onBehalfOf")

# Clinical-time elements that cannot lie in the future (a measurement not yet taken, a birth not
# yet happened). Planned times (Period.end of a plan, an expiry date) are not checked.
_PAST_TIMES = (
    "effectiveDateTime",
    "effectiveInstant",
    "issued",
    "recordedDate",
    "onsetDateTime",
    "performedDateTime",
    "birthDate",
    "deceasedDateTime",
    "authoredOn",
    "occurrenceDateTime",
    "recorded",
    "assertedDate",
    "dateAsserted",
)
_PAST_PERIODS = ("effectivePeriod", "performedPeriod")

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_URN = ("urn:uuid:", "urn:oid:")
_LITERAL = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]{0,63})/(?P<id>[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]{0,63}\?.+$")


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """What is wrong with one entry (``index`` -1: the bundle itself)."""

    index: int
    full_url: str | None
    path: str
    code: str
    severity: Severity

    def as_detail(self) -> dict[str, object]:
        detail: dict[str, object] = {"index": self.index, "path": self.path, "code": self.code}
        if self.full_url is not None:
            detail["fullUrl"] = self.full_url
        return detail


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    """An entry of a posted bundle, as the service will forward it."""

    index: int
    full_url: str | None
    resource_type: str
    interaction: Interaction
    resource: JSONObject
    # PUT: the request URL (``Type/id`` or ``Type?search``); POST: the partner's ifNoneExist.
    url: str
    if_none_exist: str | None = None


@dataclass(slots=True)
class BundleCheck:
    """The outcome of the pure checks."""

    bundle_type: str | None
    entries: list[ParsedEntry] = field(default_factory=list[ParsedEntry])
    problems: list[EntryProblem] = field(default_factory=list[EntryProblem])
    # Type/id references to resources that already exist: the service checks they are the
    # partner's tenant's. Conditional references (Type?search) the service resolves.
    literal_references: set[str] = field(default_factory=set[str])
    conditional_references: set[str] = field(default_factory=set[str])

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(entry.resource_type for entry in self.entries))

    @property
    def forbidden(self) -> list[EntryProblem]:
        return [p for p in self.problems if p.severity == "forbidden"]

    @property
    def invalid(self) -> list[EntryProblem]:
        return [p for p in self.problems if p.severity == "invalid"]


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """What the checks need from the settings."""

    clinician_role_codes: frozenset[tuple[str, str]]
    future_tolerance: timedelta = timedelta(minutes=5)


class _UcumGrammar(Protocol):
    def get_ucum_parser(self) -> object: ...
    def parse_ucum(self, ucum_code: str, parser: object, /) -> object: ...


@cache
def _ucum_parser() -> object:
    return cast("_UcumGrammar", ucumvert).get_ucum_parser()


@lru_cache(maxsize=1024)
def ucum_valid(code: str) -> bool:
    """Whether ``code`` is a valid UCUM expression, by UCUM's grammar and atom tables (ucumvert's
    parser). Validity, not convertibility: ``[pH]`` and an annotation alone (``{score}``, which
    UCUM reads as 1) are valid though no unit library converts them."""
    try:
        cast("_UcumGrammar", ucumvert).parse_ucum(code, _ucum_parser())
    except Exception:  # ucumvert raises its own error, or lark's, for anything not UCUM
        return False
    return True


@cache
def vital_sign_units() -> dict[str, frozenset[str]]:
    """LOINC code -> UCUM codes the FHIR vital-sign profiles allow (extracted from Medplum's
    definitions by the development tools; a unit test checks it against them)."""
    data = resources.files("app.partners").joinpath("vital_sign_units.json").read_bytes()
    parsed: dict[str, list[str]] = orjson.loads(data)
    return {code: frozenset(units) for code, units in parsed.items()}


def check_bundle(
    bundle: JSONValue, partner: Partner, policy: CheckPolicy, *, now: datetime
) -> BundleCheck:
    """Every check that needs no I/O, on a parsed JSON body."""
    if not isinstance(bundle, dict) or get_str(bundle, "resourceType") != "Bundle":
        return BundleCheck(None, problems=[_bundle_problem("Bundle", "not_a_bundle")])
    bundle_type = get_str(bundle, "type")
    check = BundleCheck(bundle_type)
    if bundle_type not in ("batch", "transaction"):
        check.problems.append(_bundle_problem("Bundle.type", "bundle_type_unsupported"))
        return check
    raw_entries = bundle.get("entry")
    if not isinstance(raw_entries, list) or not raw_entries:
        check.problems.append(_bundle_problem("Bundle.entry", "bundle_empty"))
        return check
    if len(raw_entries) > partner.limits.max_entries:
        check.problems.append(_bundle_problem("Bundle.entry", "too_many_entries"))
        return check
    full_urls = Counter(
        url
        for item in raw_entries
        if isinstance(item, dict) and (url := get_str(item, "fullUrl")) is not None
    )
    local_urls = set(full_urls)
    for index, item in enumerate(raw_entries):
        _check_entry(check, index, item, partner, policy, now, local_urls)
        if isinstance(item, dict) and (url := get_str(item, "fullUrl")) and full_urls[url] > 1:
            check.problems.append(
                EntryProblem(index, url, "fullUrl", "full_url_duplicate", "invalid")
            )
    if (
        bundle_type == "transaction"
        and len(check.entries) > MEDPLUM_CONDITIONAL_TRANSACTION_CAP
        and any(entry.interaction == "create" for entry in check.entries)
    ):
        # Every create is forwarded conditional (so a retried request never writes twice), and
        # Medplum runs no transaction with a conditional entry and more than eight entries.
        check.problems.append(_bundle_problem("Bundle.entry", "transaction_too_large"))
    return check


def _bundle_problem(path: str, code: str) -> EntryProblem:
    return EntryProblem(-1, None, path, code, "invalid")


def _check_entry(  # noqa: PLR0917 - one private call site
    check: BundleCheck,
    index: int,
    item: JSONValue,
    partner: Partner,
    policy: CheckPolicy,
    now: datetime,
    local_urls: set[str],
) -> None:
    if not isinstance(item, dict):
        check.problems.append(
            EntryProblem(index, None, "Bundle.entry", "entry_malformed", "invalid")
        )
        return
    full_url = get_str(item, "fullUrl")

    def problem(path: str, code: str, severity: Severity = "invalid") -> None:
        check.problems.append(EntryProblem(index, full_url, path, code, severity))

    resource = get_object(item, "resource")
    request = get_object(item, "request")
    if resource is None or request is None:
        problem("Bundle.entry", "entry_malformed")
        return
    resource_type = get_str(resource, "resourceType")
    if resource_type is None or not RESOURCE_TYPE.match(resource_type):
        problem("Bundle.entry.resource.resourceType", "resource_type_missing")
        return
    method = (get_str(request, "method") or "").upper()
    url = get_str(request, "url") or ""
    interaction: Interaction
    if method == "POST":
        interaction = "create"
        if url.rstrip("/") != resource_type:
            problem("Bundle.entry.request.url", "request_url_mismatch")
            return
    elif method == "PUT":
        interaction = "update"
        path_part = url.split("?", 1)[0]
        if path_part != resource_type and not (
            path_part.startswith(resource_type + "/")
            and FHIR_ID.match(path_part[len(resource_type) + 1 :])
        ):
            problem("Bundle.entry.request.url", "request_url_mismatch")
            return
        if "?" not in url and get_str(resource, "id") != path_part.split("/", 1)[-1]:
            problem(f"{resource_type}.id", "request_url_mismatch")
            return
    else:
        problem("Bundle.entry.request.method", "interaction_unsupported")
        return

    # Authorisation, object by object and property by property (403).
    if resource_type in NEVER_WRITABLE:
        problem(resource_type, "resource_type_forbidden", "forbidden")
        return
    if resource_type not in partner.resources:
        problem(resource_type, "resource_type_not_allowed", "forbidden")
        return
    if not partner.allows(resource_type, interaction):
        problem(resource_type, "interaction_not_allowed", "forbidden")
        return
    meta = get_object(resource, "meta")
    if meta is not None:
        for name in FORBIDDEN_META:
            if name in meta:
                problem(f"{resource_type}.meta.{name}", "element_forbidden", "forbidden")
    if resource_type == "PractitionerRole" and _grants_clinician_role(resource, policy):
        problem("PractitionerRole.code", "clinician_role_forbidden", "forbidden")
    for contained in get_objects(resource, "contained"):
        contained_type = get_str(contained, "resourceType") or "?"
        if contained_type in NEVER_WRITABLE:
            problem(f"{resource_type}.contained", "resource_type_forbidden", "forbidden")
        elif contained_type == "PractitionerRole" and _grants_clinician_role(contained, policy):
            problem(f"{resource_type}.contained", "clinician_role_forbidden", "forbidden")

    # References: inside the bundle, or to the partner's tenant (checked by the service).
    for path, reference in _references(resource, resource_type):
        if reference.startswith("#"):
            continue
        if reference.startswith(_URN):
            if reference not in local_urls:
                problem(path, "reference_unresolved")
        elif _CONDITIONAL.match(reference):
            check.conditional_references.add(reference)
        elif (match := _LITERAL.match(reference)) is not None:
            check.literal_references.add(f"{match.group('type')}/{match.group('id')}")
        else:
            # Absolute URLs (another server) and anything else point outside the tenant.
            problem(path, "reference_outside_tenant", "forbidden")

    # Structure (422): FHIR R4 through the fhir.resources models.
    for path, code in _structure_problems(resource, resource_type):
        problem(path, code)
    for path, code in _unit_problems(resource, resource_type):
        problem(path, code)
    for path in _future_dates(resource, resource_type, now + policy.future_tolerance):
        problem(path, "date_in_future")

    check.entries.append(
        ParsedEntry(
            index=index,
            full_url=full_url,
            resource_type=resource_type,
            interaction=interaction,
            resource=resource,
            url=url,
            if_none_exist=get_str(request, "ifNoneExist"),
        )
    )


def _grants_clinician_role(resource: Mapping[str, JSONValue], policy: CheckPolicy) -> bool:
    for concept in get_objects(resource, "code"):
        for coding in get_objects(concept, "coding"):
            system, code = get_str(coding, "system"), get_str(coding, "code")
            if (
                system is not None
                and code is not None
                and (system, code) in policy.clinician_role_codes
            ):
                return True
    return False


def _references(value: JSONValue, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield f"{path}.reference", item
            elif key != "contained":
                yield from _references(item, f"{path}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _references(item, f"{path}[{position}]")


def _structure_problems(resource: JSONObject, resource_type: str) -> list[tuple[str, str]]:
    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return [(resource_type, "resource_type_unknown")]
    except Exception:  # fhir.resources raises its own errors for unknown names
        return [(resource_type, "resource_type_unknown")]
    try:
        model.model_validate(resource)
    except ValidationError as error:
        problems: list[tuple[str, str]] = []
        for item in error.errors()[:20]:
            path = resource_type + "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"]
            )
            problems.append((path.replace(".__root__", ""), "fhir_invalid"))
        return problems
    return []


def _loinc_codes(concept: Mapping[str, JSONValue] | None) -> list[str]:
    if concept is None:
        return []
    return [
        code
        for coding in get_objects(concept, "coding")
        if get_str(coding, "system") == LOINC and (code := get_str(coding, "code")) is not None
    ]


def _quantity_problems(
    quantity: Mapping[str, JSONValue], loinc: Sequence[str], path: str
) -> list[tuple[str, str]]:
    table = vital_sign_units()
    allowed = next((table[code] for code in loinc if code in table), None)
    system, code = get_str(quantity, "system"), get_str(quantity, "code")
    if code is None:
        return [(f"{path}.code", "unit_missing")] if allowed is not None else []
    if system != UCUM:
        return [(f"{path}.system", "unit_system_not_ucum")] if allowed is not None else []
    if not ucum_valid(code):
        return [(f"{path}.code", "unit_invalid")]
    if allowed is not None and code not in allowed:
        return [(f"{path}.code", "unit_wrong_for_code")]
    return []


def _unit_problems(resource: JSONObject, resource_type: str) -> list[tuple[str, str]]:
    if resource_type != "Observation":
        return []
    problems: list[tuple[str, str]] = []
    quantity = get_object(resource, "valueQuantity")
    if quantity is not None:
        loinc = _loinc_codes(get_object(resource, "code"))
        problems.extend(_quantity_problems(quantity, loinc, "Observation.valueQuantity"))
    for position, component in enumerate(get_objects(resource, "component")):
        quantity = get_object(component, "valueQuantity")
        if quantity is not None:
            loinc = _loinc_codes(get_object(component, "code"))
            problems.extend(
                _quantity_problems(
                    quantity, loinc, f"Observation.component[{position}].valueQuantity"
                )
            )
    return problems


def parse_fhir_time(value: str) -> datetime | None:
    """The earliest instant a FHIR date, dateTime or instant can mean (a date without a zone is
    read as UTC); None when it is not one."""
    match = _DATE.match(value)
    if match is None:
        return None
    parts = match.groupdict()
    try:
        moment = datetime(
            int(parts["y"]),
            int(parts["m"] or 1),
            int(parts["d"] or 1),
            int(parts["H"] or 0),
            int(parts["M"] or 0),
            int(parts["S"] or 0),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    zone = parts["tz"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    return moment


def _future_dates(resource: JSONObject, resource_type: str, latest: datetime) -> list[str]:
    found: list[str] = []
    for name in _PAST_TIMES:
        value = get_str(resource, name)
        if value is not None and (moment := parse_fhir_time(value)) is not None and moment > latest:
            found.append(f"{resource_type}.{name}")
    for name in _PAST_PERIODS:
        period = get_object(resource, name)
        start = get_str(period, "start") if period is not None else None
        if start is not None and (moment := parse_fhir_time(start)) is not None and moment > latest:
            found.append(f"{resource_type}.{name}.start")
    return found


def first_identifier(resource: Mapping[str, JSONValue]) -> tuple[str, str] | None:
    """The resource's first identifier with both a system and a value."""
    for identifier in get_objects(resource, "identifier"):
        system, value = get_str(identifier, "system"), get_str(identifier, "value")
        if system and value and "|" not in system:
            return system, value
    return None


def has_identifier_array(resource: Mapping[str, JSONValue]) -> bool:
    return bool(get_array(resource, "identifier"))
