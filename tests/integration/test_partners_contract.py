"""Schemathesis over the partner endpoints of a running receiver, as an authenticated partner
against the stand-in: whatever the generated bundle, no answer is a 5xx, every error is the
envelope, and every answer matches the contract."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from devtools.devserver import DevServer
from devtools.stack import Stack
from tests.integration.partner_support import DEV_REGISTRY, client_token

pytestmark = pytest.mark.integration

ENVELOPE_KEYS = {"error_code", "message", "correlation_id", "details"}


@pytest.fixture(scope="module")
def receiver(module_devserver: DevServer, module_database: str) -> Iterator[tuple[str, str]]:
    stack = Stack(
        module_devserver.base_url,
        module_database,
        extra_env={"STARVIT_PARTNER_REGISTRY": str(DEV_REGISTRY)},
    )
    try:
        stack.start_receiver()
        token = asyncio.run(client_token(module_devserver.base_url))
        yield stack.receiver_base, token
    finally:
        stack.close()


def test_the_partner_endpoints_keep_their_contract(receiver: tuple[str, str]) -> None:
    base, token = receiver
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json").include(
        path_regex="^/v1/bundles"
    )
    seen: list[int] = []

    def exercise(case: schemathesis.Case) -> None:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
        response = case.call(base_url=base, headers=headers)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            body = response.json()
            assert {"error_code", "message", "correlation_id"} <= set(body) <= ENVELOPE_KEYS
        # A schema-valid bundle may still be invalid FHIR (422): the contract cannot say it.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    for result in schema.get_all_operations():
        operation = result.ok()  # pyright: ignore[reportAttributeAccessIssue]
        run = settings(
            max_examples=30,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture,
            ],
            derandomize=True,
        )(given(case=operation.as_strategy())(exercise))
        run()
    assert len(seen) >= 30
