"""The service's handler registry: what the receiver accepts, what Medplum is asked to notify,
what the sweep searches for and what runs on a schedule all come from it, so every handler's
declaration must be complete and consistent with the committed Subscriptions."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from croniter import croniter

from app.botkit.handler import BotHandler
from app.botkit.identifiers import TAG_CODE, TAG_SYSTEM
from app.handlers.protocol import (
    HandlerContext,
    Interaction,
    Processed,
    Schedule,
    StoredEvent,
    Subscribes,
    SweepQuery,
)
from app.handlers.registry import HANDLER_NAME, HandlerRegistry
from app.review.expiry import EXPIRY_HANDLER, ExpiryHandler
from app.review.handler import ReviewHandler
from app.subscriptions.service import SUBSCRIPTIONS_DIR, expected_files
from app.wiring import handler_registry
from bots import ALL_BOTS


def test_every_bot_is_a_handler_with_a_subscription_and_a_sweep_query() -> None:
    registry = handler_registry()
    for bot in ALL_BOTS:
        declaration = bot.declaration
        handler = registry.get(declaration.name)
        assert isinstance(handler, BotHandler), declaration.name
        subscription = handler.subscription
        assert isinstance(subscription, Subscribes)
        assert subscription.trigger == declaration.trigger
        # A bot never reacts to the service's own tagged writes (that would loop).
        assert not subscription.includes_service_tagged
        assert subscription.reason
        sweep = handler.sweep
        assert isinstance(sweep, SweepQuery)
        assert sweep.resource_type == declaration.trigger.resource_type
        # The sweep searches for what the Subscription matches: without parameters it would
        # page through every resource of the type.
        assert sweep.params
        assert list(sweep.params) == declaration.trigger.search_params()
        assert handler.schedule is None
    assert {h.name for h in registry.subscribed()} >= {b.declaration.name for b in ALL_BOTS}
    assert {h.name for h in registry.swept()} >= {b.declaration.name for b in ALL_BOTS}


def test_handler_names_are_unique_and_valid() -> None:
    registry = handler_registry()
    names = [h.name for h in registry]
    assert len(names) == len(set(names)) == len(ALL_BOTS) + 2  # the bots, review, expiry
    for name in names:
        assert HANDLER_NAME.match(name), name
        assert registry.get(name) is not None
    assert registry.names() == frozenset(names)


def test_review_handler_subscribes_to_status_changes_of_the_services_tasks() -> None:
    review = handler_registry().get("review")
    assert isinstance(review, ReviewHandler)
    subscription = review.subscription
    trigger = subscription.trigger
    assert trigger.resource_type == "Task"
    assert trigger.criteria == f"Task?_tag={TAG_SYSTEM}|{TAG_CODE}"
    assert trigger.interactions == (Interaction.UPDATE,)
    # The review Tasks are the service's own tagged resources: a clinician's change to one is
    # exactly the event, so the own-write filter must not drop tagged resources.
    assert subscription.includes_service_tagged
    assert review.sweep.includes_service_tagged
    # A decision is valid only with its author: the sweep must ask for meta.author.
    assert review.sweep.extended
    assert review.schedule is None


def test_expiry_runs_on_a_schedule_and_subscribes_to_nothing() -> None:
    registry = handler_registry()
    expiry = registry.get(EXPIRY_HANDLER)
    assert isinstance(expiry, ExpiryHandler)
    assert expiry.subscription is None
    assert expiry.sweep is None
    assert isinstance(expiry.schedule, Schedule)
    assert croniter.is_valid(expiry.schedule.cron)
    assert EXPIRY_HANDLER not in registry.subscribed_names()
    assert [h.name for h in registry.scheduled()] == [EXPIRY_HANDLER]


def test_every_subscribed_handler_has_its_committed_subscription() -> None:
    subscribed = handler_registry().subscribed_names()
    expected = {f"{name}.json" for name in subscribed}
    assert set(expected_files()) == expected
    committed = {path.name for path in SUBSCRIPTIONS_DIR.glob("*.json")}
    assert committed == expected
    for name in subscribed:
        document = json.loads((SUBSCRIPTIONS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        # The channel header is how the receiver knows which handler an event is for.
        assert document["channel"]["header"] == [f"X-Starvit-Bot: {name}"]


@dataclass(frozen=True)
class Named:
    """The least a registry reads from a handler: its name and declarations."""

    name: str
    version: str = "0.0.0"
    subscription: Subscribes | None = None
    sweep: SweepQuery | None = None
    schedule: Schedule | None = None

    async def handle(self, event: StoredEvent, context: HandlerContext) -> Processed:
        del event, context
        return Processed("done", 0)

    async def run_scheduled(self, context: HandlerContext) -> int:
        del context
        return 0


@pytest.mark.parametrize("name", ["", "BMI", "bmi:v2", "bmi v2", "-bmi", "x" * 65])
def test_registry_refuses_a_name_medplum_or_the_job_lock_would_mangle(name: str) -> None:
    with pytest.raises(ValueError, match="a handler name is"):
        HandlerRegistry([Named(name)])


def test_registry_refuses_two_handlers_of_one_name() -> None:
    with pytest.raises(ValueError, match="two handlers are named 'bmi'"):
        HandlerRegistry([Named("bmi"), Named("bmi", version="2.0.0")])
