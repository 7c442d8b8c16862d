"""The event key of a notification, read against the service's handler registry: only handlers
with a Subscription receive events, and the service's own resources are events only for the
handler that watches them (the clinician review)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.events.keys import Ignored, NotificationRejected, event_key
from app.events.repository import PENDING_DELETE_VERSION, EventKey
from app.handlers.protocol import DELETED_VERSION
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


def _watched(handler: str, **meta: Any) -> bytes:
    """A resource of the type ``handler``'s Subscription watches."""
    return review_task(**meta) if trigger_type(handler) == "Task" else observation(**meta)


def trigger_type(handler: str) -> str:
    subscribed = handler_registry().get(handler)
    assert subscribed is not None
    assert subscribed.subscription is not None
    return subscribed.subscription.trigger.resource_type


@pytest.mark.parametrize("handler", [*BOT_NAMES, "review"])
def test_the_services_own_writes_are_ignored_by_every_handler(handler: str) -> None:
    # Written by the service itself (meta.author): never an event, or every write would
    # trigger another round of work.
    assert key(_watched(handler, author={"reference": SERVICE}), handler) == Ignored("own_write")


# --- routing a sender cannot bend (finding A) ---------------------------------------------


@pytest.mark.parametrize("handler", [*BOT_NAMES, "review"])
def test_a_resource_type_the_handler_does_not_watch_is_refused(handler: str) -> None:
    other = observation() if trigger_type(handler) == "Task" else review_task()
    with pytest.raises(NotificationRejected) as rejected:
        key(other, handler)
    assert rejected.value.reason == "wrong_resource_type"
    assert rejected.value.field == "resourceType"


def test_a_deleted_resource_of_another_type_is_refused() -> None:
    with pytest.raises(NotificationRejected) as rejected:
        key(
            b"{}",
            "bmi",
            **{"x-medplum-interaction": "delete", "x-medplum-deleted-resource": "Patient/p-1"},
        )
    assert rejected.value.reason == "wrong_resource_type"


def test_an_interaction_the_subscription_does_not_deliver_is_refused() -> None:
    # The review Subscription delivers updates only: a "delete" for it is not Medplum's.
    with pytest.raises(NotificationRejected) as rejected:
        key(
            b"{}",
            "review",
            **{"x-medplum-interaction": "delete", "x-medplum-deleted-resource": "Task/t-1"},
        )
    assert rejected.value.field == "X-Medplum-Interaction"


def test_a_delete_is_recorded_under_a_provisional_key() -> None:
    got = key(
        b"{}",
        "bmi",
        **{"x-medplum-interaction": "delete", "x-medplum-deleted-resource": "Observation/o-9"},
    )
    assert isinstance(got, EventKey)
    assert (got.resource_type, got.resource_id) == ("Observation", "o-9")
    # Never the "deleted" key itself: that is given by the worker once Medplum confirms.
    assert got.version_id == PENDING_DELETE_VERSION != DELETED_VERSION


def test_an_unknown_handler_is_reported_as_such() -> None:
    with pytest.raises(NotificationRejected) as rejected:
        key(observation(), "nope")
    assert rejected.value.reason == "unknown_handler"


# --- every value that reaches SQL is checked at the edge (finding B) ----------------------


@pytest.mark.parametrize(
    "author",
    [
        "Practitioner/p\x00-1",
        "Practitioner/p-1\n",
        "Practitioner/\x1b[31m",
        "Practitioner/" + "x" * 200,
    ],
)
def test_an_author_with_control_characters_or_too_long_is_refused(author: str) -> None:
    with pytest.raises(NotificationRejected) as rejected:
        key(observation(author={"reference": author}), "bmi")
    assert rejected.value.field == "meta.author.reference"
    assert rejected.value.reason == "malformed"


@pytest.mark.parametrize(
    ("field", "body", "extra"),
    [
        ("id", {"id": "obs-1\n"}, {}),
        ("meta.versionId", {"meta": {"versionId": "2\n"}}, {}),
        ("resourceType", {"resourceType": "Observation\n"}, {}),
        ("X-Medplum-Subscription", {}, {"x-medplum-subscription": "sub/1"}),
        ("X-Medplum-Subscription", {}, {"x-medplum-subscription": ""}),
    ],
)
def test_a_trailing_newline_does_not_pass_for_a_token(
    field: str, body: dict[str, Any], extra: dict[str, str]
) -> None:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "meta": {"versionId": "2"},
        "subject": {"reference": "Patient/pat-1"},
        **body,
    }
    with pytest.raises(NotificationRejected) as rejected:
        key(orjson.dumps(resource), "bmi", **extra)
    assert rejected.value.field == field


def test_an_unsafe_trace_id_is_dropped_not_stored() -> None:
    got = key(observation(), "bmi", **{"x-trace-id": "t-1\n"})
    assert isinstance(got, EventKey)
    assert got.trace_id is None
