"""The end-to-end load: body-weight Observations written to Medplum as the partner client, run as
its own process:

    python -m benchmarks.writer '{"base_url": "...", "patients": [...], "count": 3000, ...}'

Observation i is *scheduled* at ``t0 + i / rate`` (open loop) for patient ``i % len(patients)``
with an effective time that grows with i, so every write is the patient's newest weight. It
prints one JSON object: per write the scheduled, sent and answered wall-clock times (Unix
seconds, the clock PostgreSQL's ``now()`` also reads) and the new Observation's id.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from app.integrations.medplum import MedplumClient, MedplumClientConfig, MedplumError
from devtools.devserver import PARTNER_CLIENT_ID, PARTNER_CLIENT_SECRET
from devtools.resources import vital_sign

WEIGHT_LOINC = "29463-7"
HEIGHT_LOINC = "8302-2"
# Clinical times a month back: inside every protocol's evidence window (old evidence opens
# nothing), with room for later readings that are still in the past.
EPOCH = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0) - timedelta(days=30)


def vital(patient: str, loinc: str, value: float, unit: str, when: datetime) -> dict[str, Any]:
    return vital_sign(patient, loinc, value, unit, when.strftime("%Y-%m-%dT%H:%M:%SZ"))


def weight(patient: str, index: int) -> dict[str, Any]:
    # 90-110 kg with a 165 cm height: BMI 33-40, so both the BMI and the obesity bot propose,
    # and each new weight changes the BMI (a new suggestion supersedes the pending one).
    kilograms = 90 + (index * 7919) % 200 / 10
    return vital(patient, WEIGHT_LOINC, kilograms, "kg", EPOCH + timedelta(minutes=index))


async def run(config: dict[str, Any]) -> dict[str, Any]:
    base_url = str(config["base_url"])
    patients: list[str] = list(config["patients"])
    count = int(config["count"])
    rate = float(config["rate"])
    first = int(config.get("first_index", 0))
    client_config = MedplumClientConfig(
        base_url=base_url,
        client_id=PARTNER_CLIENT_ID,
        client_secret=PARTNER_CLIENT_SECRET,
        max_connections=int(config.get("max_connections", 64)),
        read_timeout=60.0,
    )
    async with MedplumClient(client_config) as partner:
        # Signed in before the clock starts: the token request is not part of any write.
        await partner.token_source.get_token()
        records: list[list[Any]] = [[] for _ in range(count)]

        async def write(i: int, scheduled: float) -> None:
            index = first + i
            body = weight(patients[index % len(patients)], index)
            sent = time.time()
            try:
                created = await partner.create(body)
                status, resource_id = created.status_code, created.id
            except MedplumError as error:
                # A plain create is never retried by the client: one attempt, one record.
                status, resource_id = error.status_code or 0, None
            records[i] = [scheduled, sent, time.time(), status, resource_id]

        tasks: list[asyncio.Task[None]] = []
        start_wall = time.time() + 0.05
        start = time.perf_counter() + 0.05
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(write(i, start_wall + i / rate)))
        await asyncio.gather(*tasks)
        token_requests = partner.token_request_count
    return {"records": records, "token_requests": token_requests, "start": start_wall}


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    result = asyncio.run(run(config))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
