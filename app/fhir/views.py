"""Small typed read-only views over FHIR R4 JSON, for the fields the bots and the pipeline use.

Views read parsed JSON (as Medplum sends it) without building full ``fhir.resources`` models,
which cost about 0.3 ms a resource; they never mutate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from app.fhir.resource_json import (
    JSONObject,
    get_array,
    get_number,
    get_object,
    get_objects,
    get_str,
)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


def parse_datetime(value: str | None) -> datetime | None:
    """FHIR dateTime/instant -> aware datetime. Dates and partial dates (``2020``,
    ``2020-05``) become midnight UTC of their first day; a time without zone is taken as UTC."""
    if not value:
        return None
    try:
        if len(value) == 4:
            return datetime(int(value), 1, 1, tzinfo=UTC)
        if len(value) == 7:
            return datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_date(value: str | None) -> date | None:
    """A full FHIR date only (partial birth dates cannot give an exact age)."""
    if not value or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str  # the UCUM code when given, else the human unit
    # ``Quantity.comparator`` (<, <=, >=, >, ad): when set, ``value`` is a bound, not a
    # measured value, and no exact metric may be computed from it.
    comparator: str | None = None


def codings(concept: JSONObject | None) -> list[Coding]:
    if concept is None:
        return []
    return [
        Coding(get_str(c, "system"), get_str(c, "code"), get_str(c, "display"))
        for c in get_objects(concept, "coding")
    ]


def has_code(concept: JSONObject | None, system: str, code: str) -> bool:
    return any(c.system == system and c.code == code for c in codings(concept))


def quantity(obj: JSONObject | None) -> Quantity | None:
    if obj is None:
        return None
    value = get_number(obj, "value")
    unit = get_str(obj, "code") or get_str(obj, "unit")
    if value is None or unit is None:
        return None
    return Quantity(value=value, unit=unit, comparator=get_str(obj, "comparator"))


@dataclass(frozen=True, slots=True)
class ResourceView:
    json: JSONObject

    @property
    def resource_type(self) -> str:
        return get_str(self.json, "resourceType") or ""

    @property
    def id(self) -> str:
        return get_str(self.json, "id") or ""

    @property
    def version_id(self) -> str:
        meta = get_object(self.json, "meta")
        return (get_str(meta, "versionId") if meta else None) or ""

    @property
    def last_updated(self) -> datetime | None:
        meta = get_object(self.json, "meta")
        return parse_datetime(get_str(meta, "lastUpdated") if meta else None)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def versioned_reference(self) -> str:
        return f"{self.reference}/_history/{self.version_id}"

    @property
    def author(self) -> str | None:
        meta = get_object(self.json, "meta")
        author = get_object(meta, "author") if meta else None
        return get_str(author, "reference") if author else None

    @property
    def on_behalf_of(self) -> str | None:
        """``meta.onBehalfOf``: set by Medplum when an admin client acted with
        ``X-Medplum-On-Behalf-Of`` (``meta.author`` stays the real caller)."""
        meta = get_object(self.json, "meta")
        behalf = get_object(meta, "onBehalfOf") if meta else None
        return get_str(behalf, "reference") if behalf else None

    @property
    def status(self) -> str | None:
        return get_str(self.json, "status")

    def reference_of(self, key: str) -> str | None:
        ref = get_object(self.json, key)
        return get_str(ref, "reference") if ref else None

    def identifier_value(self, system: str) -> str | None:
        for identifier in get_objects(self.json, "identifier"):
            if get_str(identifier, "system") == system:
                return get_str(identifier, "value")
        return None

    def tagged(self, system: str, code: str) -> bool:
        meta = get_object(self.json, "meta")
        tags = get_objects(meta, "tag") if meta else []
        return any(get_str(t, "system") == system and get_str(t, "code") == code for t in tags)


@dataclass(frozen=True, slots=True)
class ObservationComponent:
    code: JSONObject | None
    value: Quantity | None

    def has_code(self, system: str, code: str) -> bool:
        return has_code(self.code, system, code)


@dataclass(frozen=True, slots=True)
class ObservationView(ResourceView):
    @property
    def code(self) -> JSONObject | None:
        return get_object(self.json, "code")

    def has_code(self, system: str, code: str) -> bool:
        return has_code(self.code, system, code)

    def has_loinc(self, *codes: str) -> bool:
        return any(self.has_code(LOINC, code) for code in codes)

    @property
    def subject(self) -> str | None:
        return self.reference_of("subject")

    @property
    def effective(self) -> datetime | None:
        direct = get_str(self.json, "effectiveDateTime") or get_str(self.json, "effectiveInstant")
        if direct:
            return parse_datetime(direct)
        period = get_object(self.json, "effectivePeriod")
        return parse_datetime(get_str(period, "start") if period else None)

    @property
    def value_quantity(self) -> Quantity | None:
        return quantity(get_object(self.json, "valueQuantity"))

    @property
    def components(self) -> list[ObservationComponent]:
        return [
            ObservationComponent(get_object(c, "code"), quantity(get_object(c, "valueQuantity")))
            for c in get_objects(self.json, "component")
        ]

    @property
    def usable(self) -> bool:
        """Final, amended or corrected results count as evidence; preliminary, cancelled and
        entered-in-error ones do not."""
        return self.status in ("final", "amended", "corrected")


@dataclass(frozen=True, slots=True)
class PatientView(ResourceView):
    @property
    def birth_date(self) -> date | None:
        return parse_date(get_str(self.json, "birthDate"))

    @property
    def gender(self) -> str | None:
        return get_str(self.json, "gender")

    @property
    def deceased(self) -> bool:
        """``deceasedBoolean`` true, or any ``deceasedDateTime``."""
        return self.json.get("deceasedBoolean") is True or bool(
            get_str(self.json, "deceasedDateTime")
        )


@dataclass(frozen=True, slots=True)
class ConditionView(ResourceView):
    def has_code(self, system: str, code: str) -> bool:
        return has_code(get_object(self.json, "code"), system, code)

    @property
    def active(self) -> bool:
        clinical = get_object(self.json, "clinicalStatus")
        verification = get_object(self.json, "verificationStatus")
        if verification and any(
            c.code in ("refuted", "entered-in-error") for c in codings(verification)
        ):
            return False
        return clinical is None or any(
            c.code in ("active", "recurrence", "relapse") for c in codings(clinical)
        )

    @property
    def codes(self) -> list[Coding]:
        return codings(get_object(self.json, "code"))


@dataclass(frozen=True, slots=True)
class TaskView(ResourceView):
    @property
    def focus(self) -> str | None:
        return self.reference_of("focus")

    @property
    def status_reason(self) -> str | None:
        reason = get_object(self.json, "statusReason")
        return get_str(reason, "text") if reason else None

    @property
    def owner(self) -> str | None:
        return self.reference_of("owner")

    @property
    def patient(self) -> str | None:
        """``Task.for`` when it is a Patient."""
        ref = self.reference_of("for")
        return ref if ref and ref.startswith("Patient/") else None

    @property
    def status_reason_code(self) -> str | None:
        reason = get_object(self.json, "statusReason")
        codings = get_objects(reason, "coding") if reason else []
        return get_str(codings[0], "code") if codings else None

    @property
    def input_references(self) -> list[str]:
        refs: list[str] = []
        for item in get_objects(self.json, "input"):
            ref = get_object(item, "valueReference")
            value = get_str(ref, "reference") if ref else None
            if value:
                refs.append(value)
        return refs


__all__ = [
    "LOINC",
    "SNOMED",
    "UCUM",
    "Coding",
    "ConditionView",
    "ObservationView",
    "PatientView",
    "Quantity",
    "ResourceView",
    "TaskView",
    "codings",
    "get_array",
    "has_code",
    "parse_date",
    "parse_datetime",
]
