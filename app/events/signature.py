"""Medplum's rest-hook signature: HMAC-SHA256 of the exact body bytes, lowercase hex in
``X-Signature``, with no timestamp or delivery id (docs/backend/MEDPLUM_CONFIGURATION.md).

Medplum signs only the body, never the channel headers, so a secret shared by every
Subscription would let one captured delivery be replayed under any handler's name. Each
Subscription therefore signs with its *own* secret, derived from a configured secret and the
handler's name (:func:`subscription_secret`): ``starvit subscriptions sync`` writes it into the
Subscription, and the receiver verifies with the derived secrets of the handler named in
``X-Starvit-Bot``. A valid signature thus proves which handler's Subscription sent it. This
module is the one place that derivation lives.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Domain separation: the derived secret of a handler can never collide with an HMAC the
# service computes for any other purpose.
_DERIVATION_PREFIX = b"starvit-subscription:"


def subscription_secret(configured: str | bytes, handler: str) -> str:
    """The signing secret of ``handler``'s Subscription: HMAC-SHA256(configured secret,
    ``"starvit-subscription:" + handler``), lowercase hex. Medplum signs with this string."""
    key = configured.encode() if isinstance(configured, str) else configured
    return hmac.new(key, _DERIVATION_PREFIX + handler.encode(), hashlib.sha256).hexdigest()


@lru_cache(maxsize=256)
def handler_secrets(configured: tuple[bytes, ...], handler: str) -> tuple[bytes, ...]:
    """The keys a delivery for ``handler`` may be signed with: one per configured secret (all
    of them, so a rotation in progress verifies under the old and the new secret). Cached: the
    receiver calls it on every delivery, with names already checked against the registry."""
    return tuple(subscription_secret(secret, handler).encode() for secret in configured)


def signature_matches(body: bytes, signature: str, secrets: Iterable[bytes]) -> bool:
    """True when ``signature`` is the HMAC-SHA256 of ``body`` under any of ``secrets``.

    Every secret is tried (no early exit), so the time taken does not reveal which one matched.
    """
    candidate = signature.strip().lower()
    if not _HEX.fullmatch(candidate):
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def handler_signature_matches(
    body: bytes, signature: str, configured: tuple[bytes, ...], handler: str
) -> bool:
    """True when ``signature`` was made by ``handler``'s Subscription under any configured
    secret."""
    return signature_matches(body, signature, handler_secrets(configured, handler))
