"""The re-identification risk report that comes with every export.

Quasi-identifiers: birth year (as published), sex, ZIP3 and the shifted month of the patient's
first clinical event in the release (the month a linkage attack would start from). Patients
sharing all four form an equivalence class; a class smaller than ``k`` is a re-identification
risk (k-anonymity, Sweeney 2002). The report gives the smallest class, how many patients sit
in classes under ``k``, and the class-size distribution, never the classes themselves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

QUASI_IDENTIFIERS = ("birth_year", "gender", "zip3", "first_event_month")

# One row per equivalence class: its size. Shared SQL (DuckDB and BigQuery).
EQUIVALENCE_CLASSES_SQL = """
WITH events AS (
    SELECT patient_id, effective_date AS d FROM {observation} WHERE effective_date IS NOT NULL
    UNION ALL
    SELECT patient_id, onset_date AS d FROM {condition} WHERE onset_date IS NOT NULL
),
first_event AS (
    SELECT patient_id, MIN(d) AS first_date FROM events GROUP BY patient_id
)
SELECT COUNT(*) AS size
FROM {patient} p LEFT JOIN first_event f ON f.patient_id = p.id
GROUP BY p.birth_year, p.gender, p.zip3,
         EXTRACT(YEAR FROM f.first_date), EXTRACT(MONTH FROM f.first_date)
"""


@dataclass(frozen=True, slots=True)
class RiskReport:
    k: int
    quasi_identifiers: tuple[str, ...]
    patients: int
    classes: int
    smallest_class: int | None
    patients_in_small_classes: int
    share_in_small_classes: float
    class_sizes: dict[str, int]  # "1", "2-4", "5-10", "11+" -> number of classes

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["quasi_identifiers"] = list(self.quasi_identifiers)
        return out


def _bucket(size: int) -> str:
    if size == 1:
        return "1"
    if size <= 4:
        return "2-4"
    if size <= 10:
        return "5-10"
    return "11+"


def risk_report(class_sizes: Sequence[int], *, k: int) -> RiskReport:
    patients = sum(class_sizes)
    small = sum(s for s in class_sizes if s < k)
    buckets = {"1": 0, "2-4": 0, "5-10": 0, "11+": 0}
    for size in class_sizes:
        buckets[_bucket(size)] += 1
    return RiskReport(
        k=k,
        quasi_identifiers=QUASI_IDENTIFIERS,
        patients=patients,
        classes=len(class_sizes),
        smallest_class=min(class_sizes) if class_sizes else None,
        patients_in_small_classes=small,
        share_in_small_classes=round(small / patients, 4) if patients else 0.0,
        class_sizes=buckets,
    )
