"""Medplum's rest-hook signature: HMAC-SHA256 of the exact body bytes, lowercase hex in
``X-Signature``, with no timestamp or delivery id (docs/backend/MEDPLUM_CONFIGURATION.md)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def signature_matches(body: bytes, signature: str, secrets: Iterable[bytes]) -> bool:
    """True when ``signature`` is the HMAC-SHA256 of ``body`` under any active secret.

    Every secret is tried (no early exit), so the time taken does not reveal which one matched.
    """
    candidate = signature.strip().lower()
    if not _HEX.match(candidate):
        return False
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        matched |= hmac.compare_digest(expected, candidate)
    return matched
