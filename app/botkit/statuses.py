"""The statuses of the service's pending work and what each event does to them (pure).

One table says what approval, rejection and withdrawal do to each kind of pending proposal; the
write plan (withdrawal, supersession) and the clinician-decision loop both read it, so the two
can never disagree about what "pending" means.
"""

from __future__ import annotations

from typing import Literal

# Review Task statuses that still wait for a clinician.
OPEN_TASK_STATUSES = ("requested", "ready", "received", "draft")
# A clinician's decision, as a Task status (Medplum's provider app: "Mark as Completed", or a
# status chosen from the dropdown).
APPROVING = frozenset({"completed", "accepted"})
REJECTING = frozenset({"rejected", "cancelled"})

type ProposalAction = Literal["approve", "reject", "withdraw"]

# (resource type, pending status) -> the status each action leaves it in. Anything not listed is
# not pending (already decided or withdrawn) and is never touched again.
PROPOSAL_TRANSITIONS: dict[tuple[str, str], dict[ProposalAction, str]] = {
    ("Observation", "preliminary"): {
        "approve": "final",
        "reject": "cancelled",
        "withdraw": "cancelled",
    },
    ("ServiceRequest", "draft"): {"approve": "active", "reject": "revoked", "withdraw": "revoked"},
    ("CarePlan", "draft"): {"approve": "active", "reject": "revoked", "withdraw": "revoked"},
}


def proposal_status_after(
    resource_type: str, status: str | None, action: ProposalAction
) -> str | None:
    """The status a pending proposal takes on ``action``; ``None`` when it is not pending."""
    transitions = PROPOSAL_TRANSITIONS.get((resource_type, status or ""))
    return transitions[action] if transitions else None
