"""The event key of a notification, read against the service's handler registry: only handlers
with a Subscription receive events, and the service's own resources are events only for the
handler that watches them (the clinician review)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.keys import Ignored, NotificationRejected, event_key
from app.events.repository import EventKey
from app.review.expiry import EXPIRY_HANDLER
from app.wiring import handler_registry
from bots import ALL_BOTS

SERVICE = "ClientApplication/starvit-service"
TAG = {"system": TAG_SYSTEM, "code": TAG_CODE}
BOT_NAMES = [bot.declaration.name for bot in ALL_BOTS]


def headers(handler: str, interaction: str = "update", **extra: str) -> dict[str, str]:
    # Lower-case names: the receiver passes Starlette's case-insensitive headers.
    return {
        "x-starvit-bot": handler,
        "x-medplum-interaction": interaction,
        "x-medplum-subscription": "sub-1",
        **extra,
    }


def observation(**meta: Any) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "id": "obs-1",
            "meta": {"versionId": "2", **meta},
            "status": "final",
            "subject": {"reference": "Patient/pat-1"},
        }
    )


def review_task(**meta: Any) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Task",
            "id": "task-1",
            "meta": {"versionId": "5", "tag": [TAG], **meta},
            "status": "accepted",
            "for": {"reference": "Patient/pat-1"},
        }
    )


def key(body: bytes, handler: str, **extra: str) -> EventKey | Ignored:
    return event_key(
        body, headers(handler, **extra), registry=handler_registry(), service_author=SERVICE
    )


def test_a_handler_without_a_subscription_gets_no_events() -> None:
    # The expiry runs on its schedule: a notification naming it is forged or misrouted.
    with pytest.raises(NotificationRejected) as rejected:
        key(observation(), EXPIRY_HANDLER)
    assert rejected.value.field == "X-Starvit-Bot"


@pytest.mark.parametrize("name", ["retired-bot", "BMI", ""])
def test_an_unknown_handler_is_refused(name: str) -> None:
    with pytest.raises(NotificationRejected) as rejected:
        key(observation(), name)
    assert rejected.value.field == "X-Starvit-Bot"


@pytest.mark.parametrize("bot", BOT_NAMES)
def test_a_bot_event_names_the_version_and_the_patient(bot: str) -> None:
    got = key(
        observation(author={"reference": "Practitioner/nurse-1"}), bot, **{"x-trace-id": "t-1"}
    )
    assert got == EventKey(
        handler=bot,
        resource_type="Observation",
        resource_id="obs-1",
        version_id="2",
        interaction="update",
        source="notification",
        subscription_id="sub-1",
        patient_id="pat-1",
        author="Practitioner/nurse-1",
        trace_id="t-1",
    )


@pytest.mark.parametrize("bot", BOT_NAMES)
def test_the_services_tagged_resources_are_not_events_for_a_bot(bot: str) -> None:
    # A bot reacting to its own proposals would loop; a person's edit keeps the tag.
    tagged = observation(tag=[TAG], author={"reference": "Practitioner/nurse-1"})
    assert key(tagged, bot) == Ignored("own_write")


def test_a_persons_change_to_a_review_task_is_the_review_event() -> None:
    got = key(review_task(author={"reference": "Practitioner/clinician-alice"}), "review")
    assert isinstance(got, EventKey)
    assert (got.handler, got.resource_type, got.resource_id, got.version_id) == (
        "review",
        "Task",
        "task-1",
        "5",
    )
    assert got.patient_id == "pat-1"
    assert got.author == "Practitioner/clinician-alice"


@pytest.mark.parametrize("handler", [*BOT_NAMES, "review"])
def test_the_services_own_writes_are_ignored_by_every_handler(handler: str) -> None:
    # Written by the service itself (meta.author): never an event, or every write would
    # trigger another round of work.
    assert key(review_task(author={"reference": SERVICE}), handler) == Ignored("own_write")
    assert key(observation(author={"reference": SERVICE}), handler) == Ignored("own_write")
