"""Evidence as the calculators see it: timed values with UCUM units, and age from dates.

The bots map FHIR Observations and Patients onto these plain types; nothing here knows FHIR.
Times must be timezone-aware (FHIR ``effectiveDateTime`` carries an offset): comparing an aware
with a naive datetime raises ``TypeError`` rather than silently assuming a zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from datetime import date, datetime

# Adult: 18 years or older, the age from which the adult BMI categories (WHO), CKD-EPI 2021 and
# the ACC/AHA 2017 adult BP categories apply.
ADULT_AGE_YEARS = 18


class Timed(Protocol):
    @property
    def effective_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Measurement:
    """One observed value: ``value`` in UCUM ``unit`` at ``effective_at``."""

    value: float
    unit: str
    effective_at: datetime


def age_in_years(birth_date: date, on: date) -> int:
    """Completed years of age on ``on``: the age rises on the birthday itself.

    Someone born on 29 February turns a year older on 1 March in common years. Raises
    ``ValueError`` when ``on`` is before ``birth_date``.
    """
    if on < birth_date:
        msg = f"date {on.isoformat()} is before the birth date"
        raise ValueError(msg)
    had_birthday = (on.month, on.day) >= (birth_date.month, birth_date.day)
    return on.year - birth_date.year - (0 if had_birthday else 1)
