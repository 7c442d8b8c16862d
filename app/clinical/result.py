"""What every calculator returns: a value with its UCUM unit and category, or no value and why.

A result is never a guess: when an input is unusable (unknown unit, negative value) or the
method does not apply (a child, a sex the equation does not model) the value is ``None`` and
``reason`` says why, in words a clinician can act on; ``outcome`` says which kind of "no
result" it is, as a stable code for counting and for the CLI's exit status.

Rounding: every calculator reports ``value`` rounded half-up to its documented precision and
derives ``category`` from that reported value, so the number a clinician reads and its category
never disagree; ``unrounded`` keeps the full-precision value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Citation:
    """The published source of a formula or threshold."""

    title: str
    source: str  # authors, journal, year, volume and pages (or the issuing body)
    url: str


class Outcome(StrEnum):
    COMPUTED = "computed"
    INVALID_INPUT = "invalid_input"  # unknown or mismatched unit, negative or non-finite value
    NOT_APPLICABLE = "not_applicable"  # outside the population the method covers (age, sex)
    INSUFFICIENT_EVIDENCE = "insufficient_evidence"  # e.g. no recent height, < 2 BP occasions
    # Refused by app.clinical.plausibility: never computed from, never guessed around.
    IMPLAUSIBLE_VALUE = "implausible_value"  # outside what a living person can measure
    UNIT_MISLABELLED = "unit_mislabelled"  # implausible as labelled, plausible in a usual unit
    INEXACT_VALUE = "inexact_value"  # a bound ("<0.2"), not a value


@dataclass(frozen=True, slots=True)
class MetricResult:
    """A derived measurement: ``value`` in UCUM ``unit``, or ``None`` with a ``reason``."""

    value: float | None
    unit: str
    category: str | None
    reason: str | None
    citation: Citation
    outcome: Outcome
    unrounded: float | None = None
    # Further sources the value relies on (e.g. the staging guideline, a scale conversion).
    supporting_citations: tuple[Citation, ...] = ()

    @classmethod
    def computed(
        cls,
        *,
        value: float,
        unrounded: float,
        unit: str,
        category: str,
        citation: Citation,
        supporting_citations: tuple[Citation, ...] = (),
    ) -> MetricResult:
        return cls(
            value=value,
            unit=unit,
            category=category,
            reason=None,
            citation=citation,
            outcome=Outcome.COMPUTED,
            unrounded=unrounded,
            supporting_citations=supporting_citations,
        )

    @classmethod
    def no_result(
        cls, outcome: Outcome, reason: str, *, unit: str, citation: Citation
    ) -> MetricResult:
        if outcome is Outcome.COMPUTED:
            msg = "a result without a value cannot have outcome 'computed'"
            raise ValueError(msg)
        return cls(
            value=None,
            unit=unit,
            category=None,
            reason=reason,
            citation=citation,
            outcome=outcome,
        )


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A proposed action for a clinician to accept or reject (the content of a review Task)."""

    title: str  # short, < 140 characters (Task.code.text, CDS Hooks card summary)
    rationale: str  # the numbers and the guideline (Task.description)
    citation: Citation
    urgent: bool = False


def round_half_up(value: float, decimals: int) -> float:
    """``value`` rounded the way a lab report reads: 24.95 -> 25.0, 59.5 -> 60 (not banker's).

    Works on the shortest decimal representation of the float, so 6.45 rounds to 6.5 even
    though the binary float is slightly below 6.45.
    """
    quantum = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def invalid_magnitude(name: str, value: float) -> str | None:
    """Why ``value`` cannot be a measured ``name`` (non-finite, zero or negative), else None."""
    if not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if value <= 0:
        return f"{name} must be greater than zero, got {value:g}"
    return None
