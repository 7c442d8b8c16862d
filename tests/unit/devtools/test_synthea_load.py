"""The Synthea loader as a careful partner (``devtools.synthea``): chunks sized by FHIR quota
points, pacing by Medplum's ``RateLimit``, resuming from a checkpoint, naming the refused entry,
and dropping declared profiles an entry does not satisfy only when asked.

A scripted Medplum (an ``httpx.MockTransport``) stands behind the real ``MedplumClient``: it
charges the quota like Medplum (100 a write, 140 a conditional create in a bundle, 20 a search)
in fixed windows on a fake clock that the loader's sleeps advance, refuses whole transactions
like Medplum 5.0 (400 naming a path in the resource, not the entry), and validates a strict
profile in ``$validate`` and on writes."""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.fhir.resource_json import JSONObject, JSONValue, get_array, get_object, get_objects
from app.integrations.medplum import MedplumClient, MedplumClientConfig
from app.integrations.medplum.responses import RateLimitPolicy, RateLimitStatus
from devtools import synthea
from devtools.synthea import (
    Checkpoint,
    SyntheaError,
    SyntheaLoadError,
    drop_profiles,
    entry_points,
    quota_wait,
    split_bundle,
)

BASE = "http://medplum.test/"
STRICT = "http://example.org/StructureDefinition/strict-bp"
LOOSE = "http://example.org/StructureDefinition/vitals"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def plain(resource: JSONObject, full_url: str | None = None) -> JSONObject:
    return {
        "fullUrl": full_url or urn(),
        "resource": resource,
        "request": {"method": "POST", "url": str(resource["resourceType"])},
    }


def conditional(resource: JSONObject, identifier: str) -> JSONObject:
    return {
        "fullUrl": urn(),
        "resource": resource,
        "request": {
            "method": "POST",
            "url": str(resource["resourceType"]),
            "ifNoneExist": f"identifier={identifier}",
        },
    }


def observation(patient: str, *, profiles: list[str] | None = None, ok: bool = True) -> JSONObject:
    resource: JSONObject = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "Zzsecretcode"},
        "subject": {"reference": patient},
    }
    if profiles:
        resource["meta"] = {"profile": list[JSONValue](profiles)}
    if ok:
        resource["component"] = [{"code": {"text": "systolic"}}]
    return resource


