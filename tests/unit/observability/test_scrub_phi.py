"""The log processor that keeps PHI and bodies out of log lines."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from app.observability.logging import (
    BODY_KEYS,
    PHI_KEYS,
    REDACTED,
    configure_logging,
    get_logger,
    scrub_phi,
)


def scrub(**event: object) -> dict[str, object]:
    return dict(scrub_phi(None, "info", {"event": "e", **event}))


def test_top_level_phi_keys_are_redacted_case_insensitively() -> None:
    out = scrub(name="Zebediah", birthDate="1937-11-05", Address="742 Evergreen", count=3)
    assert out == {
        "event": "e",
        "name": REDACTED,
        "birthDate": REDACTED,
        "Address": REDACTED,
        "count": 3,
    }


def test_nested_mappings_and_lists() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"given": ["Zebediah"], "family": "Quackenbush"}],
        "contact": [{"telecom": [{"value": "555-0100"}], "relationship": "friend"}],
        "meta": {"versionId": "3"},
    }
    out = scrub(subject=patient, ids=[{"note": "free text"}, "ok"])
    assert out["subject"] == {
        "resourceType": "Patient",
        "id": "p1",
        "name": REDACTED,
        "contact": [{"telecom": REDACTED, "relationship": "friend"}],
        "meta": {"versionId": "3"},
    }
    assert out["ids"] == [{"note": REDACTED}, "ok"]


def test_bytes_anywhere_are_redacted() -> None:
    out = scrub(raw_bytes=b"Zebediah", nested={"blob": bytearray(b"x")}, view=[memoryview(b"y")])
    assert out["raw_bytes"] == REDACTED
    assert out["nested"] == {"blob": REDACTED}
    assert out["view"] == [REDACTED]


def test_body_keys_are_refused_and_flagged() -> None:
    out = scrub(body={"anything": 1}, status=200)
    assert out["body"] == REDACTED
    assert out["phi_guard"] == "body_refused"
    assert out["status"] == 200
    assert "phi_guard" not in scrub(status=200)


def test_tuples_and_sets_become_scrubbed_lists() -> None:
    out = scrub(pairs=({"name": "x"}, ("a",)), tags=frozenset({"t"}))
    assert out["pairs"] == [{"name": REDACTED}, ["a"]]
    assert out["tags"] == ["t"]


def test_deep_nesting_is_cut_off() -> None:
    deep: object = "Zebediah"
    for _ in range(10):
        deep = {"level": deep}
    assert "Zebediah" not in json.dumps(scrub(deep=deep))


def test_reserved_fields_are_kept() -> None:
    out = scrub(level="info", logger="x", correlation_id="c1", timestamp="t")
    assert (out["level"], out["logger"], out["correlation_id"]) == ("info", "x", "c1")


sensitive_keys = st.sampled_from(sorted(PHI_KEYS | BODY_KEYS))
plain_keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda key: key not in PHI_KEYS | BODY_KEYS | {"event", "level", "logger", "timestamp"}
)
CANARY = "canary-7f3a"
documents = st.recursive(
    st.one_of(st.integers(), st.booleans(), st.text("xyz", max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(plain_keys, children, max_size=3),
        st.builds(
            lambda key, rest: {key: CANARY, **rest},
            sensitive_keys,
            st.dictionaries(plain_keys, children, max_size=2),
        ),
    ),
    max_leaves=10,
)


@given(documents)
def test_a_value_under_a_phi_key_never_survives(document: object) -> None:
    assert CANARY not in json.dumps(scrub(payload_like=document), default=str)


def test_library_log_arguments_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        logging.getLogger("some.library").warning("lookup failed for %s", "Zebediah Quackenbush")
        get_logger("app.test").info("structured", patient_name="Zebediah Quackenbush")
    finally:
        configure_logging()
    text = stream.getvalue()
    assert "Zebediah" not in text
    [foreign, own] = [json.loads(line) for line in text.splitlines()]
    assert foreign["event"] == "lookup failed for %s"
    assert foreign["logger"] == "some.library"
    assert own["patient_name"] == REDACTED
