"""A burst of one patient's readings is computed once, on the newest state, and the skipped
events are recorded ``coalesced`` (and counted), never lost."""

from __future__ import annotations

import psycopg
import pytest

from devtools.devserver import DevServer
from tests.integration.pipeline_support import days_ago, observation, running_pipeline

pytestmark = [pytest.mark.integration]


async def test_a_burst_computes_once_and_suggests_from_the_newest_evidence(
    devserver: DevServer, database_url: str
) -> None:
    async with running_pipeline(
        devserver,
        database_url,
        STARVIT_SWEEP_INTERVAL_SECONDS="0",
        # Long enough that the whole burst is queued before its first event is looked at.
        STARVIT_COALESCE_WINDOW_MS="3000",
        STARVIT_COALESCE_BY_PATIENT="bmi,obesity",
    ) as pipeline:
        patient = await pipeline.new_patient()
        await pipeline.partner.create(observation(patient, "8302-2", 165, "cm", days_ago(60)))
        await pipeline.settled()
        weights = []
        for days, kg in zip([6, 5, 4, 3, 2], [80, 84, 88, 92, 96], strict=True):
            created = await pipeline.partner.create(
                observation(patient, "29463-7", kg, "kg", days_ago(days))
            )
            weights.append(created.resource)
        await pipeline.settled(within=60)
        weight_ids = {w["id"] for w in weights}
        burst = [e for e in pipeline.events() if e[3] in weight_ids]
        assert len(burst) == 10  # five weights, two handlers
        for handler in ("bmi", "obesity"):
            outcomes = sorted(str(e[6]) for e in burst if e[1] == handler)
            computed = [o for o in outcomes if o != "coalesced"]
            assert len(computed) == 1, outcomes
            assert outcomes.count("coalesced") == 4
        # The one computation used the newest weight: 96 kg at 165 cm. The BMI is an item of
        # the results-review list (no Task of its own); BMI >= 30 opens the obesity referral.
        newest = weights[-1]
        tasks = await pipeline.tasks_for(patient)
        [review] = [
            t
            for t in tasks
            if t["status"] == "requested"
            and t["code"]["coding"][0]["code"].startswith("results-review")
        ]
        [item] = [i["valueReference"]["reference"] for i in review["input"]]
        bmi = await pipeline.read(item)
        assert bmi["valueQuantity"]["value"] == pytest.approx(35.3, abs=0.05)
        assert f"Observation/{newest['id']}/_history/" in str(bmi["derivedFrom"])
        referrals = [
            t
            for t in tasks
            if t["status"] == "requested" and t["code"]["coding"][0]["code"].startswith("obesity.")
        ]
        assert len(referrals) == 1
        with psycopg.connect(pipeline.database_url) as conn:
            counted = dict(
                conn.execute(
                    "SELECT handler, sum(count)::int FROM starvit.coalesced_events GROUP BY 1"
                ).fetchall()
            )
        assert counted == {"bmi": 4, "obesity": 4}
