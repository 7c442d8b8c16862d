"""Deferred prefetch searches: fetched only when ``compute`` reads them."""

from dataclasses import replace

import pytest

from app.botkit.declaration import NeedsPrefetch, NoResult, ProposeRequest, Retract
from bots import ALL_BOTS
from bots._chart import CONDITIONS, CONDITIONS_PREFETCH
from bots.obesity import BOT as OBESITY

from .fhir import context, event, height, patient, weight

H = height("h1", 170, "2024-01-10T10:00:00+01:00")


def test_reading_a_deferred_prefetch_asks_for_it() -> None:
    ctx = replace(context(patient()), deferred=frozenset({CONDITIONS}))
    with pytest.raises(NeedsPrefetch) as asked:
        ctx.conditions(CONDITIONS)
    assert asked.value.name == CONDITIONS
    # Fetched: read as usual.
    assert replace(ctx, deferred=frozenset()).conditions(CONDITIONS) == []


def test_the_problem_list_is_deferred_for_every_bot_that_declares_it() -> None:
    assert CONDITIONS_PREFETCH.deferred
    declaring = [b for b in ALL_BOTS if CONDITIONS_PREFETCH in b.declaration.prefetch]
    assert {b.declaration.name for b in declaring} >= {"obesity", "egfr", "hba1c"}


def test_a_normal_bmi_never_reads_the_problem_list() -> None:
    w = weight("w1", 60, "2024-05-02T09:30:00+01:00")
    ctx = replace(context(patient(), weights=[w], heights=[H]), deferred=frozenset({CONDITIONS}))
    effects = OBESITY.compute(event(w), ctx)
    assert [type(e) for e in effects] == [Retract]


def test_an_obese_bmi_reads_it_and_computes_the_same_once_fetched() -> None:
    w = weight("w1", 95, "2024-05-02T09:30:00+01:00")
    deferred = replace(
        context(patient(), weights=[w], heights=[H]), deferred=frozenset({CONDITIONS})
    )
    with pytest.raises(NeedsPrefetch):
        OBESITY.compute(event(w), deferred)
    fetched = context(patient(), weights=[w], heights=[H], **{CONDITIONS: []})
    effects = OBESITY.compute(event(w), fetched)
    assert any(isinstance(e, ProposeRequest) for e in effects)
    assert not any(isinstance(e, NoResult) for e in effects)
