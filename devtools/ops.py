"""The ops dashboard on the development stack: the receiver's settings for it and the ops app's
redirect URI in the stand-in (``make demo`` uses both and prints where to sign in)."""

from __future__ import annotations

import secrets

from app.integrations.medplum import MedplumClient, MedplumClientConfig
from devtools.devserver import ADMIN_CLIENT_ID, ADMIN_CLIENT_SECRET

OPS_CLIENT_ID = "starvit-ops"
# The seeded ops user (development credentials, devserver/README.md).
OPS_USER = "olivia.ops@starvit.example"
OPS_PASSWORD = "olivia-dev-password"  # noqa: S105 - published development seed value


def ops_env() -> dict[str, str]:
    """The receiver's dashboard settings: a fresh session secret for this run."""
    return {"STARVIT_OPS_SESSION_SECRET": secrets.token_urlsafe(32)}


async def register_ops_redirect(medplum_base: str, receiver_base: str) -> str:
    """Let the ops app in Medplum send users back to this receiver (as a Medplum admin sets a
    ClientApplication's redirect URIs); the dashboard's address."""
    config = MedplumClientConfig(
        base_url=medplum_base, client_id=ADMIN_CLIENT_ID, client_secret=ADMIN_CLIENT_SECRET
    )
    redirect = receiver_base.rstrip("/") + "/ops/callback"
    async with MedplumClient(config) as admin:
        current = (await admin.read("ClientApplication", OPS_CLIENT_ID)).resource
        listed = current.get("redirectUris")
        uris = [u for u in listed if u != redirect] if isinstance(listed, list) else []
        uris.append(redirect)
        await admin.update(
            {**current, "redirectUri": redirect, "redirectUris": uris}, idempotent=True
        )
    return receiver_base.rstrip("/") + "/ops/"
