"""Schemathesis fuzzes every route of the service's own OpenAPI schema against a live server.

The property: whatever the path parameters, query and bodies, the server never answers 5xx and
never hangs (each call has a timeout). The number of examples is bounded to keep CI fast.
(Schemathesis' own pytest plugin does not work with pytest 9 yet, so hypothesis drives it here.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow  # hundreds of generated requests


def test_no_route_answers_5xx_to_any_input(server_url: str):
    schema = schemathesis.openapi.from_url(f"http://{server_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # the v1, v2 and health routes are all in the schema

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def never_5xx(case) -> None:
            response = case.call(timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        never_5xx()