def patient_bundle(observations: int, *, refused_at: tuple[int, ...] = ()) -> JSONObject:
    """A Patient and ``observations`` Observations; those in ``refused_at`` declare the strict
    profile without satisfying it (no component), as Synthea's blood pressures do."""
    patient_url = urn()
    entries: list[JSONValue] = [
        plain({"resourceType": "Patient", "name": [{"family": "Zzsecretfamily"}]}, patient_url)
    ]
    for i in range(observations):
        bad = i in refused_at
        entries.append(
            plain(
                observation(patient_url, profiles=[STRICT, LOOSE] if bad else [LOOSE], ok=not bad)
            )
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# --- a scripted Medplum ---------------------------------------------------------------------


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMedplum:
    """Medplum's quota and transaction semantics, reduced to what the loader relies on."""

    clock: FakeClock
    quota: int = 50_000
    window: float = 60.0
    validate_profiles: bool = True
    used: int = 0
    window_ends: float | None = None
    stored: dict[str, JSONObject] = field(default_factory=dict[str, JSONObject])
    transactions: int = 0
    validations: int = 0
    throttled: int = 0
    # The n-th bundle posted answers 500 (after being applied or not, nobody knows).
    fail_bundle_number: int | None = None
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _charge(self, points: int) -> bool:
        now = self.clock()
        if self.window_ends is None or now >= self.window_ends:
            self.used, self.window_ends = 0, now + self.window
        self.used += points
        return self.used <= self.quota

    def _headers(self) -> dict[str, str]:
        assert self.window_ends is not None
        left = max(0, self.quota - self.used)
        reset = max(0, int(-(-(self.window_ends - self.clock()) // 1)))
        return {"RateLimit": f'"requests";r=59000;t={reset}, "fhirInteractions";r={left};t={reset}'}

    def _refusal(self, resource: JSONObject) -> JSONObject | None:
        issues: list[JSONValue] = []
        if resource.get("status") == "bogus":
            issues.append(
                {"severity": "error", "code": "value", "expression": ["Observation.status"]}
            )
        meta = get_object(resource, "meta") or {}
        declares_strict = STRICT in get_array(meta, "profile")
        if self.validate_profiles and declares_strict and "component" not in resource:
            issues.append(
                {
                    "severity": "error",
                    "code": "structure",
                    "details": {"text": "Incorrect number of values provided for slice"},
                    "expression": ["Observation.component"],
                }
            )
        return {"resourceType": "OperationOutcome", "issue": issues} if issues else None

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/oauth2/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        if path.endswith("/$validate"):
            # Not charged, so (like Medplum) no "fhirInteractions" in its RateLimit.
            self.validations += 1
            headers = {"RateLimit": '"requests";r=59000;t=60'}
            refusal = self._refusal(json.loads(request.content))
            if refusal is not None:
                return httpx.Response(400, json=refusal, headers=headers)
            ok = {"resourceType": "OperationOutcome", "issue": []}
            return httpx.Response(200, json=ok, headers=headers)
        if request.method == "GET":
            ok = self._charge(20)
            resource_type = path.rstrip("/").split("/")[-1]
            body: JSONObject = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": {"resourceType": resource_type, "id": "found-1"}}],
            }
            return httpx.Response(200 if ok else 429, json=body, headers=self._headers())
        bundle = json.loads(request.content)
        return self._bundle(bundle)

    def _bundle(self, bundle: JSONObject) -> httpx.Response:
        self.transactions += 1
        entries = get_objects(bundle, "entry")
        cost = sum(entry_points(e) for e in entries)
        if not self._charge(cost):
            self.throttled += 1
            outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "throttled"}]}
            return httpx.Response(429, json=outcome, headers=self._headers())
        if self.transactions == self.fail_bundle_number:
            return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []})
        for entry in entries:
            refusal = self._refusal(get_object(entry, "resource") or {})
            if refusal is not None:
                return httpx.Response(400, json=refusal, headers=self._headers())
        answers: list[JSONValue] = []
        for entry in entries:
            resource = dict(get_object(entry, "resource") or {})
            reference = f"{resource['resourceType']}/id-{next(self.ids)}"
            self.stored[reference] = resource
            answers.append({"response": {"status": "201", "location": reference}})
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}
        return httpx.Response(200, json=body, headers=self._headers())


@dataclass
class Harness:
    server: FakeMedplum
    clock: FakeClock
    medplum: MedplumClient
    waits: list[float]
    lines: list[str]

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds

    async def load(
        self,
        directory: Path,
        *,
        checkpoint: Path | None = None,
        drop_unsatisfied_profiles: bool = False,
        rate_limit_retries: int = 8,
        max_chunk_points: int = synthea.DEFAULT_MAX_CHUNK_POINTS,
    ) -> synthea.LoadSummary:
        return await synthea.load(
            self.medplum,
            directory=directory,
            include_support=False,
            progress=self.lines.append,
            sleep=self.sleep,
            clock=self.clock,
            checkpoint=checkpoint,
            drop_unsatisfied_profiles=drop_unsatisfied_profiles,
            rate_limit_retries=rate_limit_retries,
            max_chunk_points=max_chunk_points,
        )


@pytest.fixture
async def harness() -> Harness:
    clock = FakeClock()
    server = FakeMedplum(clock)
    config = MedplumClientConfig(base_url=BASE, client_id="partner", client_secret="s")
    medplum = MedplumClient(config, transport=httpx.MockTransport(server.handle), clock=clock)
    return Harness(server, clock, medplum, [], [])


