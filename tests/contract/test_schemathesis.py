"""The running app against its own OpenAPI document, with generated requests (schemathesis,
in-process over ASGI, on a bare runtime: no database, no Medplum): no 500, every error is the
envelope, and no response violates the schema it is documented with."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import CheckContext, Response

from app.main import create_app
from app.runtime import Runtime
from app.wiring import handler_registry
from tests.conftest import settings_for_tests

ENVELOPE_KEYS = {"error_code", "message", "correlation_id", "details"}


def _app() -> Any:
    # The failed-signature limit is tested on its own; here it would answer 429 to most cases.
    app = create_app(settings_for_tests(bad_signature_limit_per_minute=1_000_000))
    # What the lifespan would install with the tests' bare runtime; the ASGI client used here
    # does not run the lifespan.
    app.state.runtime = Runtime(app.state.settings, registry=handler_registry())
    return app


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schemathesis.check
def error_is_the_envelope(ctx: CheckContext, response: Response, case: Any) -> bool | None:
    """Every error answer is the JSON error envelope, its id the one in ``X-Request-ID``."""
    del ctx, case
    if response.status_code < 400:
        return None
    body: object = response.json()
    assert isinstance(body, dict), f"{response.status_code}: not a JSON object"
    keys = {str(k) for k in body}  # pyright: ignore[reportUnknownVariableType]
    assert keys <= ENVELOPE_KEYS, f"{response.status_code}: unexpected keys {keys - ENVELOPE_KEYS}"
    assert {"error_code", "message", "correlation_id"} <= keys, f"{response.status_code}: {keys}"
    assert body["correlation_id"] == response.headers["x-request-id"][0]
    return True


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_api_keeps_its_contract(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response)
