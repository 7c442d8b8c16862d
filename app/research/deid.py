"""De-identification: the policy enforcement point between Medplum and the research zone.

A type-aware allow-list (``data/deid-policy.json``) walks each resource's structure and keeps
only the elements it lists, each with an action:

* ``keep``: copied as it is (codes, values, units, statuses);
* ``resource_id`` / ``reference``: replaced by an HMAC-SHA256 pseudonym under the current key;
* ``shift_date``: moved by the patient's date shift (one per pseudonymous patient, derived from
  the key, so intervals within a patient are preserved and shifts differ between patients);
* ``birth_year``: shifted, then truncated to the year; a patient older than the age ceiling
  (89, HIPAA Safe Harbor) is collapsed into one "90 or older" birth year;
* ``truncate_year``: truncated to the year;
* ``zip3``: the first three digits of a ZIP code, ``000`` for the restricted ZIP3 areas
  (``data/restricted-zip3.json``, versioned).

Everything not listed is dropped: names, addresses (but ZIP3 and state), telecom, identifiers,
narrative text, notes, ``CodeableConcept.text`` and ``display``, extensions. A
``modifierExtension`` the policy does not allow drops the whole resource, since it may change the
meaning of what would be kept. Every output resource carries ``meta.security`` labels saying it
was pseudonymised and redacted.

The same :class:`Deidentifier` protocol would front Google's Cloud Healthcare API
``datasets.deidentify`` (DLP underneath) for deployments that prefer it: see docs/RESEARCH.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Protocol, cast

from app.fhir.resource_json import JSONObject, JSONValue
from app.research.keys import PseudonymKey

DATA_DIR = Path(__file__).with_name("data")
POLICY_FILE = DATA_DIR / "deid-policy.json"
ZIP3_FILE = DATA_DIR / "restricted-zip3.json"

SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SECURITY_LABELS: tuple[JSONObject, ...] = (
    {"system": SECURITY_SYSTEM, "code": "PSEUDED", "display": "pseudonymized"},
    {"system": SECURITY_SYSTEM, "code": "REDACTED", "display": "redacted"},
)
AGE_90_OR_OLDER_URL = "https://fhir.starvit.health/StructureDefinition/age-90-or-older"

_RELATIVE_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{0,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/.*)?$")
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?P<time>T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_ZIP = re.compile(r"^(\d{3})\d{2}(?:-?\d{4})?$")


class PolicyError(ValueError):
    """The policy file is malformed."""


@dataclass(frozen=True, slots=True)
class Dropped:
    """A resource left out of the export, with a PHI-free reason."""

    resource_type: str
    reason: str


@dataclass(frozen=True, slots=True)
class Deidentified:
    resource: JSONObject
    resource_type: str
    patient: str  # the pseudonymous patient id
    shift_days: int


type Outcome = Deidentified | Dropped


class Deidentifier(Protocol):
    """What the export needs from a de-identification engine."""

    @property
    def config_hash(self) -> str: ...

    @property
    def key_version(self) -> str: ...

    def deidentify(self, resource: Mapping[str, JSONValue]) -> Outcome: ...


@dataclass(frozen=True)
class Policy:
    document: JSONObject
    restricted_zip3: frozenset[str]
    zip3_version: str
    zip3_replacement: str

    @property
    def version(self) -> str:
        return str(self.document.get("version"))

    @property
    def shift_range(self) -> int:
        value = self.document.get("date_shift_days")
        return value if isinstance(value, int) and value > 0 else 365

    @property
    def age_ceiling(self) -> int:
        value = self.document.get("age_ceiling")
        return value if isinstance(value, int) else 89

    @property
    def resource_types(self) -> tuple[str, ...]:
        resources = self.document.get("resources")
        return tuple(sorted(resources)) if isinstance(resources, dict) else ()

    @cached_property
    def allowed_modifier_extensions(self) -> frozenset[str]:
        urls = self.document.get("allowed_modifier_extensions")
        return (
            frozenset(u for u in urls if isinstance(u, str))
            if isinstance(urls, list)
            else frozenset()
        )

    @cached_property
    def config_hash(self) -> str:
        """SHA-256 of the policy and the restricted ZIP3 list, canonical JSON: recorded with every
        export so that two exports can be compared."""
        canonical = json.dumps(
            {
                "policy": self.document,
                "zip3": sorted(self.restricted_zip3),
                "zip3_version": self.zip3_version,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def rule_for(self, resource_type: str) -> JSONObject | None:
        resources = self.document.get("resources")
        if not isinstance(resources, dict):
            return None
        rule = resources.get(resource_type)
        return rule if isinstance(rule, dict) else None

    def named_type(self, name: str) -> JSONObject:
        types = self.document.get("types")
        rule = types.get(name) if isinstance(types, dict) else None
        if not isinstance(rule, dict):
            raise PolicyError(f"unknown type {name!r} in the policy")
        return rule


def load_policy(policy_file: Path = POLICY_FILE, zip3_file: Path = ZIP3_FILE) -> Policy:
    try:
        document = json.loads(policy_file.read_text(encoding="utf-8"))
        zips = json.loads(zip3_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PolicyError(f"cannot read the de-identification policy: {error}") from None
    if not isinstance(document, dict) or not isinstance(zips, dict):
        raise PolicyError("the policy and the ZIP3 list must be JSON objects")
    codes = cast("dict[str, object]", zips).get("zip3")
    if not isinstance(codes, list):
        raise PolicyError("the restricted ZIP3 list needs 'zip3'")
    zip_doc = cast("dict[str, object]", zips)
    return Policy(
        document=cast("JSONObject", document),
        restricted_zip3=frozenset(str(c) for c in cast("list[object]", codes)),
        zip3_version=str(zip_doc.get("version")),
        zip3_replacement=str(zip_doc.get("replacement", "000")),
    )


class Pseudonyms:
    """HMAC-SHA256 pseudonyms and date shifts under one key."""

    def __init__(self, key: PseudonymKey, shift_range: int) -> None:
        self._key = key
        self._range = shift_range

    @property
    def key_version(self) -> str:
        return self._key.version

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._key.secret, message.encode(), hashlib.sha256).digest()

    def pseudonym(self, resource_type: str, resource_id: str) -> str:
        return self._mac(f"id\x00{resource_type}/{resource_id}").hex()

    def shift_days(self, patient_pseudonym: str) -> int:
        """In [-range, -1] or [1, range]: never zero, so no date is ever published unshifted."""
        n = int.from_bytes(self._mac(f"date-shift\x00{patient_pseudonym}")[:8], "big")
        days = n % (2 * self._range) - self._range
        return days + 1 if days >= 0 else days


def shift_date(value: str, days: int) -> str | None:
    """A FHIR date, dateTime or instant moved by ``days``, at its own precision (a year or a
    month is moved through its middle and cut back to the same precision)."""
    match = _DATE.match(value)
    if match is None:
        return None
    year, month, day, time = match.group("y", "m", "d", "time")
    try:
        if day is not None:
            moved = date(int(year), int(month), int(day)) + timedelta(days=days)
            return moved.isoformat() + (time or "")
        if month is not None:
            moved = date(int(year), int(month), 15) + timedelta(days=days)
            return moved.isoformat()[:7]
        moved = date(int(year), 7, 1) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return str(moved.year)


def zip3(value: str, policy: Policy) -> str | None:
    match = _ZIP.match(value.strip())
    if match is None:
        return None
    prefix = match.group(1)
    return policy.zip3_replacement if prefix in policy.restricted_zip3 else prefix


def has_disallowed_modifier(value: JSONValue, allowed: frozenset[str]) -> bool:
    if isinstance(value, list):
        return any(has_disallowed_modifier(v, allowed) for v in value)
    if not isinstance(value, dict):
        return False
    modifiers = value.get("modifierExtension")
    if isinstance(modifiers, list) and any(
        not isinstance(m, dict) or m.get("url") not in allowed for m in modifiers
    ):
        return True
    return any(has_disallowed_modifier(v, allowed) for v in value.values())


class _DropResource(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Context:
    shift: int
    birth: date | None = None
    flags: set[str] = field(default_factory=set[str])


class AllowListDeidentifier:
    """The service's own de-identification engine (see the module docs)."""

    def __init__(self, policy: Policy, key: PseudonymKey, *, today: date | None = None) -> None:
        self._policy = policy
        self._names = Pseudonyms(key, policy.shift_range)
        self._today = today or datetime.now(UTC).date()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def config_hash(self) -> str:
        return self._policy.config_hash

    @property
    def key_version(self) -> str:
        return self._names.key_version

    @property
    def pseudonyms(self) -> Pseudonyms:
        return self._names

    def patient_of(self, resource: Mapping[str, JSONValue]) -> str | None:
        """The real patient id a resource belongs to (only inside this process, never kept)."""
        if resource.get("resourceType") == "Patient":
            rid = resource.get("id")
            return rid if isinstance(rid, str) else None
        for key in ("subject", "patient"):
            ref = resource.get(key)
            if isinstance(ref, dict):
                text = ref.get("reference")
                if isinstance(text, str) and (m := _RELATIVE_REFERENCE.match(text)):
                    return m.group(2) if m.group(1) == "Patient" else None
        return None

    def deidentify(self, resource: Mapping[str, JSONValue]) -> Outcome:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return Dropped("unknown", "no resourceType")
        rule = self._policy.rule_for(resource_type)
        if rule is None:
            return Dropped(resource_type, "type not in the allow-list")
        if has_disallowed_modifier(dict(resource), self._policy.allowed_modifier_extensions):
            return Dropped(resource_type, "unknown modifierExtension")
        patient_id = self.patient_of(resource)
        if patient_id is None:
            return Dropped(resource_type, "no patient reference")
        patient = self._names.pseudonym("Patient", patient_id)
        context = _Context(shift=self._names.shift_days(patient))
        if resource_type == "Patient":
            birth = resource.get("birthDate")
            if isinstance(birth, str) and (m := _DATE.match(birth)):
                context.birth = date(
                    int(m.group("y")), int(m.group("m") or 1), int(m.group("d") or 1)
                )
        try:
            out = self._element(dict(resource), rule, context, resource_type)
        except _DropResource as drop:
            return Dropped(resource_type, drop.reason)
        if not isinstance(out, dict) or "id" not in out:
            return Dropped(resource_type, "no id")
        result: JSONObject = {"resourceType": resource_type, **out}
        meta = result.get("meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["security"] = [dict(label) for label in SECURITY_LABELS]
        result["meta"] = meta
        if "age-90-or-older" in context.flags:
            result["extension"] = [{"url": AGE_90_OR_OLDER_URL, "valueBoolean": True}]
        return Deidentified(result, resource_type, patient, context.shift)

    # --- the walk ------------------------------------------------------------------------------

    def _resolve(self, rule: JSONObject) -> JSONObject:
        named = rule.get("$type")
        if not isinstance(named, str):
            return rule
        merged = dict(self._resolve(self._policy.named_type(named)))
        merged.update({k: v for k, v in rule.items() if k != "$type"})
        return merged

    def _element(
        self, value: JSONValue, rule: JSONValue, context: _Context, path: str
    ) -> JSONValue:
        if isinstance(value, list):
            items = [self._element(v, rule, context, path) for v in value]
            survivors: list[JSONValue] = [i for i in items if i is not None]
            return survivors or None
        if isinstance(rule, str):
            return self._action(rule, value, context, path)
        if not isinstance(rule, dict) or not isinstance(value, dict):
            return None
        rule = self._resolve(rule)
        where = rule.get("$where")
        if isinstance(where, dict) and any(value.get(k) != v for k, v in where.items()):
            return None
        out: JSONObject = {}
        for key, sub in rule.items():
            if key.startswith("$") or key not in value:
                continue
            kept = self._element(value[key], sub, context, f"{path}.{key}")
            if kept is not None:
                out[key] = kept
        return out or None

    def _action(self, action: str, value: JSONValue, context: _Context, path: str) -> JSONValue:
        if isinstance(value, dict | list):
            return None  # an action applies to primitives only; a complex value is not listed
        match action:
            case "keep":
                return value
            case "resource_id":
                resource_type = path.split(".", 1)[0]
                return (
                    self._names.pseudonym(resource_type, value) if isinstance(value, str) else None
                )
            case "reference":
                if not isinstance(value, str) or not (m := _RELATIVE_REFERENCE.match(value)):
                    return None  # contained, absolute or conditional references are not kept
                return f"{m.group(1)}/{self._names.pseudonym(m.group(1), m.group(2))}"
            case "shift_date":
                return shift_date(value, context.shift) if isinstance(value, str) else None
            case "truncate_year":
                return value[:4] if isinstance(value, str) and _DATE.match(value) else None
            case "birth_year":
                return self._birth_year(value, context)
            case "zip3":
                return zip3(value, self._policy) if isinstance(value, str) else None
            case _:
                raise PolicyError(f"unknown action {action!r} at {path}")

    def _birth_year(self, value: JSONValue, context: _Context) -> JSONValue:
        if not isinstance(value, str) or context.birth is None:
            return None
        born = context.birth
        today = self._today
        age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        if age > self._policy.age_ceiling:
            context.flags.add("age-90-or-older")
            return str(today.year - self._policy.age_ceiling - 1)
        shifted = shift_date(value, context.shift)
        return shifted[:4] if shifted else None
