"""A Medplum answer that never comes: every call is abandoned at its deadline
(``STARVIT_MEDPLUM_REQUEST_DEADLINE``) rather than held for the 30 s read timeout, and a safe
call is retried to its answer."""

from __future__ import annotations

import time

import httpx
import pytest

from app.integrations.medplum import MedplumClient, MedplumClientConfig, MedplumUnavailable
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET, DevServer

pytestmark = pytest.mark.integration

# Not a timing assertion: a hang detector far below the 30 s read timeout and the 60 s delay.
HANG = 15.0


def client(devserver: DevServer, *, max_attempts: int) -> MedplumClient:
    return MedplumClient(
        MedplumClientConfig(
            base_url=devserver.base_url,
            client_id=PARTNER_CLIENT_ID,
            client_secret=PARTNER_CLIENT_SECRET,
            read_timeout=30.0,
            request_deadline=1.0,
            max_attempts=max_attempts,
            max_retry_wait_seconds=0.2,
        )
    )


async def lose_next_answers(devserver: DevServer, count: int) -> None:
    """The stand-in holds the next ``count`` answers for a minute (a lost response)."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            devserver.base_url + "_devserver/fault",
            json={"status": 503, "count": count, "delayMs": 60_000, "method": "GET"},
        )
        answer.raise_for_status()


async def test_a_lost_answer_costs_the_deadline_and_a_safe_call_is_retried(
    devserver: DevServer,
) -> None:
    async with client(devserver, max_attempts=3) as medplum:
        patient = await medplum.create(
            {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01"}
        )
        assert patient.resource.get("id")
        await lose_next_answers(devserver, 1)
        began = time.monotonic()
        read = await medplum.read("Patient", str(patient.resource["id"]))
        elapsed = time.monotonic() - began
        assert read.resource["id"] == patient.resource["id"]
        assert medplum.retry_count == {"read": 1}
        assert elapsed < HANG


async def test_answers_lost_every_time_end_in_medplum_unavailable(devserver: DevServer) -> None:
    async with client(devserver, max_attempts=2) as medplum:
        patient = await medplum.create(
            {"resourceType": "Patient", "gender": "female", "birthDate": "1970-05-01"}
        )
        await lose_next_answers(devserver, 2)
        began = time.monotonic()
        with pytest.raises(MedplumUnavailable) as caught:
            await medplum.read("Patient", str(patient.resource["id"]))
        assert time.monotonic() - began < HANG
        assert caught.value.error_code == "medplum_unavailable"
        assert caught.value.attempts == 2