def write(directory: Path, name: str, bundle: JSONObject) -> Path:
    path = directory / name
    path.write_text(json.dumps(bundle))
    return path


# --- chunk sizing by quota points -----------------------------------------------------------


def test_entry_points_follow_medplums_charges() -> None:
    assert entry_points({"request": {"method": "POST", "url": "Observation"}}) == 100
    assert (
        entry_points({"request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "a=b"}})
        == 140
    )
    assert entry_points({"request": {"method": "PUT", "url": "Patient/p1"}}) == 100
    assert entry_points({"request": {"method": "PUT", "url": "Patient?identifier=a|b"}}) == 140
    assert entry_points({"request": {"method": "GET", "url": "Patient/p1"}}) == 1
    assert entry_points({"request": {"method": "GET", "url": "Patient?name=x"}}) == 20


def test_a_large_transaction_is_split_by_quota_points() -> None:
    bundle = patient_bundle(444)  # 445 entries: 44,500 points, a few hundred KB
    chunks = split_bundle(bundle)
    assert [c.points for c in chunks] == [10_000] * 4 + [4_500]
    assert all(c.estimated_bytes < synthea.DEFAULT_MAX_CHUNK_BYTES for c in chunks)
    assert sorted(p for c in chunks for p in c.positions) == list(range(445))
    assert chunks[0].positions[0] == 0  # the Patient, referenced by all, goes first
    smaller = split_bundle(bundle, max_points=2_500)
    assert max(c.points for c in smaller) <= 2_500
    assert len(split_bundle(bundle, max_points=None)) == 1


def test_conditional_creates_cost_140_each_in_a_chunk() -> None:
    entries: list[JSONValue] = [
        conditional({"resourceType": "Organization", "name": str(i)}, f"org|{i}")
        for i in range(200)
    ]
    chunks = split_bundle({"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert [len(c) for c in chunks] == [71, 71, 58]  # 71 x 140 = 9,940
    assert chunks[0].points == 9_940


def test_a_reference_cycle_costing_more_than_a_chunk_is_refused() -> None:
    a, b = urn(), urn()
    entries: list[JSONValue] = [
        plain({"resourceType": "Observation", "hasMember": [{"reference": b}]}, a),
        plain({"resourceType": "Observation", "derivedFrom": [{"reference": a}]}, b),
    ]
    bundle: JSONObject = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    with pytest.raises(synthea.BundleSplitError, match="reference cycle of 2 entries"):
        split_bundle(bundle, max_points=150)


def test_excluded_entries_keep_their_positions_and_resolve_from_the_map() -> None:
    bundle = patient_bundle(5)
    patient_url = str(get_objects(bundle, "entry")[0]["fullUrl"])
    chunks = split_bundle(bundle, resolved={patient_url: "Patient/p1"}, exclude={0, 2})
    assert [c.positions for c in chunks] == [(1, 3, 4, 5)]
    subject = get_object(get_object(chunks[0].entries[0], "resource") or {}, "subject")
    assert subject == {"reference": "Patient/p1"}


# --- pacing by RateLimit -------------------------------------------------------------------------


def status(
    remaining: int, reset: float, *, at: float = 100.0, requests: int = 100
) -> RateLimitStatus:
    return RateLimitStatus(
        policies={
            "requests": RateLimitPolicy(requests, reset),
            "fhirInteractions": RateLimitPolicy(remaining, reset),
        },
        observed_at=at,
    )


def test_a_request_that_fits_what_is_left_goes_at_once() -> None:
    assert quota_wait(status(12_000, 40), 10_000, now=101.0) is None
    assert quota_wait(None, 10_000, now=0.0) is None
    only_requests = RateLimitStatus({"requests": RateLimitPolicy(5, 9)}, observed_at=0.0)
    assert quota_wait(only_requests, 10_000, now=0.0) is None


def test_a_request_that_does_not_fit_waits_for_the_reset() -> None:
    wait = quota_wait(status(4_000, 40), 10_000, now=110.0, margin=0.5)
    assert wait is not None
    assert wait.seconds == pytest.approx(30.5)  # t counts from the answer, 10 s ago
    assert (wait.policy, wait.remaining, wait.needed) == ("fhirInteractions", 4_000, 10_000)


def test_once_the_window_has_turned_the_old_remaining_no_longer_counts() -> None:
    assert quota_wait(status(0, 40), 10_000, now=141.0) is None


def test_a_spent_policy_stops_even_a_free_request() -> None:
    wait = quota_wait(status(0, 12), 0, now=100.0, margin=0.0)
    assert wait is not None
    assert wait.seconds == 12.0
    requests_spent = quota_wait(status(50_000, 7, requests=0), 100, now=100.0, margin=0.0)
    assert requests_spent is not None
    assert requests_spent.policy == "requests"


async def test_the_loader_waits_for_the_window_instead_of_being_refused(
    harness: Harness, tmp_path: Path
) -> None:
    write(tmp_path, "p.json", patient_bundle(1_199))  # 1,200 entries: 120,000 points
    summary = await harness.load(tmp_path)
    assert summary.created == 1_200
    assert harness.server.throttled == 0
    assert len(harness.waits) == 2  # 5 chunks a window
    assert summary.quota_waits == 2
    waiting = [line for line in harness.lines if "waiting" in line]
    assert "window to reset" in waiting[0]
    assert "needs 10,000 points, 0 left" in waiting[0]


async def test_free_validations_between_chunks_do_not_hide_the_quota(
    harness: Harness, tmp_path: Path
) -> None:
    refused = tuple(range(3, 1_199, 50))  # an unsatisfied declaration in every chunk
    write(tmp_path, "p.json", patient_bundle(1_199, refused_at=refused))
    summary = await harness.load(tmp_path, drop_unsatisfied_profiles=True)
    assert summary.created == 1_200
    assert summary.dropped_profiles == {STRICT: len(refused)}
    assert harness.server.throttled == 0
    assert summary.quota_waits == 2


async def test_a_429_is_waited_out_as_long_as_medplum_says_and_never_given_up_while_it_refills(
    harness: Harness, tmp_path: Path
) -> None:
    write(tmp_path, "p.json", patient_bundle(99))
    harness.server.used, harness.server.window_ends = 45_000, harness.clock.now + 30
    # Another client spent the window: the loader has no RateLimit yet and is refused once.
    summary = await harness.load(tmp_path)
    assert harness.server.throttled == 1
    assert summary.created == 100
    assert harness.waits[:1] == [pytest.approx(30.5)]
    assert any("429" in line for line in harness.lines)


async def test_a_chunk_refused_every_window_is_given_up_with_the_reason(
    harness: Harness, tmp_path: Path
) -> None:
    harness.server.quota = 5_000  # below a 10,000-point chunk: waiting cannot help
    write(tmp_path, "p.json", patient_bundle(99))
    with pytest.raises(SyntheaLoadError, match="--max-chunk-points"):
        await harness.load(tmp_path, rate_limit_retries=3)
    harness.server.throttled = 0
    summary = await harness.load(tmp_path, max_chunk_points=5_000)
    assert summary.created == 100


# --- resuming -----------------------------------------------------------------------------------


async def test_a_rerun_posts_only_what_was_not_committed(harness: Harness, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write(data, "p.json", patient_bundle(249))  # 3 chunks
    checkpoint = tmp_path / "progress.jsonl"
    harness.server.fail_bundle_number = 3
    with pytest.raises(SyntheaLoadError, match="chunk 3/3"):
        await harness.load(data, checkpoint=checkpoint)
    assert len(harness.server.stored) == 200
    harness.server.fail_bundle_number = None

    harness.lines.clear()
    summary = await harness.load(data, checkpoint=checkpoint)
    assert summary.resumed == 200
    assert summary.created == 50
    assert len(harness.server.stored) == 250  # nothing posted twice
    patient = next(r for r, v in harness.server.stored.items() if v["resourceType"] == "Patient")
    assert summary.patient_ids == [patient.split("/")[1]]
    # the Observations of the last chunk point at the Patient created by the first run
    last = list(harness.server.stored.values())[-1]
    assert last["subject"] == {"reference": patient}
    # the chunk whose answer was a 500 was reported as possibly committed
    assert any("earlier run that stopped before" in line for line in harness.lines)

    again = await harness.load(data, checkpoint=checkpoint)
    assert again.created == 0
    assert again.resumed == 250
    assert any("skipped" in line for line in harness.lines)


def test_a_checkpoint_of_another_server_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    Checkpoint.open(path, "http://a/").close()
    with pytest.raises(SyntheaError, match="not http://b/"):
        Checkpoint.open(path, "http://b/")
    Checkpoint.open(path, "http://b/", restart=True).close()


def test_a_file_that_is_no_checkpoint_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(SyntheaError, match="not a Synthea load checkpoint"):
        Checkpoint.open(path, "http://a/")
    assert path.read_text() == "not a checkpoint\n"


def test_a_checkpoint_is_used_by_one_load_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    first = Checkpoint.open(path, "http://a/")
    with pytest.raises(SyntheaError, match="in use by another load"):
        Checkpoint.open(path, "http://a/")
    first.close()
    Checkpoint.open(path, "http://a/").close()


def test_a_checkpoint_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    checkpoint = Checkpoint.open(path, "http://a/")
    checkpoint.sent("p.json", "abc", [0, 1])
    checkpoint.answered("p.json", "abc", {0: "Patient/1", 1: "Observation/2"})
    checkpoint.sent("p.json", "abc", [2])
    checkpoint.close()
    with path.open("ab") as stream:
        stream.write(b'{"bundle": "p.json", "sha2')
    again = Checkpoint.open(path, "http://a/")
    assert again.committed("p.json", "abc") == {0: "Patient/1", 1: "Observation/2"}
    assert again.committed("p.json", "other-content") == {}
    assert again.in_flight("p.json", "abc") == (2,)
    again.answered("p.json", "abc", {2: "Observation/3"})
    again.close()
    third = Checkpoint.open(path, "http://a/")
    assert third.committed("p.json", "abc") == {
        0: "Patient/1",
        1: "Observation/2",
        2: "Observation/3",
    }
    assert third.in_flight("p.json", "abc") == ()
    third.close()


async def test_a_checkpoint_of_a_server_that_lost_its_data_is_refused(
    harness: Harness, tmp_path: Path
) -> None:
    path = tmp_path / "c.jsonl"
    checkpoint = Checkpoint.open(path, BASE)
    checkpoint.answered("p.json", "abc", {0: "Patient/gone"})
    checkpoint.close()
    data = tmp_path / "data"
    data.mkdir()
    write(data, "p.json", patient_bundle(1))

    def not_found(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/Patient/gone"):
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        return harness.server.handle(request)

    medplum = MedplumClient(
        harness.medplum.config, transport=httpx.MockTransport(not_found), clock=harness.clock
    )
    with pytest.raises(SyntheaError, match="does not have"):
        await synthea.load(medplum, directory=data, include_support=False, checkpoint=path)


# --- naming the refused entry, dropping unsatisfied profiles ----------------------------------


async def test_a_refused_transaction_names_the_entry_without_phi(
    harness: Harness, tmp_path: Path
) -> None:
    bundle = patient_bundle(20, refused_at=(7,))
    write(tmp_path, "p.json", bundle)
    with pytest.raises(SyntheaLoadError) as caught:
        await harness.load(tmp_path)
    message = str(caught.value)
    full_url = str(get_objects(bundle, "entry")[8]["fullUrl"])
    assert f"refused (HTTP 400) at entry 8 (Observation {full_url})" in message
    assert "structure at Observation.component" in message
    assert STRICT in message
    assert "--drop-unsatisfied-profiles" in message
    assert "Zzsecret" not in message
    assert harness.server.stored == {}


async def test_an_invalid_entry_is_named_and_never_fixed_by_dropping_profiles(
    harness: Harness, tmp_path: Path
) -> None:
    bundle = patient_bundle(10)
    entry = get_objects(bundle, "entry")[4]
    resource = get_object(entry, "resource")
    assert resource is not None
    resource["status"] = "bogus"
    write(tmp_path, "p.json", bundle)
    with pytest.raises(SyntheaLoadError) as caught:
        await harness.load(tmp_path, drop_unsatisfied_profiles=True)
    message = str(caught.value)
    assert "at entry 4 (Observation" in message
    assert "value at Observation.status" in message
    assert "--drop-unsatisfied-profiles" not in message


async def test_unsatisfied_profiles_are_dropped_entry_by_entry_when_asked(
    harness: Harness, tmp_path: Path
) -> None:
    bundle = patient_bundle(300, refused_at=(5, 150, 151, 290))  # 4 chunks
    write(tmp_path, "p.json", bundle)
    summary = await harness.load(tmp_path, drop_unsatisfied_profiles=True)
    assert summary.created == 301
    assert summary.dropped_profiles == {STRICT: 4}
    stored = list(harness.server.stored.values())
    metas = [get_object(r, "meta") for r in stored if r["resourceType"] == "Observation"]
    # only the strict declaration of the four went; the other profile stays everywhere
    assert metas == [{"profile": [LOOSE]}] * 300
    dropped = [line for line in harness.lines if "declaration dropped" in line]
    assert len(dropped) == 4
    assert "entry 6 (Observation urn:uuid:" in dropped[0]
    assert f"(not satisfied, per profile): {STRICT} 4" in harness.lines[-1]
    # refused once (the first chunk); later chunks were checked before being sent
    assert harness.server.transactions == 4 + 1


def test_dropping_a_profile_keeps_the_others_and_the_rest_of_meta() -> None:
    entry: JSONObject = {
        "resource": {
            "resourceType": "Observation",
            "meta": {"profile": [STRICT, LOOSE], "tag": [{"code": "x"}]},
        }
    }
    assert drop_profiles(entry, {STRICT}) == {
        "resource": {
            "resourceType": "Observation",
            "meta": {"profile": [LOOSE], "tag": [{"code": "x"}]},
        }
    }
    alone: JSONObject = {"resource": {"resourceType": "Observation", "meta": {"profile": [STRICT]}}}
    assert drop_profiles(alone, {STRICT}) == {"resource": {"resourceType": "Observation"}}
    # the entry given is left as it was
    assert get_object(get_object(entry, "resource") or {}, "meta") == {
        "profile": [STRICT, LOOSE],
        "tag": [{"code": "x"}],
    }


async def test_without_validate_the_refusal_is_reported_as_medplum_gave_it(
    harness: Harness, tmp_path: Path
) -> None:
    write(tmp_path, "p.json", patient_bundle(3, refused_at=(1,)))

    def no_validate(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/$validate"):
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        return harness.server.handle(request)

    medplum = MedplumClient(
        harness.medplum.config, transport=httpx.MockTransport(no_validate), clock=harness.clock
    )
    with pytest.raises(SyntheaLoadError) as caught:
        await synthea.load(medplum, directory=tmp_path, include_support=False)
    message = str(caught.value)
    assert message.startswith("p.json: chunk 1/1 failed: ")
    assert "structure at Observation.component" in message
    assert "which entry is not known" in message
    assert "404" in message
