"""Condition value sets shipped with the service (``data/condition_value_sets.json``, pure).

Each value set names its SNOMED CT root, the descendant concepts the service recognises and
the ICD-10 categories matched as prefixes (``E11`` matches ``E11.9``). The file states its
version and source; docs/CLINICAL_LOGIC.md "Chart awareness" lists what suppresses what.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SNOMED_SYSTEM = "http://snomed.info/sct"
# ICD-10 (WHO) and ICD-10-CM code systems as FHIR names them.
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10", "http://hl7.org/fhir/sid/icd-10-cm"})
DATA_FILE = Path(__file__).with_name("data") / "condition_value_sets.json"

DIABETES = "diabetes"
PREDIABETES = "prediabetes"
OBESITY = "obesity"
CKD = "ckd"
PREGNANCY = "pregnancy"
HBA1C_UNRELIABLE = "hba1c_unreliable"


@dataclass(frozen=True, slots=True)
class ValueSet:
    name: str
    title: str
    snomed: frozenset[str]
    icd10_prefixes: tuple[str, ...]

    def contains(self, system: str | None, code: str | None) -> bool:
        if not code:
            return False
        if system == SNOMED_SYSTEM:
            return code in self.snomed
        if system in ICD10_SYSTEMS:
            normalised = code.upper()
            return any(
                normalised == prefix or normalised.startswith(prefix)
                for prefix in self.icd10_prefixes
            )
        return False


@dataclass(frozen=True, slots=True)
class ValueSets:
    version: str
    source: str
    sets: dict[str, ValueSet]

    def __getitem__(self, name: str) -> ValueSet:
        return self.sets[name]


@cache
def value_sets() -> ValueSets:
    """The shipped value sets (read once)."""
    document = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    sets = {
        name: ValueSet(
            name=name,
            title=body["title"],
            snomed=frozenset(body["snomed"]),
            icd10_prefixes=tuple(body["icd10_prefixes"]),
        )
        for name, body in document["value_sets"].items()
    }
    return ValueSets(version=document["version"], source=document["source"], sets=sets)
