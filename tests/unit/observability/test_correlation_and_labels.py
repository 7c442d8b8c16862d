"""Pure parts of correlation and tracing: which header wins, and outbound span URL labels."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.observability.correlation import correlation_id_from_headers
from app.observability.tracing import fhir_path_label

SAFE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_medplum_trace_id_is_the_last_resort() -> None:
    assert correlation_id_from_headers(None, None, "medplum-trace-1") == "medplum-trace-1"
    assert correlation_id_from_headers(None, f"00-{TRACE_ID}-00f067aa0ba902b7-01", "m") == TRACE_ID


def test_traceparent_is_read_case_insensitively() -> None:
    upper = f"00-{TRACE_ID.upper()}-00F067AA0BA902B7-01"
    assert correlation_id_from_headers(None, upper, None) == TRACE_ID


@given(st.text(max_size=200), st.text(max_size=200), st.text(max_size=200))
def test_whatever_arrives_the_id_is_safe_for_logs_and_headers(a: str, b: str, c: str) -> None:
    assert SAFE.match(correlation_id_from_headers(a, b, c))


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/fhir/R4/Observation/abc/_history/2", "/fhir/R4/Observation"),
        ("/fhir/R4/Patient", "/fhir/R4/Patient"),
        ("/fhir/R4/", "/fhir/R4"),
        ("/oauth2/token", "/oauth2/token"),
        ("/a/b/c/d", "/a/b"),
    ],
)
def test_outbound_url_labels_drop_ids(path: str, label: str) -> None:
    assert fhir_path_label(path) == label
