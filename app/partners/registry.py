"""The partner registry: which Medplum clients may post bundles, into which tenant (Medplum
project), which resource types and interactions, and within which limits.

It is configuration, not code: a JSON file named by ``STARVIT_PARTNER_REGISTRY`` (see
docs/PARTNERS.md for the format). Without one, no partner is registered and every partner
request is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

type Interaction = Literal["create", "update"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")

# Resource types no partner may ever write, whatever its registry entry says: the service's
# own review loop (Task), its provenance chain (Provenance), and what grants access or identity.
NEVER_WRITABLE = frozenset(
    {
        "Task",
        "Provenance",
        "AuditEvent",
        "AccessPolicy",
        "ProjectMembership",
        "ClientApplication",
        "User",
        "Project",
        "Login",
        "Bot",
        "Subscription",
        "JsonWebKey",
        "UserConfiguration",
    }
)

# Medplum answers a JSON body over 1 MB with 400; the service leaves room for what it adds
# (identifiers on creates) and never forwards more than this.
MAX_BODY_BYTES_CEILING = 900_000


class RegistryError(ValueError):
    """The registry file is missing, unreadable or not a valid registry (the message names the
    file and the field, never a secret)."""


class PartnerLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int = Field(default=60, ge=1, le=100_000)
    max_concurrent: int = Field(default=2, ge=1, le=64)
    max_entries: int = Field(default=200, ge=1, le=1000)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES_CEILING, ge=1024, le=MAX_BODY_BYTES_CEILING)
    # Entries per forwarded batch request when a batch is split (Medplum charges every entry
    # against the partner's FHIR quota; smaller requests fail and retry in smaller pieces).
    batch_chunk_entries: int = Field(default=50, ge=1, le=1000)


class Partner(BaseModel):
    """One registered partner: its Medplum ClientApplication id is the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str
    name: str = Field(min_length=1, max_length=200)
    project: str = Field(description="The Medplum project (tenant) the partner writes into.")
    resources: dict[str, frozenset[Interaction]]
    limits: PartnerLimits = PartnerLimits()
    identifier_system: str | None = Field(
        default=None,
        description="The system of the identifier the service adds to a create that carries "
        "none, so that the forwarded create is conditional; default "
        "urn:starvit:partner:<client_id>:entry.",
    )

    @field_validator("client_id", "project")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _CLIENT_ID.match(value):
            raise ValueError("must be a FHIR id (letters, digits, '-', '.'; at most 64)")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(
        cls, value: dict[str, frozenset[Interaction]]
    ) -> dict[str, frozenset[Interaction]]:
        for resource_type, interactions in value.items():
            if not _RESOURCE_TYPE.match(resource_type):
                raise ValueError(f"{resource_type!r} is not a resource type name")
            if resource_type in NEVER_WRITABLE:
                raise ValueError(f"{resource_type} can never be granted to a partner")
            if not interactions:
                raise ValueError(f"{resource_type}: list at least one interaction")
        return value

    def allows(self, resource_type: str, interaction: Interaction) -> bool:
        return interaction in self.resources.get(resource_type, frozenset())

    @property
    def entry_identifier_system(self) -> str:
        return self.identifier_system or f"urn:starvit:partner:{self.client_id}:entry"

    @property
    def profile(self) -> str:
        return f"ClientApplication/{self.client_id}"


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partners: list[Partner]


class PartnerRegistry:
    """The registered partners by client id."""

    def __init__(self, partners: list[Partner] | tuple[Partner, ...] = ()) -> None:
        self._by_client: dict[str, Partner] = {}
        for partner in partners:
            if partner.client_id in self._by_client:
                raise RegistryError(f"partner {partner.client_id} is registered twice")
            self._by_client[partner.client_id] = partner

    @classmethod
    def load(cls, path: Path | None) -> PartnerRegistry:
        if path is None:
            return cls()
        try:
            data = orjson.loads(path.read_bytes())
        except OSError as error:
            raise RegistryError(f"partner registry {path}: {error.strerror}") from None
        except orjson.JSONDecodeError:
            raise RegistryError(f"partner registry {path}: not JSON") from None
        try:
            parsed = _RegistryFile.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                ".".join(str(part) for part in item["loc"]) + ": " + item["msg"]
                for item in error.errors()
            )
            raise RegistryError(f"partner registry {path}: {problems}") from None
        return cls(parsed.partners)

    def get(self, client_id: str) -> Partner | None:
        return self._by_client.get(client_id)

    @property
    def client_ids(self) -> frozenset[str]:
        return frozenset(self._by_client)

    def __len__(self) -> int:
        return len(self._by_client)
