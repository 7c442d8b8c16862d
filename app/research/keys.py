"""The pseudonymisation key: where it comes from and which version it is.

The key never enters the database, the logs or the export files; only its version id does
(recorded with every export, so that a researcher knows which pseudonyms belong together).
A new key version gives every patient new pseudonyms and a new date shift: the next export
starts afresh (see :mod:`app.research.service`)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

KEY_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_KEY_BYTES = 32


class KeyUnavailable(RuntimeError):
    """No usable pseudonymisation key (missing, too short, malformed)."""


@dataclass(frozen=True, slots=True)
class PseudonymKey:
    version: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"PseudonymKey(version={self.version!r})"


class SecretStore(Protocol):
    """Where the current pseudonymisation key is read from (environment, a mounted file, or a
    cloud secret manager behind the same method)."""

    def current_key(self) -> PseudonymKey: ...


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        secret = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyUnavailable(f"{where} is not base64") from None
    if len(secret) < MIN_KEY_BYTES:
        raise KeyUnavailable(f"{where} must hold at least {MIN_KEY_BYTES} bytes")
    return secret


def _version(value: str, where: str) -> str:
    if not KEY_VERSION.match(value):
        raise KeyUnavailable(f"{where}: key version must match {KEY_VERSION.pattern}")
    return value


@dataclass(frozen=True, slots=True)
class EnvironmentSecretStore:
    """``STARVIT_RESEARCH_KEY`` (base64, at least 32 bytes) and ``STARVIT_RESEARCH_KEY_VERSION``."""

    key_variable: str = "STARVIT_RESEARCH_KEY"
    version_variable: str = "STARVIT_RESEARCH_KEY_VERSION"

    def current_key(self) -> PseudonymKey:
        text = os.environ.get(self.key_variable)
        if not text:
            raise KeyUnavailable(f"{self.key_variable} is not set")
        version = os.environ.get(self.version_variable) or "v1"
        return PseudonymKey(
            _version(version, self.version_variable), _decode(text, self.key_variable)
        )


@dataclass(frozen=True, slots=True)
class FileSecretStore:
    """A JSON file (for example a mounted Secret Manager volume):
    ``{"current": "v2", "keys": {"v1": "<base64>", "v2": "<base64>"}}``. Older versions stay
    listed so that an operator can see which one was retired; only ``current`` is used."""

    path: Path

    def current_key(self) -> PseudonymKey:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise KeyUnavailable("the research key file cannot be read") from None
        if not isinstance(document, dict):
            raise KeyUnavailable("the research key file must be a JSON object")
        current = document.get("current")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        keys = document.get("keys")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if not isinstance(current, str) or not isinstance(keys, dict):
            raise KeyUnavailable("the research key file needs 'current' and 'keys'")
        text = keys.get(current)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        if not isinstance(text, str):
            raise KeyUnavailable("the research key file has no key for its current version")
        return PseudonymKey(_version(current, "current"), _decode(text, f"key {current}"))


def secret_store(key_file: Path | None) -> SecretStore:
    """The configured store: the key file when one is set, else the environment."""
    return FileSecretStore(key_file) if key_file is not None else EnvironmentSecretStore()
