"""The research API with the Medplum stand-in's own tokens: the seeded researcher (Ravi) signs
in through the clinician app and reads aggregates and the export history; a clinician of the
same app is refused (403); a client-credentials token issued to another client is not accepted
(401). The data come from a real export of the stand-in into DuckDB."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.integrations.medplum import MedplumClient, MedplumClientConfig, PasswordSignIn
from app.main import create_app
from app.persistence.database import Database, migrate
from app.research.repository import ResearchRepository
from app.research.service import run_export
from app.runtime import Runtime
from app.settings import Settings
from devtools import synthea
from devtools.devserver import SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET, DevServer
from tests.conftest import Serve, settings_for_tests
from tests.integration.conftest import fresh_database
from tests.integration.pipeline_support import fhir_client
from tests.integration.test_research_export import deid, zone_in

pytestmark = pytest.mark.integration

APP = "starvit-clinician-app"
RAVI = ("ravi.researcher@starvit.example", "ravi-dev-password")
ALICE = ("alice.clinician@starvit.example", "alice-dev-password")


async def user_token(server: DevServer, email: str, password: str) -> str:
    config = MedplumClientConfig(base_url=server.base_url, client_id=APP)
    async with MedplumClient(
        config, token_source=PasswordSignIn(email=email, password=password, client_id=APP)
    ) as session:
        return await session.token_source.get_token()


async def service_token(server: DevServer) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            server.base_url + "oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": SERVICE_CLIENT_ID,
                "client_secret": SERVICE_CLIENT_SECRET,
            },
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])


@pytest.fixture
async def database(postgres_server_url: str) -> AsyncIterator[Database]:
    with fresh_database(postgres_server_url) as url:
        await migrate(url)
        db = Database(url, max_size=2)
        await db.open()
        try:
            yield db
        finally:
            await db.aclose()


async def test_the_researcher_reads_aggregates_with_a_medplum_token(
    database: Database, tmp_path: Path, serve: Serve
) -> None:
    with DevServer.start(env={"MEDPLUM_FHIR_QUOTA": "100000000"}) as server:
        async with MedplumClient(synthea.partner_config(server.base_url)) as partner:
            await synthea.load(partner, patients=1, drop_unsatisfied_profiles=True)
        zone = zone_in(tmp_path)
        try:
            async with fhir_client(
                server.base_url, SERVICE_CLIENT_ID, SERVICE_CLIENT_SECRET
            ) as service:
                await run_export(
                    medplum=service,
                    repository=ResearchRepository(database.pool),
                    zone=zone,
                    deidentifier=deid(),
                )
        finally:
            zone.close()
        ravi = await user_token(server, *RAVI)
        alice = await user_token(server, *ALICE)
        machine = await service_token(server)
        settings = settings_for_tests(
            medplum_base_url=server.base_url,
            research_dir=tmp_path,
            research_audiences=APP,
            research_profiles="Practitioner/researcher-ravi",
        )

        async def runtime_factory(settings: Settings) -> Runtime:
            return Runtime(settings, dependencies=[database])

        app = create_app(settings, runtime_factory=runtime_factory)
        async with serve(app) as client:

            async def get(path: str, token: str) -> httpx.Response:
                return await client.get(path, headers={"Authorization": f"Bearer {token}"})

            demographics = await get("/v1/research/demographics", ravi)
            exports = await get("/v1/research/exports", ravi)
            clinician = await get("/v1/research/conditions", alice)
            service_client = await get("/v1/research/conditions", machine)
    assert demographics.status_code == 200, demographics.text
    body = demographics.json()
    assert body["total"] is None  # two patients (the loaded one and the seed's): withheld
    history = exports.json()
    assert exports.status_code == 200
    assert len(history) == 1
    assert history[0]["status"] == "succeeded"
    assert history[0]["key_version"] == "k1"
    assert history[0]["risk"]["patients"] == 2
    assert clinician.status_code == 403
    assert clinician.json()["error_code"] == "forbidden"
    assert service_client.status_code == 401
    assert service_client.json()["details"] == {"reason": "token_audience"}
