"""What the chart already says (pure): recorded conditions matched against the shipped value
sets (``app.clinical.value_sets``), for the bots' suppressions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.botkit.declaration import Prefetch
from app.clinical.value_sets import value_sets

if TYPE_CHECKING:
    from app.botkit.declaration import BotContext
    from app.fhir.views import ConditionView

CONDITIONS = "conditions"
# Every active condition of the patient: value sets match descendants and ICD-10 prefixes,
# which a token search on a fixed code list cannot.
CONDITIONS_PREFETCH = Prefetch(
    CONDITIONS,
    "Condition?subject={{patient}}&clinical-status=active,recurrence,relapse&_count=100",
    # Read only by the branches that consult the problem list.
    deferred=True,
)


def recorded(context: BotContext, value_set: str, patient: str | None) -> ConditionView | None:
    """The first active Condition of the patient in ``value_set`` (by reference), or None."""
    members = value_sets()[value_set]
    for condition in sorted(context.conditions(CONDITIONS), key=lambda view: view.reference):
        subject = condition.reference_of("subject")
        if patient is not None and subject not in (None, patient):
            continue
        if condition.active and any(members.contains(c.system, c.code) for c in condition.codes):
            return condition
    return None


def condition_name(condition: ConditionView) -> str:
    coding = next(iter(condition.codes), None)
    label = (coding.display or coding.code) if coding is not None else None
    return f"{label or 'condition'} ({condition.reference})"
