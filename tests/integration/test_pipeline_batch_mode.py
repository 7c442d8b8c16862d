"""On a Medplum project without the ``transaction-bundles`` feature, writes go as batches in
dependency order; a failure between them heals on retry without duplicating anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from devtools.devserver import DevServer
from tests.integration.pipeline_support import Pipeline, start_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
async def batch_pipeline(devserver: DevServer, database_url: str) -> AsyncIterator[Pipeline]:
    running = await start_pipeline(devserver, database_url, STARVIT_MEDPLUM_TRANSACTIONS="false")
    try:
        await running.set_project_features([])
        project = (await running.admin.read("Project", "starvit-dev")).resource
        assert project.get("features") in (None, [])
        yield running
    finally:
        running.stack.close()
        await running.partner.aclose()
        await running.admin.aclose()


async def test_batch_writes_resolve_references_and_heal_after_a_partial_failure(
    batch_pipeline: Pipeline,
) -> None:
    pipeline = batch_pipeline
    patient = await pipeline.new_patient()
    # Let the first write batch (the proposals) through, then fail the following batches for
    # longer than the client's own retries: the job fails after a partial write, retries,
    # and the conditional creates find what the first attempt already wrote.
    await pipeline.fault(status=503, count=8, method="POST", pathPattern="^/fhir/R4/?$", skip=4)
    await pipeline.weight_and_height(patient)
    await pipeline.settled(within=90)
    tag = f"{TAG_SYSTEM}|{TAG_CODE}"
    observations = await pipeline.search("Observation", subject=patient, _tag=tag)
    tasks = [t for t in await pipeline.tasks_for(patient) if t["status"] == "requested"]
    lists = [t for t in tasks if t["code"]["coding"][0]["code"] == "results-review"]
    bmi = [o for o in observations if o["code"]["coding"][0]["code"] == "39156-5"]
    assert len(bmi) == 1
    assert len(lists) == 1  # the BMI is an item of the patient's one results-review Task
    assert [i["valueReference"]["reference"] for i in lists[0]["input"]] == [
        f"Observation/{bmi[0]['id']}"
    ]
    provenances = await pipeline.search("Provenance", target=f"Observation/{bmi[0]['id']}")
    assert len(provenances) == 1
    assert "urn:uuid" not in str(provenances[0]) + str(lists[0])
    assert (await pipeline.stats())["faults_injected"] == 8
